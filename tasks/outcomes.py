"""What a step or an event did, and why a job failed: types that tests, logs and Flower read."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from enum import StrEnum

from tasks.jobs.states import State


class ErrorCode(StrEnum):
    """`error.code` of a failed job (the README lists every value)."""

    TRANSCRIPT_FAILED = "transcript_failed"  # Recall reported the transcript failed (`sub_code`)
    LIMIT_REACHED = "limit_reached"  # 10 transcripts and LIMIT_POLICY allows deleting none
    TIMEOUT = "timeout"  # still processing after RECALL_TRANSCRIPT_TIMEOUT_S
    RECALL_REJECTED = "recall_rejected"  # 400, 402, 403 or another 4xx
    RECALL_UNAUTHORIZED = "recall_unauthorized"  # 401: the API key
    NOT_FOUND = "not_found"  # 404: no such recording or transcript
    DOWNLOAD_REFUSED = "download_refused"  # a download_url not https, or too large
    RATE_LIMITED = "rate_limited"  # 429 past the retry budget
    RECALL_UNAVAILABLE = "recall_unavailable"  # 409, 5xx, no connection, past the budget
    RECALL_UNREACHABLE = "recall_unreachable"  # timeouts or resets after sending, past the budget
    DOWNLOAD_EXPIRED = "download_expired"  # the pre-signed URL kept being refused
    NOT_READY = "not_ready"  # a done transcript kept coming without its data
    DEADLINE_EXCEEDED = "deadline_exceeded"  # still unfinished JOB_DEADLINE_S after it (re)started
    DOWNLOAD_TIMEOUT = "download_timeout"  # downloads kept taking over RECALL_DOWNLOAD_TIMEOUT_S
    INTERNAL = "internal"  # the pipeline met something it cannot handle (the message says what)


class Outcome(StrEnum):
    JOB_CREATED = "job created"
    JOB_EXISTS = "job exists"
    IGNORED = "ignored"  # not ours, not handled, or the job is past it
    KEPT = "kept"  # a transcript event before the create answer, kept for the create step
    BUSY = "busy"  # another step of the job holds it: looked at again within a second
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
