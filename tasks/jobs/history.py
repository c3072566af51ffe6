"""A job's history: one event per transition, appended by the Lua command that makes it
(tasks/jobs/jobs.lua), so the history never disagrees with the job's state.

Kept compact because every finished job stays in Redis for JOB_RETENTION_S: a list beside the
job's hash (`rt:job:{id}:history`, the newest JOB_HISTORY_MAX kept), one string per event,
`MS EVENT PHASE[ CODE MESSAGE]`: milliseconds since the job's creation, the event's short code
(below), the phase after it, and the error met, if any. A wait for our own quota is an event
without an error (waiting for quota is not an error).
"""

from __future__ import annotations

from pydantic import BaseModel

from tasks.jobs.states import Phase, State, Step, Transition
from tasks.jobs.views import iso

SUBMITTED = "submitted"
MAX_MESSAGE = 200  # an error message kept in the history, in characters
CODES: dict[str, str] = {
    SUBMITTED: "s",
    Transition.START_CREATE: "sc",
    Transition.CREATE_REFUSED: "cr",
    Transition.START_REMEDIATION: "sr",
    Transition.END_REMEDIATION: "er",
    Transition.RECORD_CREATED: "rc",
    Transition.KEEP_EARLY_EVENT: "ke",
    Transition.TRANSCRIPT_DONE: "td",
    Transition.TRANSCRIPT_FAILED: "tf",
    Transition.POLL_LATER: "pl",
    Transition.FINISH: "f",
    Transition.RETRY_LATER: "rl",
    Transition.FAIL: "x",
    Transition.RECORD_ARCHIVE: "ra",
    Transition.RETRY: "r",
}
NAMES = {code: name for name, code in CODES.items()}


def spec(limit: int, event: str, code: str | None = None, message: str = "") -> str:
    """What a Lua command takes to record an event: `MAX EVENT[ CODE MESSAGE]`."""
    text = f"{limit} {CODES[event]}"
    return f"{text} {code} {message[:MAX_MESSAGE]}" if code else text


class EventError(BaseModel):
    code: str
    message: str


class Event(BaseModel):
    """One transition of a job, as the jobs API and CLI show it."""

    at: str
    event: str
    state: State
    step: Step | None
    error: EventError | None = None


class History(BaseModel):
    job_id: str
    events: list[Event]


def decode(created_at: float, lines: list[bytes]) -> list[Event]:
    """The stored events (oldest first), as users see them."""
    events = []
    for line in lines:
        ms, event, phase, *error = line.decode().split(" ", 4)
        state, step = Phase.parse(phase)
        events.append(
            Event(
                at=iso(created_at + int(ms) / 1000) or "",
                event=NAMES.get(event, event),
                state=state,
                step=step,
                error=EventError(code=error[0], message=error[1]) if len(error) == 2 else None,
            )
        )
    return events
