"""Recall's webhook events, parsed with pydantic at the edge; unknown fields are kept."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

RECORDING_DONE = "recording.done"
TRANSCRIPT_DONE = "transcript.done"
TRANSCRIPT_FAILED = "transcript.failed"
HANDLED = (RECORDING_DONE, TRANSCRIPT_DONE, TRANSCRIPT_FAILED)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StatusData(_Open):
    code: str | None = None
    sub_code: str | None = None
    updated_at: str | None = None


class Ref(_Open):
    id: str
    metadata: dict[str, Any] | None = None


class EventData(_Open):
    data: StatusData | None = None
    recording: Ref | None = None
    bot: Ref | None = None
    transcript: Ref | None = None


class WebhookEvent(_Open):
    """One webhook body; the events we handle must carry the objects they are about."""

    event: str
    data: EventData

    @model_validator(mode="after")
    def _required_refs(self) -> WebhookEvent:
        if self.event in HANDLED and self.data.recording is None:
            raise ValueError(f"{self.event} without data.recording")
        if self.event in (TRANSCRIPT_DONE, TRANSCRIPT_FAILED) and self.data.transcript is None:
            raise ValueError(f"{self.event} without data.transcript")
        return self

    @property
    def handled(self) -> bool:
        return self.event in HANDLED


class InvalidEvent(ValueError):
    """The body is not JSON or not a webhook event we can read."""


def parse_event(body: Any) -> WebhookEvent:
    """Validate a decoded webhook body, raising `InvalidEvent` with a short reason."""
    if not isinstance(body, dict):
        raise InvalidEvent("body: must be a JSON object")
    try:
        return WebhookEvent.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None


def parse_event_json(text: str | bytes) -> WebhookEvent:
    """`parse_event` straight from JSON text (parsed and validated in one pass by pydantic-core)."""
    try:
        return WebhookEvent.model_validate_json(text)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> InvalidEvent:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return InvalidEvent(f"{where}: {first['msg']}")
