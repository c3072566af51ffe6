"""The jobs API for other services: bearer tokens, idempotency keys, a page of jobs, retry.

Requests are read into the pydantic models below, which also generate the OpenAPI document
(receiver/openapi.py), so what the document promises is what the handlers check.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)

from receiver.auth import bearer_is_one_of
from tasks import limits
from tasks.callbacks.guard import Guard, Refused
from tasks.callbacks.model import owner
from tasks.callbacks.views import job_view, job_views
from tasks.dispatch import Dispatcher
from tasks.formats import CannotRender, Format, open_transcript
from tasks.jobs.errors import ErrorCode
from tasks.jobs.listing import CURSOR, Cursor, Filters
from tasks.jobs.states import State
from tasks.jobs.transitions import MAX_CALLBACKS_PER_CALLER
from tasks.jobs.views import Job, Source
from tasks.names import DEFAULT
from tasks.store import Store
from tasks.workspaces import NAME

RECORDING_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
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
    next_offset: int | None


class ErrorBody(BaseModel):
    error: str


class BadInput(ValueError):
    """The request does not match the API's models; the message says where."""


class TooLarge(BadInput):
    """The body is over the jobs API's limit."""


@dataclass
class JobsApi:
    """What the jobs API works with: the dispatcher (and its job store), where transcripts are,
    and the guard of callback URLs (None: callbacks are not signed, so none is taken)."""

    dispatch: Dispatcher
    tokens: list[str]
    store: Store
    guard: Guard | None


bp = Blueprint("jobs_api", __name__, url_prefix="/api/v1")


def _api() -> JobsApi:
    api: JobsApi = current_app.extensions["jobs_api"]
    return api


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(ErrorBody(error=message).model_dump()), status


def _job(job: Job, status: int) -> tuple[Response, int]:
    return jsonify(job.model_dump(mode="json")), status


@bp.before_request
def _authenticate() -> tuple[Response, int] | None:
    if not bearer_is_one_of(_api().tokens):
        return _error(401, "a valid bearer token is required")
    return None


@bp.errorhandler(BadInput)
@bp.errorhandler(limits.OverLimit)
def _bad_input(exc: ValueError) -> tuple[Response, int]:
    return _error(413 if isinstance(exc, TooLarge) else 400, str(exc))


@bp.errorhandler(redis.RedisError)
def _unavailable(_: redis.RedisError) -> tuple[Response, int]:
    return _error(503, "job store unavailable, retry later")


@bp.post("/jobs")
def create_job() -> tuple[Response, int]:
    body = _model(JobRequest, _json_body())
    header_key = _header_key()
    key = body.idempotency_key or header_key
    api = _api()
    by = owner(request.headers.get("Authorization", "").removeprefix("Bearer ").strip())
    if body.callback_url is not None:
        _check_callback(api, body.callback_url, by)
    dispatch = api.dispatch
    if not dispatch.knows(body.workspace):
        raise BadInput(f"workspace: no workspace {body.workspace!r} is set up here")
    job_id, created = dispatch.submit(
        body.recording_id,
        body.provider,
        body.metadata,
        key,
        workspace=body.workspace,
        source=Source.API,
    )
    job = job_view(dispatch.jobs, job_id)
    if job is None:  # expired between the two calls
        return _error(503, "the job vanished while it was being created, retry")
    provider = dispatch.provider(body.provider, body.workspace)
    if not created and key is not None and _differs(job, body.recording_id, provider, body):
        return _error(409, "this idempotency key was used with different parameters")
    if body.callback_url is None:
        return _job(job, 202)
    # Whoever asked is called back: the job's first caller, a second one, or recording.done.
    added = dispatch.jobs.add_callback(job_id, body.callback_url, by)
    if added is None:
        return _error(503, "the job vanished while it was being created, retry")
    if added == "full":
        mine = f"you gave this job {MAX_CALLBACKS_PER_CALLER} callback URLs already"
        return _error(409, f"callback_url: {mine}, the most")  # this caller's share alone
    return _job(job.model_copy(update={"callback_url": body.callback_url}), 202)  # the caller's


def _check_callback(api: JobsApi, url: str, by: str) -> None:
    if api.guard is None:
        raise BadInput("callback_url: callbacks are off here (no CALLBACK_SECRET to sign them)")
    try:
        api.guard.check(url, by)
    except Refused as exc:
        raise BadInput(f"callback_url: {exc}") from None


# Job ids are UUIDs (derived from idempotency keys): anything else is no job (404).
@bp.get("/jobs/<uuid:job_id>")
def get_job(job_id: UUID) -> tuple[Response, int]:
    job = job_view(_api().dispatch.jobs, str(job_id))
    if job is None:
        return _error(404, f"no job {job_id}")
    return _job(job, 200)


@bp.get("/jobs/<uuid:job_id>/transcript")
def get_transcript(job_id: UUID) -> tuple[Response, int]:
    """The job's persisted transcript, as stored or rendered for people: streamed, so that the
    memory a request holds is bounded (`open_transcript`)."""
    query = _model(TranscriptQuery, _query(()))
    api = _api()
    job = api.dispatch.jobs.record(str(job_id))
    if job is None:
        return _error(404, f"no job {job_id}")
    if job.state != State.DONE or job.transcript_id is None:
        return _error(409, f"job {job_id} is {job.state}: no transcript persisted")
    try:
        body = open_transcript(api.store, job.recording_id, job.transcript_id, query.format)
    except FileNotFoundError:
        return _error(404, f"transcript {job.transcript_id} is not in the store")
    except CannotRender as exc:  # the transcript's state, not the request: 409, not 413
        return _error(409, f"transcript {job.transcript_id}: {exc}")
    length = {"Content-Length": str(body.size)}  # a cut stream is then seen to be cut
    return Response(body, mimetype=query.format.media_type, headers=length), 200


@bp.get("/jobs")
def list_jobs() -> tuple[Response, int]:
    query = _model(JobListQuery, _query(("offset", "limit")))
    store = _api().dispatch.jobs
    after, before = query.created_after, query.created_before
    filters = Filters(
        recording_id=query.recording_id,
        state=query.state,
        workspace=query.workspace,
        error_code=query.error_code,
        created_after=after.timestamp() if after else None,
        created_before=before.timestamp() if before else None,
    )
    cursor = Cursor.parse(query.cursor) if query.cursor else None
    page = store.page(filters, cursor=cursor, offset=query.offset, limit=query.limit)
    more = page.next_cursor is not None
    answer = JobPage(
        jobs=job_views(store, page.records),
        next_cursor=str(page.next_cursor) if more else None,
        next_offset=query.offset + query.limit if more and not cursor else None,
    )
    return jsonify(answer.model_dump(mode="json")), 200


@bp.post("/jobs/retry")
def retry_jobs() -> tuple[Response, int]:
    body = _model(BulkRetry, _json_body())
    retried = _api().dispatch.retry_failed(
        error_code=body.error_code,
        recording_id=body.recording_id,
        created_after=body.created_after.timestamp() if body.created_after else None,
    )
    return jsonify(BulkRetried(retried=retried).model_dump()), 202


@bp.post("/jobs/<uuid:job_id>/retry")
def retry_job(job_id: UUID) -> tuple[Response, int]:
    dispatch, key = _api().dispatch, str(job_id)
    job = job_view(dispatch.jobs, key)
    if job is None:
        return _error(404, f"no job {key}")
    if not dispatch.retry(key):
        return _error(409, f"job {key} is {job.state}; only failed jobs can be retried")
    retried = job_view(dispatch.jobs, key)
    return _job(retried or job, 202)


# -- reading requests strictly ------------------------------------------------------------------


M = TypeVar("M", bound=BaseModel)


def _model(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadInput(f"{where}: {first['msg']}") from None


def _json_body() -> Any:
    """The body as JSON, refusing what is not JSON (NaN, Infinity, numbers that overflow), a
    body over MAX_BODY_BYTES and nesting deeper than a job's fields may hold."""
    data = request.get_data()
    if len(data) > MAX_BODY_BYTES:
        raise TooLarge(f"body: {len(data)} bytes, over the jobs API's limit of {MAX_BODY_BYTES}")
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise BadInput(f"body: nested deeper than {limits.MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise BadInput(f"body: not valid JSON ({exc})") from None
    _check_text(value)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")
    return number


def _check_text(body: Any) -> None:
    """No control characters in any text or key (tab, newline, carriage return in text only).
    Walked without recursion, so no depth breaks the walk; depth is the fields' limit
    (tasks/limits.py, checked where every job comes in)."""
    stack: list[tuple[Any, str]] = [(body, "body")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str) and not re.match(TEXT, value):
            raise BadInput(f"{where}: control characters are not allowed")
        if isinstance(value, list):
            stack.extend((item, f"{where}.{index}") for index, item in enumerate(value))
        if isinstance(value, dict):
            for name, item in value.items():
                if not re.match(TEXT, name):
                    raise BadInput(f"{where} (a key): control characters are not allowed")
                stack.append((item, f"{where}.{name}"))


def _header_key() -> str | None:
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if len(value) > MAX_KEY or not re.match(HEADER_KEY, value):
        raise BadInput(f"Idempotency-Key: 1 to {MAX_KEY} printable ASCII characters")
    return value


def _query(integers: tuple[str, ...]) -> dict[str, Any]:
    """The query string; integer parameters must be plain ASCII digits (no sign, no spaces)."""
    values: dict[str, Any] = dict(request.args.items())
    for name in integers:
        if name in values:
            if not DIGITS.fullmatch(values[name]):
                raise BadInput(f"{name}: must be a whole number written in digits")
            values[name] = int(values[name])
    return values


def _differs(job: Job, recording_id: str, provider: dict[str, Any], body: JobRequest) -> bool:
    """A key reused for another job; a callback_url is not one (it is added to the job)."""
    return (job.recording_id, job.provider, job.metadata, job.workspace) != (
        recording_id,
        provider,
        body.metadata or {},
        body.workspace,
    )
