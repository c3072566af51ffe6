"""What a step or an event did: types that tests, logs and Flower read (why a job failed:
tasks/jobs/errors.py)."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from enum import StrEnum

from tasks.jobs.states import State


class Outcome(StrEnum):
    JOB_CREATED = "job created"
    JOB_EXISTS = "job exists"
    IGNORED = "ignored"  # not ours, not handled, or the job is past it
    KEPT = "kept"  # a transcript event before the create answer, kept for the create step
    BUSY = "busy"  # another step of the job holds it: looked at again within a second
    DEFERRED = "deferred"  # its workspace has its share of the threads: looked at again soon
    STALE = "stale"  # the job no longer calls for this step (a late or duplicated message)
    CREATED = "created"  # the transcript was created or adopted
    REMEDIATE = "remediate"  # the recording is at the limit: remediation is next
    RECORDING_BUSY = "recording busy"  # another job remediates the recording
    SLOT_FREED = "slot freed"  # remediation deleted a transcript
    SLOT_FREE = "slot free"  # remediation found a free slot
    PROCESSING = "processing"  # polled: not finished yet
    FETCH = "fetch"  # the transcript is done: fetch is next
    PERSISTED = "persisted"
    RETRY = "retry"  # a retryable error: the same step after a backoff
    WAIT = "wait"  # our own pacing: the same step when its quota slot is due (not an error)
    FAILED = "failed"


@dataclass(frozen=True)
class Result:
    """One step's or event's outcome."""

    outcome: Outcome
    job_id: str = ""
    _: KW_ONLY
    transcript_id: str = ""
    detail: str = ""  # an error code, a transcript status, a delay
    state: State | None = None  # the job's state after it, where that says more than `outcome`

    def __str__(self) -> str:
        parts = (self.outcome, self.job_id, self.transcript_id, self.detail, self.state or "")
        return " ".join(str(part) for part in parts if part)


class JobFailed(Exception):
    """A step ended its job `failed`: the task's exception, "job <id> failed: <code>: <message>"."""


class JobRetrying(Exception):
    """A step left its job to retry after an error: why, shown with the task's `RETRY`."""
