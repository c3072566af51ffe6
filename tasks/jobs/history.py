"""A job's history: one event per transition, appended by the Lua command that makes it
(tasks/jobs/jobs.lua), so the history never disagrees with the job's state.

Kept compact because every finished job stays in Redis for JOB_RETENTION_S: a field of the job's
hash (`history`: no key of its own to pay for, gone with the hash), the newest JOB_HISTORY_MAX
events, a line each, `MS EVENT PHASE[ CODE MESSAGE]`: milliseconds since the job's creation, the
event's short code (below), the phase after it (each word's first letter: `cc` is
creating:create, `f` failed), and the error met, if any. A finished job's five events stay under
64 bytes, so its hash keeps Redis's compact encoding (`hash-max-listpack-value`). A wait for our
own quota is an event without an error (waiting for quota is not an error).
"""

from __future__ import annotations

import re

from pydantic import BaseModel

from tasks.jobs.states import PHASES, State, Step, Transition
from tasks.jobs.views import iso

SUBMITTED = "submitted"
OWN = "!"  # in place of an event's error: the job's error (jobs.lua OWN)
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
SHORT_PHASES = {re.sub(r"([a-z])[a-z]*:?", r"\1", str(phase)): phase for phase in PHASES}


def spec(limit: int, event: str, code: str | None = None, message: str = "") -> str:
    """What a Lua command takes to record an event: `MAX EVENT[ CODE MESSAGE]` (a message on one
    line: the history is a line per event)."""
    text = f"{limit} {CODES[event]}"
    return f"{text} {code} {' '.join(message[:MAX_MESSAGE].splitlines())}" if code else text


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


def clean(message: str) -> str:
    """A message as jobs.lua keeps it in a history line (`clean`): cut to MAX_MESSAGE bytes,
    never inside a character, on one line."""
    cut = message.encode()[:MAX_MESSAGE].decode(errors="ignore")
    return cut.replace("\r", " ").replace("\n", " ")


def decode(created_at: float, lines: list[bytes], failed: EventError | None = None) -> list[Event]:
    """The stored events (oldest first), as users see them; `failed`: the job's error, which
    the event that met it refers to (OWN) instead of keeping it twice."""
    events = []
    for line in lines:
        ms, event, phase, *error = line.decode().split(" ", 4)
        state, step = SHORT_PHASES[phase]
        if error == [OWN]:
            error = [failed.code, failed.message] if failed else []
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
