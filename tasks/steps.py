"""What every step of a job shares: its run (`Run`), the dependencies it is given, and how it
ends. A step records its outcome with one transition: created, a transcript finished, a wait for
quota, a retry after a backoff, or the job's failure; the errors it raises say which."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tasks.dispatch import Dispatcher
from tasks.jobs.errors import ErrorCode
from tasks.jobs.record import JobRecord, Listing
from tasks.jobs.states import State, Step
from tasks.jobs.store import JobStore
from tasks.metrics import Metrics
from tasks.outcomes import Outcome, Result
from tasks.recall.client import RecallClient
from tasks.recall.errors import FinalError, RetryableError, Throttled
from tasks.recall.limiter import Quota
from tasks.recall.models import Transcript
from tasks.retry import compute_backoff
from tasks.settings import Settings
from tasks.shares import Shares
from tasks.store import Store

log = logging.getLogger("tasks.pipeline")  # the pipeline's one log, whichever module writes

DEFER_S = 1.0  # a step refused a thread (tasks/shares.py) falls due again this much later


@dataclass
class Run:
    """One run of a step, passed to everything the step does: when it began, on Redis's clock
    (every worker compares times on that clock), the client of the job's Recall workspace, and
    what it holds of that workspace's quotas."""

    now: float
    recall: RecallClient
    quota: Quota


class Steps:
    """A job's steps' dependencies, built once per process, and the ways a step ends."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        recalls: Mapping[str, RecallClient],
        store: Store,
        dispatch: Dispatcher,
        metrics: Metrics | None = None,
        shares: Shares | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.recalls = recalls  # one client per Recall workspace
        self.store = store
        self.dispatch = dispatch
        self.metrics = metrics
        self.shares = shares or Shares(recalls, threads=1 << 16)  # outside a worker: no cap

    def _created(self, job: JobRecord, transcript_id: str) -> Result:
        state = self.jobs.record_created(job.id, transcript_id, self.settings.RECALL_POLL_INITIAL_S)
        if state == State.FETCHING:
            self.dispatch(Step.FETCH, job.id, job.recording_id)
        return Result(Outcome.CREATED, job.id, transcript_id=transcript_id, state=state)

    def _transcript_finished(
        self,
        job_id: str,
        recording_id: str,
        transcript_id: str,
        outcome: Literal["done", "failed"],
        sub_code: str | None,
    ) -> Result:
        applied = self.jobs.transcript_finished(job_id, transcript_id, outcome, sub_code)
        if applied == "fetching":
            self.dispatch(Step.FETCH, job_id, recording_id)
            return Result(Outcome.FETCH, job_id, transcript_id=transcript_id)
        if applied == "failed":
            return Result(Outcome.FAILED, job_id, detail=ErrorCode.TRANSCRIPT_FAILED)
        if applied == "kept":  # the job's create may wait on a backoff: let it adopt this now
            self.dispatch(Step.CREATE, job_id, recording_id)
            return Result(Outcome.KEPT, job_id, transcript_id=transcript_id)
        return Result(Outcome.IGNORED, job_id)

    def _wait_for_quota(
        self, job: JobRecord, throttled: Throttled, listing: Listing | None = None
    ) -> Result:
        """Our own pacing: come back exactly when the slot is due, holding it. Not an error:
        no budget is spent."""
        wait = throttled.retry_after or 0.0
        ticket = throttled.ticket.dump() if throttled.ticket else None
        self.jobs.retry_later(
            job,
            wait,
            throttled.code,
            throttled.message,
            quota_ticket=ticket,
            listing=listing,
            count=False,
        )
        return Result(Outcome.WAIT, job.id, detail=f"quota: in {wait:.1f}s")

    def _defer(self, job: JobRecord) -> Result:
        """The job's workspace holds all the threads of this process it may (tasks/shares.py):
        the step is not run, and its job falls due again shortly. No transition:
        no attempt counted, the quota ticket kept, nothing called; the message was consumed,
        so the sweeper sends a new one (tasks/jobs/sending.py), run under the job's lease."""
        self.jobs.nudge(job.id, DEFER_S)
        if self.metrics is not None:
            self.metrics.for_workspace(job.workspace).step_deferred()
        return Result(
            Outcome.DEFERRED, job.id, detail=f"workspace {job.workspace} holds its threads"
        )

    def _retry_later(self, job: JobRecord, exc: RetryableError) -> Result:
        """The same step after a backoff. Each kind of error has its own budget in a phase;
        a 429 from Recall, or a wait for replicas, never spends one."""
        count = job.failures.get(exc.code, 0)
        if exc.spends_budget and count >= self.settings.MAX_STEP_RETRIES:
            return self._fail(job, exc.code, f"gave up after {count} retries: {exc.message}")
        delay = compute_backoff(
            count,
            self.settings.RETRY_BACKOFF_BASE_S,
            self.settings.RETRY_BACKOFF_MAX_S,
            exc.retry_after,
        )
        self.jobs.retry_later(job, delay, exc.code, exc.message, count=exc.counted)
        log.info(
            "job %s: %s; retry %d in %.1fs",
            job.id,
            exc.message,
            count + 1,
            delay,
            extra=about(job, step=job.step, outcome=Outcome.RETRY),
        )
        return Result(Outcome.RETRY, job.id, detail=f"in {delay:.1f}s")

    def _fail(self, job: JobRecord, code: ErrorCode, message: str) -> Result:
        self.jobs.fail(job.id, code, message)
        return Result(Outcome.FAILED, job.id, detail=code)


class NotReady(RetryableError):
    code = ErrorCode.NOT_READY


class Unexpected(RetryableError):
    """A step failed in a way no rule covers (a full disk, an odd answer): retried, then ends."""

    code = ErrorCode.INTERNAL


class HeldBack(RetryableError):
    """The step cannot go on yet, and nothing failed: too few replicas confirmed a write that
    must outlive a failover (a create may happen; a transcript about to be deleted is archived).
    It waits, spending no budget (the job's deadline still ends the wait)."""

    code = ErrorCode.INTERNAL
    spends_budget = False
    counted = False


class Unconfigured(HeldBack):
    """The job's workspace is not set up on this worker (a deploy half rolled out, say): the step
    waits for a worker that has it."""

    retry_after = 30.0

    def __init__(self, workspace: str) -> None:
        super().__init__(f"workspace {workspace} is not set up on this worker", sent=False)


class Inconsistent(FinalError):
    """The job's record contradicts its phase (never expected)."""

    code = ErrorCode.INTERNAL


def about(job: JobRecord, **more: Any) -> dict[str, Any]:
    """The fields a log line about `job` carries (LOG_FORMAT=json shows them)."""
    return {"job_id": job.id, "recording_id": job.recording_id, **more}


def download_url(transcript: Transcript) -> str:
    url = transcript.download_url
    if not url:
        raise NotReady(f"transcript {transcript.id} has no download_url yet")
    return url
