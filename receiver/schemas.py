"""What the jobs API reads and answers, as pydantic models: they check each request and generate
the OpenAPI document (receiver/openapi.py), so what the document promises is what is checked."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from tasks import limits
from tasks.formats import Format
from tasks.jobs.errors import ErrorCode
from tasks.jobs.listing import CURSOR
from tasks.jobs.states import State
from tasks.jobs.transitions import MAX_CALLBACKS_PER_CALLER
from tasks.jobs.views import Job
from tasks.names import DEFAULT
from tasks.workspaces import NAME

RECORDING_ID = limits.RECORDING_ID
# Text without control characters (tab, newline and carriage return allowed in values).
TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
KEY = r"^[^\x00-\x1f\x7f]+$"
HEADER_KEY = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"  # printable ASCII, as headers carry
DIGITS = re.compile(r"[0-9]{1,9}")
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ]")
MAX_KEY = 200
WORKSPACE = f"^{NAME.pattern}$"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME = rf"(?:{_LABEL}\.)*{_LABEL}"  # a host name, or an IPv4 address
_PORTS = r"6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}"
_PORT = rf"(?::(?:{_PORTS}))?"  # 1 to 65535
_PATH = r"(?:[/?#][\x21-\x7e]*)?"  # printable ASCII, no spaces
URL = rf"^https?://(?:{_NAME}|\[[0-9A-Fa-f:.]{{2,45}}\]){_PORT}{_PATH}$"  # no credentials
DOCUMENTED_URL = rf"^https://{_NAME}{_PORT}{_PATH}$"  # what no further check refuses
MAX_URL = 2000
MAX_BODY_BYTES = 64 * 1024  # two fields at their limits (tasks/limits.py) and the rest

JSON_VALUE_REF = {"$ref": "#/components/schemas/JsonValue"}
LIMITS = (
    f"at most {limits.MAX_DEPTH} levels of arrays and objects, and "
    f"{limits.MAX_FIELD_BYTES // 1024} KiB as compact JSON"
)


def _json_value_name(levels: int) -> str:
    return "JsonValue" if levels == limits.MAX_DEPTH - 1 else f"JsonValue{levels}"


def json_value_schemas() -> dict[str, Any]:
    """A value inside `provider` or `metadata`, by the levels of arrays and objects it may still
    hold: `JsonValue` (one level fewer than the field) down to `JsonValue0` (scalars alone), so
    the document states the depth limit and generated examples keep to it."""
    scalars: list[dict[str, Any]] = [
        {"type": "string", "pattern": TEXT},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
    ]
    schemas: dict[str, dict[str, Any]] = {}
    for levels in range(limits.MAX_DEPTH):
        inner = {"$ref": f"#/components/schemas/{_json_value_name(levels - 1)}"}
        containers = [
            {"type": "array", "items": inner},
            {"type": "object", "propertyNames": {"pattern": TEXT}, "additionalProperties": inner},
        ]
        schemas[_json_value_name(levels)] = {"anyOf": scalars + (containers if levels else [])}
    schemas["JsonValue"]["description"] = "any JSON value: finite numbers, no control characters"
    return schemas


# pydantic refuses a $ref it did not make: objects name JsonValue by a marker openapi.py replaces.
JSON_VALUE_MARKER = {"x-json-value": True}
_OBJECT = {
    "type": "object",
    "description": LIMITS,
    "propertyNames": {"pattern": TEXT},
    "additionalProperties": JSON_VALUE_MARKER,
}


def _one_key(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) != 1:
        raise ValueError("provider must hold exactly one provider key")
    return value


Provider = Annotated[
    dict[str, Any],
    AfterValidator(_one_key),
    WithJsonSchema({**_OBJECT, "minProperties": 1, "maxProperties": 1}),
]
Metadata = Annotated[dict[str, Any], WithJsonSchema(_OBJECT)]
# The document names https only: plain http is taken too, but only to an address inside
# CALLBACK_ALLOWED_NETWORKS, which no schema can say.
CallbackUrl = Annotated[
    str,
    StringConstraints(max_length=MAX_URL, pattern=URL),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": MAX_URL,
            "pattern": DOCUMENTED_URL,
            "description": "where this job's job.done / job.failed is sent too (besides "
            f"CALLBACK_URLS and other callers' URLs; up to {MAX_CALLBACKS_PER_CALLER} per API "
            "token and job, then 409); plain http is accepted only to an address inside "
            "CALLBACK_CLIENT_ALLOWED_NETWORKS",
        }
    ),
]


class JobRequest(BaseModel):
    """Body of `POST /api/v1/jobs`."""

    model_config = ConfigDict(extra="forbid")
    recording_id: str = Field(pattern=RECORDING_ID)
    provider: Provider | None = Field(
        default=None, description="exactly one provider key; default TRANSCRIPT_PROVIDER"
    )
    metadata: Metadata | None = None
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_KEY,
        pattern=KEY,
        description="the same key returns the same job (default: recording and provider)",
    )
    callback_url: CallbackUrl | None = None
    workspace: str = Field(
        default=DEFAULT,
        pattern=WORKSPACE,
        description="the Recall workspace the recording is in (RECALL_WORKSPACES)",
    )


class TranscriptQuery(BaseModel):
    """Query of `GET /api/v1/jobs/{job_id}/transcript`."""

    format: Format = Format.JSON


def _text_only(value: Any) -> Any:
    """A date-time written out (pydantic would also read a number, or digits, as Unix time)."""
    if not isinstance(value, str) or not ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 date-time string")
    return value


def _on_the_clock(value: datetime) -> datetime:
    value.timestamp()  # an overflow (year 1 east of UTC) is a ValueError too, so a 400
    return value


Moment = Annotated[AwareDatetime, BeforeValidator(_text_only), AfterValidator(_on_the_clock)]


class JobListQuery(BaseModel):
    """Query of `GET /api/v1/jobs`: every filter is read from an index, any of them combined."""

    recording_id: str | None = Field(default=None, pattern=RECORDING_ID)
    state: State | None = None
    workspace: str | None = Field(default=None, pattern=WORKSPACE)
    error_code: ErrorCode | None = None
    created_after: Moment | None = Field(default=None, description="created at or after")
    created_before: Moment | None = Field(default=None, description="created before")
    cursor: str | None = Field(default=None, pattern=CURSOR, description="a page's next_cursor")
    offset: int = Field(default=0, ge=0, le=999_999_999, description="matches to skip: use cursor")
    limit: int = Field(default=50, ge=1, le=500)


class BulkRetry(BaseModel):
    """Body of `POST /api/v1/jobs/retry`: which failed jobs to re-run."""

    model_config = ConfigDict(extra="forbid")
    state: Literal["failed"]
    error_code: ErrorCode | None = None
    recording_id: str | None = Field(default=None, pattern=RECORDING_ID)
    created_after: Moment | None = None


class BulkRetried(BaseModel):
    retried: int


class JobPage(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = Field(description="the next page's cursor; null after the last")
    next_offset: int | None = Field(
        description="matches to skip for the next page by offset (null: the last, or by cursor)"
    )


class ErrorBody(BaseModel):
    error: str


class BadInput(ValueError):
    """The request does not match the API's models; the message says where."""


class TooLarge(BadInput):
    """The body is over the jobs API's limit."""
