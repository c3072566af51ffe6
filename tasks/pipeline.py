"""The pipeline's steps as plain functions over a job; Celery-free and testable directly.

Each step reads the job's record under the job's lock, checks that its phase still calls for this
step (a late or duplicated message does nothing), does its work, and records the outcome with one
transition (tasks/states.py). The next step is enqueued and is also due in the due-set, so a lost
message costs a delay, never the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import redis

from tasks.events import RECORDING_DONE, TRANSCRIPT_DONE, TRANSCRIPT_FAILED, WebhookEvent
from tasks.jobs import JobRecord, JobStore
from tasks.metrics import Metrics
from tasks.outcomes import ErrorCode, Outcome, Result
from tasks.recall import (
    BadRequest,
    FinalError,
    Listing,
    RecallClient,
    RetryableError,
    Throttled,
    Transcript,
)
from tasks.retry import compute_backoff
from tasks.settings import Settings
from tasks.states import State, Step
from tasks.store import Store

log = logging.getLogger(__name__)

TRANSCRIPT_LIMIT = 10
# Recall replays a create's first answer for an hour after it completed; within this much of it,
# a create whose answer was lost is reconciled by sending it again with the same key (no List).
REPLAY_WINDOW_S = 3000
LISTING_FRESH_S = 60  # a listing cut short by the quota goes on from its cursor within this
Enqueue = Callable[[Step, str, str], None]  # step, job id, recording id


class Pipeline:
    """The steps of a job, with their dependencies built once per process."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        recall: RecallClient,
        store: Store,
        enqueue: Enqueue,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.recall = recall
        self.store = store
        self.enqueue = enqueue
        self.metrics = metrics

    # -- entry points -----------------------------------------------------------------------

    def submit(
        self,
        recording_id: str,
        provider: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Result:
        """Start a job unless one exists for the key, and enqueue its create step."""
        provider = provider or self.settings.TRANSCRIPT_PROVIDER
        job_id, created = self.jobs.submit(recording_id, provider, metadata, idempotency_key)
        if not created:
            return Result(Outcome.JOB_EXISTS, job_id)
        self.enqueue(Step.CREATE, job_id, recording_id)
        return Result(Outcome.JOB_CREATED, job_id)

    def ingest(self, event: WebhookEvent) -> Result:
        """Act on one webhook event, enqueueing the step it makes due."""
        recording = event.data.recording
        if event.event == RECORDING_DONE and recording is not None:
            return self.submit(recording.id, None, {"source": "recording.done"}, None)
        transcript = event.data.transcript
        if event.event in (TRANSCRIPT_DONE, TRANSCRIPT_FAILED) and transcript is not None:
            job_id = self.jobs.owner_of(transcript.id) or str(
                (transcript.metadata or {}).get("job_id") or ""
            )
            if not job_id:
                return Result(Outcome.IGNORED, detail="transcript not ours")
            outcome: Literal["done", "failed"] = (
                "done" if event.event == TRANSCRIPT_DONE else "failed"
            )
            sub_code = event.data.data.sub_code if event.data.data else None
            recording_id = recording.id if recording is not None else ""
            return self._transcript_finished(job_id, recording_id, transcript.id, outcome, sub_code)
        return Result(Outcome.IGNORED, detail=event.event)

    def run_step(self, step: Step, job_id: str) -> Result:
        """Run `step` for the job if it is still the job's step; never raises a Recall error."""
        with self.jobs.running(job_id) as held:
            if not held:  # another step of the job is still running: look again soon
                self.jobs.nudge(job_id, 1.0)
                return Result(Outcome.BUSY, job_id)
            return self._run_held(step, job_id)

    def _run_held(self, step: Step, job_id: str) -> Result:
        """`run_step` with the job's lease held."""
        job = self.jobs.record(job_id)
        if job is None or job.phase.step != step:
            return Result(Outcome.STALE, job_id)
        started = time.monotonic()
        result = self._outcome_of(step, job)
        if self.metrics is not None:
            self.metrics.step(step, time.monotonic() - started)
        extra = _about(job, step=step, outcome=result.outcome, transcript_id=result.transcript_id)
        log.info("%s step: %s", step, result, extra=extra)
        return result

    def _outcome_of(self, step: Step, job: JobRecord) -> Result:
        """Run the step; every error becomes a retry or the job's failure."""
        job_id = job.id
        try:
            with self.recall.redeeming(job.quota_ticket):
                return self._STEPS[step](self, job)
        except RetryableError as exc:
            return self._retry_later(job, exc)
        except FinalError as exc:
            self.jobs.fail(job_id, exc.code, exc.message)
            return Result(Outcome.FAILED, job_id, detail=exc.code)
        except redis.RedisError:
            raise  # nothing can be recorded; the due-set re-drives the job
        except Exception as exc:  # anything else is retried too; past the budget the job ends
            log.exception("job %s: the %s step failed", job_id, step, extra=_about(job, step=step))
            return self._retry_later(job, Unexpected(f"{step}: {type(exc).__name__}: {exc}"))

    # -- steps --------------------------------------------------------------------------------

    def _create(self, job: JobRecord) -> Result:
        self.jobs.start_create(job)
        transcript_id = job.early_transcript_id
        if transcript_id is None and job.create_pending and not self._replayable(job):
            transcript_id = self._find_ours(job)
        if transcript_id is None:
            # Our creates and deletes on a recording take turns, so a refusal at the limit is
            # judged on a listing no job of ours changes meanwhile.
            with self.jobs.recording(job.recording_id, wait=True) as held:
                if not held:
                    self.jobs.nudge(job.id, 1.0)
                    return Result(Outcome.RECORDING_BUSY, job.id)
                transcript_id = self._call_create(job)
            if transcript_id is None:
                return Result(Outcome.REMEDIATE, job.id)
        state = self.jobs.record_created(job.id, transcript_id, self.settings.RECALL_POLL_INITIAL_S)
        if state == State.FETCHING:
            self.enqueue(Step.FETCH, job.id, job.recording_id)
        return Result(Outcome.CREATED, job.id, transcript_id=transcript_id, state=state)

    def _call_create(self, job: JobRecord) -> str | None:
        """Create Async Transcript (the recording's lease held); None when the recording is at
        the limit (remediation queued)."""
        metadata = {"job_id": job.id, "idempotency_key": job.idempotency_key[:500]}
        self.jobs.recording_changed(job.recording_id)  # before: a crash mid-call may have created
        try:
            transcript = self.recall.create_transcript(
                job.recording_id, job.provider, metadata, job.create_key
            )
        except FinalError as exc:
            self.jobs.create_refused(job)  # a definite answer, replayed for this key: use a new one
            if not isinstance(exc, BadRequest):
                raise
            # Maybe the 10-transcripts limit (its answer is not documented): remediation lists
            # the recording once and decides.
            version = self.jobs.recording_version(job.recording_id)
            self.jobs.start_remediation(job.id, exc.message, version)
            self.enqueue(Step.REMEDIATE, job.id, job.recording_id)
            return None
        return transcript.id

    def _replayable(self, job: JobRecord) -> bool:
        """True while Recall still replays the answer to the job's pending create key."""
        sent = job.create_key_at or 0.0
        return time.time() - sent < REPLAY_WINDOW_S

    def _find_ours(self, job: JobRecord) -> str | None:
        """A transcript this job created whose answer we never saw, matched by metadata."""
        for transcript in _live(self._listing(job)):
            if (transcript.metadata or {}).get("job_id") == job.id:
                log.info(
                    "job %s: adopting transcript %s found by listing",
                    job.id,
                    transcript.id,
                    extra=_about(job, transcript_id=transcript.id),
                )
                return transcript.id
        return None

    def _remediate(self, job: JobRecord) -> Result:
        with self.jobs.recording(job.recording_id, wait=False) as held:
            if not held:
                self.jobs.nudge(job.id, 1.0)
                return Result(Outcome.RECORDING_BUSY, job.id)
            live = _live(self._listing(job))
            if len(live) < TRANSCRIPT_LIMIT:
                if job.refused_version == self.jobs.recording_version(job.recording_id):
                    # Nothing of ours changed since the refusal: it was not the limit.
                    raise BadRequest(job.refusal or "create refused below the limit")
                self.jobs.end_remediation(job.id)  # another job of ours freed a slot meanwhile
                self.enqueue(Step.CREATE, job.id, job.recording_id)
                return Result(Outcome.SLOT_FREE, job.id)
            victim = self._pick_victim(live)
            if victim is None:
                raise LimitReached(
                    f"recording {job.recording_id} has {len(live)} transcripts and policy "
                    f"{self.settings.LIMIT_POLICY} allows deleting none of them"
                )
            if victim.status.code == "done":
                self._archive(job.id, victim)
            self.jobs.recording_changed(job.recording_id)  # before: a crash mid-call may delete
            self.recall.delete_transcript(victim.id)
            log.info(
                "job %s: limit remediation deleted %s",
                job.id,
                victim.id,
                extra=_about(job, step=Step.REMEDIATE),
            )
        self.jobs.end_remediation(job.id)
        self.enqueue(Step.CREATE, job.id, job.recording_id)
        return Result(
            Outcome.SLOT_FREED, job.id, transcript_id=victim.id, detail=victim.status.code
        )

    def _pick_victim(self, live: list[Transcript]) -> Transcript | None:
        """Failed transcripts first; then, under archive-oldest, the oldest done one not in use."""
        if self.settings.LIMIT_POLICY == "fail":
            return None
        unowned = [t for t in live if not self._in_use(t)]
        failed = [t for t in unowned if t.status.code == "failed"]
        if failed:
            return failed[0]
        if self.settings.LIMIT_POLICY != "archive-oldest":
            return None
        done = [t for t in unowned if t.status.code == "done"]
        epoch = datetime.min.replace(tzinfo=UTC)
        return min(done, key=lambda t: t.created_at or epoch, default=None)

    def _in_use(self, transcript: Transcript) -> bool:
        """True when an unfinished job of ours waits on this transcript."""
        owners = {self.jobs.owner_of(transcript.id), (transcript.metadata or {}).get("job_id")}
        return any(owner and self.jobs.is_active(str(owner)) for owner in owners)

    def _archive(self, job_id: str, transcript: Transcript) -> None:
        """Persist a done transcript before it is deleted; skipped if already stored."""
        recording_id = transcript.recording.id if transcript.recording else ""
        if self.store.has(recording_id, transcript.id):
            return
        fresh = self.recall.retrieve_transcript(transcript.id)
        data = self.recall.download(_download_url(fresh))
        owner = self.jobs.owner_of(transcript.id) or (fresh.metadata or {}).get("job_id")
        meta = {**fresh.raw, "job_id": owner, "archived_by_job_id": job_id}
        self.store.save(recording_id, transcript.id, data, meta)

    def _await(self, job: JobRecord) -> Result:
        transcript = self.recall.retrieve_transcript(_transcript_id(job))
        code = transcript.status.code
        if code in ("done", "failed", "deleted"):
            outcome: Literal["done", "failed"] = "done" if code == "done" else "failed"
            sub_code = transcript.status.sub_code or code
            return self._transcript_finished(
                job.id, job.recording_id, transcript.id, outcome, sub_code
            )
        started = job.transcript_created_at or job.created_at
        left = started + self.settings.RECALL_TRANSCRIPT_TIMEOUT_S - time.time()
        if left <= 0:
            self.jobs.fail(
                job.id,
                ErrorCode.TIMEOUT,
                f"transcript {transcript.id} still {code} after the timeout",
            )
            return Result(Outcome.FAILED, job.id, detail=ErrorCode.TIMEOUT)
        gap = min(
            self.settings.RECALL_POLL_INITIAL_S * 2 ** (job.polls + 1),
            self.settings.RECALL_POLL_MAX_S,
        )
        self.jobs.poll_later(job, min(gap, left + 0.01))
        return Result(Outcome.PROCESSING, job.id, transcript_id=transcript.id, detail=code)

    def _fetch(self, job: JobRecord) -> Result:
        transcript = self.recall.retrieve_transcript(_transcript_id(job))
        if transcript.status.code != "done":
            raise NotReady(f"transcript {transcript.id} is {transcript.status.code}, not done")
        data = self.recall.download(_download_url(transcript))
        self.store.save(job.recording_id, transcript.id, data, {**transcript.raw, "job_id": job.id})
        self.jobs.finish(job.id)
        return Result(Outcome.PERSISTED, job.id, transcript_id=transcript.id)

    _STEPS: ClassVar[dict[Step, Callable[[Pipeline, JobRecord], Result]]] = {
        Step.CREATE: _create,
        Step.REMEDIATE: _remediate,
        Step.AWAIT: _await,
        Step.FETCH: _fetch,
    }

    # -- helpers ------------------------------------------------------------------------------

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
            self.enqueue(Step.FETCH, job_id, recording_id)
            return Result(Outcome.FETCH, job_id, transcript_id=transcript_id)
        if applied == "failed":
            return Result(Outcome.FAILED, job_id, detail=ErrorCode.TRANSCRIPT_FAILED)
        if applied == "kept":  # the job's create may wait on a backoff: let it adopt this now
            self.enqueue(Step.CREATE, job_id, recording_id)
            return Result(Outcome.KEPT, job_id, transcript_id=transcript_id)
        return Result(Outcome.IGNORED, job_id)

    def _listing(self, job: JobRecord) -> list[dict[str, Any]]:
        """Every transcript of the job's recording, as listed. A listing the quota cut short goes
        on from its cursor when the job comes back (if it began under a minute ago)."""
        seen: list[dict[str, Any]] = []
        cursor, started = None, time.time()
        version = self.jobs.recording_version(job.recording_id)
        if (
            job.listing_next
            and job.listing_version == version  # no job of ours created or deleted since
            and job.listing_at
            and started - job.listing_at < LISTING_FRESH_S
        ):
            seen, cursor, started = list(job.listing), job.listing_next, job.listing_at
        try:
            for page, next_page in self.recall.list_pages(job.recording_id, cursor):
                seen, cursor = seen + page, next_page
        except Throttled as exc:
            if cursor:
                exc.listing = Listing(seen, cursor, started, version)
            raise
        return seen

    def _retry_later(self, job: JobRecord, exc: RetryableError) -> Result:
        """The same step after a backoff. Each kind of error has its own budget in a phase;
        waiting for Recall's quota (429) never spends one."""
        count = job.failures.get(exc.code, 0)
        if isinstance(exc, Throttled):  # our own pacing: come back exactly when the slot is due
            wait = exc.retry_after or 0.0
            self.jobs.retry_later(
                job, wait, exc.code, exc.message, quota_ticket=exc.ticket, listing=exc.listing
            )
            return Result(Outcome.RETRY, job.id, detail=f"quota: in {wait:.1f}s")
        if exc.code != ErrorCode.RATE_LIMITED and count >= self.settings.MAX_STEP_RETRIES:
            self.jobs.fail(job.id, exc.code, f"gave up after {count} retries: {exc.message}")
            return Result(Outcome.FAILED, job.id, detail=exc.code)
        delay = compute_backoff(
            count,
            self.settings.RETRY_BACKOFF_BASE_S,
            self.settings.RETRY_BACKOFF_MAX_S,
            exc.retry_after,
        )
        self.jobs.retry_later(job, delay, exc.code, exc.message)
        log.info(
            "job %s: %s; retry %d in %.1fs",
            job.id,
            exc.message,
            count + 1,
            delay,
            extra=_about(job, step=job.step, outcome=Outcome.RETRY),
        )
        return Result(Outcome.RETRY, job.id, detail=f"in {delay:.1f}s")


class LimitReached(FinalError):
    code = ErrorCode.LIMIT_REACHED


class NotReady(RetryableError):
    code = ErrorCode.NOT_READY


class Unexpected(RetryableError):
    """A step failed in a way no rule covers (a full disk, an odd answer): retried, then ends."""

    code = ErrorCode.INTERNAL


class Inconsistent(FinalError):
    """The job's record contradicts its phase (never expected)."""

    code = ErrorCode.INTERNAL


def _about(job: JobRecord, **more: Any) -> dict[str, Any]:
    """The fields a log line about `job` carries (LOG_FORMAT=json shows them)."""
    return {"job_id": job.id, "recording_id": job.recording_id, **more}


def _live(listing: list[dict[str, Any]]) -> list[Transcript]:
    """The listed transcripts that count towards the limit."""
    transcripts = [Transcript.from_api(raw) for raw in listing]
    return [t for t in transcripts if t.status.code != "deleted"]


def _transcript_id(job: JobRecord) -> str:
    if job.transcript_id is None:
        raise Inconsistent(f"job {job.id} is {job.state} without a transcript id")
    return job.transcript_id


def _download_url(transcript: Transcript) -> str:
    url = transcript.download_url
    if not url:
        raise NotReady(f"transcript {transcript.id} has no download_url yet")
    return url
