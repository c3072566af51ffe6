"""A job as users see it (the jobs API, the CLI, the body of its callbacks), and its callbacks as
it shows them: URLs redacted, times in ISO 8601. The job's record makes its view
(`JobRecord.view`); the state of its callbacks is joined in where jobs are shown
(tasks/callbacks/views.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, model_validator

from tasks.jobs.states import State
from tasks.names import DEFAULT


class CallbackState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt of the schedule failed


class Source(StrEnum):
    """What started a job: set when it is created, never changed by a later submission of the
    same job from elsewhere (the first source wins)."""

    WEBHOOK = "webhook"  # Recall's recording.done
    API = "api"  # the jobs API's POST or `recall-transcribe enqueue`
    TASK = "task"  # another service's Celery message (the submit task)
    RECONCILE = "reconcile"  # reconciliation found the recording without its webhook


class Callback(BaseModel):
    """One destination of a job's callback, as the jobs API shows it."""

    url: str  # redacted (`redact`): the URL may carry a token, and the viewer may not own it
    state: CallbackState
    attempts: int
    last_status: int | str | None  # the HTTP status of the last attempt, or what went wrong
    next_attempt_at: str | None


class JobError(BaseModel):
    code: str
    message: str
    sub_code: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _message(cls, value: Any) -> Any:
        """A failed transcript's error is stored without its message (its sub_code says it)."""
        if isinstance(value, dict) and "message" not in value and "sub_code" in value:
            return {**value, "message": transcript_failed(str(value["sub_code"]))}
        return value


def transcript_failed(sub_code: str) -> str:
    """The message of a job whose transcript Recall reported failed."""
    return f"Recall reported the transcript failed (sub_code: {sub_code})"


class Job(BaseModel):
    """A job as users see it (the jobs API and CLI)."""

    id: str
    recording_id: str
    workspace: str = DEFAULT
    state: State
    transcript_id: str | None = None
    attempts: int
    error: JobError | None = None
    idempotency_key: str
    provider: dict[str, Any]
    metadata: dict[str, Any]
    callback_url: str | None = Field(
        default=None,
        description="the job's first callback_url, redacted to where it goes (the answer to the "
        "request that gave one shows that one whole)",
    )
    callbacks: list[Callback] = Field(default_factory=list)
    source: Source = Field(description="what started the job: webhook, api, task or reconcile")
    created_at: str | None
    updated_at: str | None


def redact(url: str) -> str:
    """Where a URL goes, without what it may carry: a token sits in the userinfo, the query or
    the path (Slack's and Discord's hooks), so only scheme, host and port are shown."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "…"
    host = parts.hostname or ""
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}{port}/…"


def iso(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")
