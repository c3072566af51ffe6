"""A callback delivery as Redis keeps it, and as a job shows it; the ids of events and
deliveries, derived so that working on an event twice makes nothing twice."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from urllib.parse import urlsplit

from pydantic import BaseModel

_EVENTS = uuid.UUID("3b8e5f0a-9c1d-4e2b-8f7a-6d5c4b3a2e19")


class CallbackState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt of the schedule failed


class Callback(BaseModel):
    """One destination of a job's callback, as the jobs API shows it."""

    url: str
    state: CallbackState
    attempts: int
    last_status: int | str | None  # the HTTP status of the last attempt, or what went wrong
    next_attempt_at: str | None


class Delivery(BaseModel):
    """One event to one destination (the hash `rt:callback:{id}`)."""

    id: str
    job_id: str
    event_id: str  # its `webhook-id`, the same at every attempt
    url: str
    destination: str  # scheme://host:port, what deliveries are paced by
    body: str  # the signed payload, the same at every attempt
    state: CallbackState = CallbackState.PENDING
    attempts: int = 0
    last_status: int | str | None = None
    next_attempt_at: float | None = None

    def view(self) -> Callback:
        when = self.next_attempt_at if self.state == CallbackState.PENDING else None
        return Callback(
            url=self.url,
            state=self.state,
            attempts=self.attempts,
            last_status=self.last_status,
            next_attempt_at=iso(when),
        )


def event_id(job_id: str, attempt: int, state: str) -> str:
    """The `webhook-id` of a job's finish: one per job, attempt and outcome."""
    return f"msg_{uuid.uuid5(_EVENTS, f'{job_id}:{attempt}:{state}').hex}"


def delivery_id(event: str, url: str) -> str:
    return str(uuid.uuid5(_EVENTS, f"{event} {url}"))


def task_id(event: str) -> str:
    """The Celery task id of an event's CALLBACK_TASK message: a repeat has the same."""
    return str(uuid.uuid5(_EVENTS, f"task {event}"))


def destination(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def iso(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")
