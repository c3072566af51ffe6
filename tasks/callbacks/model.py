"""A callback delivery as Redis keeps it (and shows it: a job's `Callback`, tasks/jobs/views.py);
the ids of events and deliveries, derived so that working on an event twice makes nothing twice;
and who a callback URL belongs to, which is what deliveries are shared out by."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from pydantic import BaseModel

from tasks.jobs.views import Callback, CallbackState, iso, redact

_EVENTS = uuid.UUID("3b8e5f0a-9c1d-4e2b-8f7a-6d5c4b3a2e19")
OPERATOR = ""  # the client of CALLBACK_URLS: paced per destination only, its own allowance


class Outcome(StrEnum):
    """What an attempt came to, as tasks/callbacks/callbacks.lua records it."""

    DELIVERED = "delivered"
    FAILED = "failed"  # the receiver: no 2xx in time; failing its destination unless a 4xx
    REFUSED = "refused"  # the address may not be reached, or the name did not resolve
    DEFERRED = "deferred"  # this process could not resolve in time: not counted at all


class Delivery(BaseModel):
    """One event to one destination (the hash `rt:callback:{id}`; its body is the event's)."""

    id: str
    job_id: str
    event_id: str  # its `webhook-id`, the same at every attempt
    url: str
    destination: str  # scheme://host:port, what deliveries are paced by
    client: str = OPERATOR  # whose URL it is (`owner`), what deliveries are shared out by
    body: str = ""  # the signed payload, stored once per event, the same at every attempt
    state: CallbackState = CallbackState.PENDING
    attempts: int = 0
    last_status: int | str | None = None
    next_attempt_at: float | None = None
    failing: bool = False  # its destination's last attempt failed (read with it, not stored)

    def view(self) -> Callback:
        when = self.next_attempt_at if self.state == CallbackState.PENDING else None
        return Callback(
            url=redact(self.url),
            state=self.state,
            attempts=self.attempts,
            last_status=self.last_status,
            next_attempt_at=iso(when),
        )


@dataclass(frozen=True)
class Event:
    """A job's finish, sent to each of its destinations (the hash `rt:callbacks:event:{id}`)."""

    id: str
    job_id: str
    attempt: int
    state: str
    body: str


def event_id(job_id: str, attempt: int, state: str) -> str:
    """The `webhook-id` of a job's finish: one per job, attempt and outcome."""
    return f"msg_{uuid.uuid5(_EVENTS, f'{job_id}:{attempt}:{state}').hex}"


def delivery_id(event: str, url: str) -> str:
    return str(uuid.uuid5(_EVENTS, f"{event} {url}"))


def task_id(event: str) -> str:
    """The Celery task id of an event's CALLBACK_TASK message: a repeat has the same."""
    return str(uuid.uuid5(_EVENTS, f"task {event}"))


def owner(token: str) -> str:
    """Who set a callback URL: a digest of the API token (never the token itself), something a
    client cannot multiply as it can names and URLs."""
    return hashlib.sha256(f"recall-transcribe callbacks {token}".encode()).hexdigest()[:16]


def destination(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"
