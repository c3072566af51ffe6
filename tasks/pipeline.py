"""The pipeline's steps as plain functions over a job; Celery-free and testable directly.

A step runs only for its job's current message (a stale copy does nothing), under the job's
lease; it reads the job's record, checks that its phase still calls for this step, does its work,
and records the outcome with one transition (tasks/states.py). The next step is sent and is also
due in the due-set, so a lost message costs a delay, never the job. Every call a step makes to
Recall takes its quota through the step's `Quota`: the slot reserved for it on an earlier run is
redeemed by the call it was reserved for, and given back if the step ends before that call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, NamedTuple

import redis

from tasks.connection import NotReplicated
from tasks.dispatch import Dispatcher
from tasks.events import RECORDING_DONE, TRANSCRIPT_DONE, TRANSCRIPT_FAILED, WebhookEvent
from tasks.formats import beside
from tasks.jobs.record import JobRecord, Listing
from tasks.jobs.states import State, Step
from tasks.jobs.store import JobStore
from tasks.metrics import Metrics
from tasks.outcomes import ErrorCode, Outcome, Result
from tasks.recall.client import RecallClient
from tasks.recall.errors import (
    BadRequest,
    FinalError,
    RecallError,
    RetryableError,
    Throttled,
    may_have_changed,
)
from tasks.recall.limiter import Quota, Ticket
from tasks.recall.models import Transcript
from tasks.retry import compute_backoff
from tasks.settings import Settings
from tasks.store import Store, UnsafeName
from tasks.workspaces import DEFAULT

log = logging.getLogger(__name__)

TRANSCRIPT_LIMIT = 10
# Recall replays a create's first answer for an hour after it completed; within this much of it,
# a create whose answer was lost is reconciled by sending it again with the same key (no List).
REPLAY_WINDOW_S = 3000
LISTING_FRESH_S = 60  # a listing cut short by the quota goes on from its cursor within this


@dataclass
class Run:
    """One run of a step, passed to everything the step does: when it began, on Redis's clock
    (every worker compares times on that clock), the client of the job's Recall workspace, and
    what it holds of that workspace's quotas."""

    now: float
    recall: RecallClient
    quota: Quota


class CutShort(NamedTuple):
    """A listing the quota interrupted: what was seen, and the wait before it can go on."""

    listing: Listing
    until: Throttled


class Pipeline:
    """The steps of a job, with their dependencies built once per process."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        recalls: Mapping[str, RecallClient],
        store: Store,
        dispatch: Dispatcher,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.recalls = recalls  # one client per Recall workspace
        self.store = store
        self.dispatch = dispatch
        self.metrics = metrics

    # -- entry points -----------------------------------------------------------------------

    def ingest(self, event: WebhookEvent, workspace: str = DEFAULT) -> Result:
        """Act on one webhook event of `workspace`, sending the step it makes due."""
        recording = event.data.recording
        if event.event == RECORDING_DONE and recording is not None:
            job_id, created = self.dispatch.submit(
                recording.id, metadata={"source": event.event}, workspace=workspace
            )
            return Result(Outcome.JOB_CREATED if created else Outcome.JOB_EXISTS, job_id)
        transcript = event.data.transcript
        if event.event in (TRANSCRIPT_DONE, TRANSCRIPT_FAILED) and transcript is not None:
            job_id = self.jobs.owner_of(transcript.id) or str(
                (transcript.metadata or {}).get("job_id") or ""
            )
            if not job_id:
                return Result(Outcome.IGNORED, detail="transcript not ours")
            job = self.jobs.record(job_id)
            if job is not None and job.workspace != workspace:
                return Result(Outcome.IGNORED, job_id, detail=f"a job of workspace {job.workspace}")
            outcome: Literal["done", "failed"] = (
                "done" if event.event == TRANSCRIPT_DONE else "failed"
            )
            sub_code = event.data.data.sub_code if event.data.data else None
            recording_id = recording.id if recording is not None else ""
            return self._transcript_finished(job_id, recording_id, transcript.id, outcome, sub_code)
        return Result(Outcome.IGNORED, detail=event.event)

    def run_step(self, step: Step, job_id: str, task_id: str) -> Result:
        """Run `step` for the job if `task_id` is the job's current message for it and the step
        is still the job's; never raises a Recall error."""
        if not self.jobs.consume(job_id, task_id):
            return Result(Outcome.STALE, job_id, detail="a copy of a message already taken")
        with self.jobs.running(job_id) as held:
            if not held:  # another step of the job is still running: look again soon
                self.jobs.nudge(job_id, 1.0)
                return Result(Outcome.BUSY, job_id)
            return self._run_held(step, job_id)

    def _run_held(self, step: Step, job_id: str) -> Result:
        """`run_step` with the job's lease held."""
        job = self.jobs.record(job_id)
        if job is None or job.step != step:
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
        recall = self.recalls.get(job.workspace)
        if recall is None:
            return self._retry_later(job, Unconfigured(job.workspace))
        run = Run(
            self.jobs.now(),
            recall,
            Quota(Ticket.load(job.quota_ticket) if job.quota_ticket else None),
        )
        try:
            return self._STEPS[step](self, job, run)
        except Throttled as exc:
            return self._wait_for_quota(job, exc)
        except RetryableError as exc:
            return self._retry_later(job, exc)
        except FinalError as exc:
            return self._fail(job, exc.code, exc.message)
        except UnsafeName as exc:
            return self._fail(job, ErrorCode.INTERNAL, str(exc))
        except NotReplicated as exc:  # what it guards (a create, a delete) waits for the replicas
            return self._retry_later(job, HeldBack(f"{step} held back: {exc}"))
        except redis.RedisError:
            raise  # nothing can be recorded; the due-set re-drives the job
        except Exception as exc:  # anything else is retried too; past the budget the job ends
            log.exception("job %s: the %s step failed", job.id, step, extra=_about(job, step=step))
            return self._retry_later(job, Unexpected(f"{step}: {type(exc).__name__}: {exc}"))
        finally:
            self._give_back(run)

    def _give_back(self, run: Run) -> None:
        """The slot reserved for this run and not used goes back to the family's window."""
        try:
            run.recall.release(run.quota)
        except redis.RedisError as exc:  # it leaves the window with time anyway
            log.warning("a quota slot was not given back: %s", exc)

    # -- steps --------------------------------------------------------------------------------

    def _create(self, job: JobRecord, run: Run) -> Result:
        self.jobs.start_create(job, run.now)  # no create until a replica knows it may happen
        transcript_id = job.early_transcript_id
        if transcript_id is None and job.create_pending and not self._replayable(job, run):
            listing = self._listing(job, run)
            if isinstance(listing, CutShort):
                return self._wait_for_quota(job, listing.until, listing.listing)
            transcript_id = self._ours(job, listing.seen)
        if transcript_id is None:
            # Our creates and deletes on a recording take turns, so a refusal at the limit is
            # judged on a listing no job of ours changes meanwhile.
            with self.jobs.recording_lease(job.recording_id, wait=True) as held:
                if not held:
                    self.jobs.nudge(job.id, 1.0)
                    return Result(Outcome.RECORDING_BUSY, job.id)
                transcript_id = self._call_create(job, run)
            if transcript_id is None:
                return Result(Outcome.REMEDIATE, job.id)
        return self._created(job, transcript_id)

    def _created(self, job: JobRecord, transcript_id: str) -> Result:
        state = self.jobs.record_created(job.id, transcript_id, self.settings.RECALL_POLL_INITIAL_S)
        if state == State.FETCHING:
            self.dispatch(Step.FETCH, job.id, job.recording_id)
        return Result(Outcome.CREATED, job.id, transcript_id=transcript_id, state=state)

    def _call_create(self, job: JobRecord, run: Run) -> str | None:
        """Create Async Transcript (the recording's lease held); None when it was refused and
        remediation must look (it is sent)."""
        metadata = {"job_id": job.id, "idempotency_key": job.idempotency_key[:500]}
        try:
            with self._changing(job.recording_id):
                transcript = run.recall.create_transcript(
                    job.recording_id, job.provider, metadata, job.create_key, run.quota
                )
        except FinalError as exc:
            self.jobs.create_refused(job)  # a definite answer, replayed for this key: use a new one
            if not isinstance(exc, BadRequest):
                raise
            # Maybe the 10-transcripts limit (its answer is not documented): remediation lists
            # the recording once and decides.
            version = self.jobs.recording_version(job.recording_id)
            self.jobs.start_remediation(job, exc.message, version)
            self.dispatch(Step.REMEDIATE, job.id, job.recording_id)
            return None
        return transcript.id

    @contextmanager
    def _changing(self, recording_id: str) -> Iterator[None]:
        """Around a create: once it may have changed what Recall holds for the recording (it
        reached Recall and was not refused), the recording's version moves. Never for a
        refusal, or a call our pacing held back: only real change tells another job a slot
        may have freed."""
        try:
            yield
        except RecallError as exc:
            if may_have_changed(exc):
                self.jobs.recording_changed(recording_id)
            raise
        self.jobs.recording_changed(recording_id)

    def _replayable(self, job: JobRecord, run: Run) -> bool:
        """True while Recall still replays the answer to the job's pending create key."""
        sent = job.create_key_at or 0.0
        return run.now - sent < REPLAY_WINDOW_S

    def _ours(self, job: JobRecord, listing: list[dict[str, Any]]) -> str | None:
        """A transcript this job created whose answer we never saw, matched by metadata."""
        for transcript in _live(listing):
            if transcript.job_id == job.id:
                log.info(
                    "job %s: adopting transcript %s found by listing",
                    job.id,
                    transcript.id,
                    extra=_about(job, transcript_id=transcript.id),
                )
                return transcript.id
        return None

    def _remediate(self, job: JobRecord, run: Run) -> Result:
        with self.jobs.recording_lease(job.recording_id, wait=False) as held:
            if not held:
                self.jobs.nudge(job.id, 1.0)
                return Result(Outcome.RECORDING_BUSY, job.id)
            listing = self._listing(job, run)
            if isinstance(listing, CutShort):
                return self._wait_for_quota(job, listing.until, listing.listing)
            mine = self._ours(job, listing.seen)  # an earlier create whose answer was lost
            if mine is not None:
                return self._created(job, mine)
            live = _live(listing.seen)
            rounds = job.remediations
            spent = rounds > self.settings.MAX_STEP_RETRIES
            if len(live) < TRANSCRIPT_LIMIT:
                if job.refused_version == self.jobs.recording_version(job.recording_id):
                    # Nothing of ours changed since the refusal: it was not the limit.
                    raise BadRequest(job.refusal or "create refused below the limit")
                if spent:
                    raise BadRequest(f"{job.refusal} (refused {rounds} times)")
                self.jobs.end_remediation(job.id)  # another job of ours freed a slot meanwhile
                self.dispatch(Step.CREATE, job.id, job.recording_id)
                return Result(Outcome.SLOT_FREE, job.id)
            victim = None if spent else self._pick_victim(live)
            if victim is None:
                raise LimitReached(
                    f"recording {job.recording_id} has {len(live)} transcripts and "
                    + (
                        f"every slot freed in {rounds} rounds was taken by another job"
                        if spent
                        else f"policy {self.settings.LIMIT_POLICY} allows deleting none of them"
                    )
                )
            if victim.status.code == "done" and not self._archive(job, victim, run):
                self.jobs.nudge(job.id, 1.0)  # its job was retried meanwhile: look again
                return Result(Outcome.RECORDING_BUSY, job.id, transcript_id=victim.id)
            # Counted as it is sent: a worker that dies mid-call may have deleted.
            run.recall.delete_transcript(
                victim.id, run.quota, lambda: self.jobs.recording_changed(job.recording_id)
            )
            log.info(
                "job %s: limit remediation deleted %s",
                job.id,
                victim.id,
                extra=_about(job, step=Step.REMEDIATE),
            )
        self.jobs.end_remediation(job.id)
        self.dispatch(Step.CREATE, job.id, job.recording_id)
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
        owners = {self.jobs.owner_of(transcript.id), transcript.job_id}
        return any(owner and self.jobs.is_active(owner) for owner in owners)

    def _archive(self, job: JobRecord, transcript: Transcript, run: Run) -> bool:
        """Persist a done transcript before it is deleted (skipped if already stored), and
        record it on the job of ours it belongs to, whose retry then finishes from the archive.
        False when that job is active again: the transcript must not be deleted."""
        recording_id = transcript.recording.id if transcript.recording else job.recording_id
        owner = self.jobs.owner_of(transcript.id) or transcript.job_id
        if not self.store.has(recording_id, transcript.id):
            fresh = run.recall.retrieve_transcript(transcript.id, run.quota)
            with self.store.staging() as staged:
                run.recall.download(_download_url(fresh), staged)
                meta = {**fresh.raw, "job_id": owner, "archived_by_job_id": job.id}
                formats = beside(staged, self.settings.transcript_formats)
                self.store.save(recording_id, transcript.id, staged, meta, formats)
        if owner is None or self.jobs.record(owner) is None:
            return True
        return self.jobs.record_archive(owner, transcript.id)  # a replica knows it, or no delete

    def _await(self, job: JobRecord, run: Run) -> Result:
        transcript_id = _transcript_id(job)
        started = job.transcript_created_at or job.created_at
        left = started + self.settings.RECALL_TRANSCRIPT_TIMEOUT_S - run.now
        try:
            transcript = run.recall.retrieve_transcript(transcript_id, run.quota)
        except RetryableError as exc:
            if left <= 0:  # the poll failed, and the wait is over anyway
                return self._timed_out(job, transcript_id, f"unknown ({exc.message})")
            raise
        code = transcript.status.code
        if code in ("done", "failed", "deleted"):
            outcome: Literal["done", "failed"] = "done" if code == "done" else "failed"
            sub_code = transcript.status.sub_code or code
            return self._transcript_finished(
                job.id, job.recording_id, transcript.id, outcome, sub_code
            )
        if left <= 0:
            return self._timed_out(job, transcript_id, code)
        gap = min(
            self.settings.RECALL_POLL_INITIAL_S * 2 ** (job.polls + 1),
            self.settings.RECALL_POLL_MAX_S,
        )
        self.jobs.poll_later(job, min(gap, left + 0.01))
        return Result(Outcome.PROCESSING, job.id, transcript_id=transcript.id, detail=code)

    def _timed_out(self, job: JobRecord, transcript_id: str, status: str) -> Result:
        message = f"transcript {transcript_id} still {status} after the timeout"
        return self._fail(job, ErrorCode.TIMEOUT, message)

    def _fetch(self, job: JobRecord, run: Run) -> Result:
        transcript = run.recall.retrieve_transcript(_transcript_id(job), run.quota)
        if transcript.status.code != "done":
            raise NotReady(f"transcript {transcript.id} is {transcript.status.code}, not done")
        with self.store.staging() as staged:
            run.recall.download(_download_url(transcript), staged)
            meta = {**transcript.raw, "job_id": job.id}
            formats = beside(staged, self.settings.transcript_formats)
            self.store.save(job.recording_id, transcript.id, staged, meta, formats)
        self.jobs.finish(job.id)
        return Result(Outcome.PERSISTED, job.id, transcript_id=transcript.id)

    _STEPS: ClassVar[dict[Step, Callable[[Pipeline, JobRecord, Run], Result]]] = {
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
            self.dispatch(Step.FETCH, job_id, recording_id)
            return Result(Outcome.FETCH, job_id, transcript_id=transcript_id)
        if applied == "failed":
            return Result(Outcome.FAILED, job_id, detail=ErrorCode.TRANSCRIPT_FAILED)
        if applied == "kept":  # the job's create may wait on a backoff: let it adopt this now
            self.dispatch(Step.CREATE, job_id, recording_id)
            return Result(Outcome.KEPT, job_id, transcript_id=transcript_id)
        return Result(Outcome.IGNORED, job_id)

    def _listing(self, job: JobRecord, run: Run) -> Listing | CutShort:
        """Every transcript of the job's recording, as listed, or what was seen when the quota
        cut it short. A listing cut short goes on from its cursor when the job comes back (if it
        began under a minute ago and no job of ours changed the recording since)."""
        version = self.jobs.recording_version(job.recording_id)
        seen: list[dict[str, Any]] = []
        cursor, started = None, run.now
        resumed = job.listing_in_progress
        if (
            resumed is not None
            and resumed.version == version
            and started - resumed.started_at < LISTING_FRESH_S
        ):
            seen, cursor, started = list(resumed.seen), resumed.cursor, resumed.started_at
        try:
            for page, next_page in run.recall.list_pages(job.recording_id, cursor, run.quota):
                seen, cursor = seen + page, next_page
        except Throttled as exc:
            if cursor:
                return CutShort(Listing(seen, cursor, started, version), exc)
            raise
        return Listing(seen, None, started, version)

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
            extra=_about(job, step=job.step, outcome=Outcome.RETRY),
        )
        return Result(Outcome.RETRY, job.id, detail=f"in {delay:.1f}s")

    def _fail(self, job: JobRecord, code: ErrorCode, message: str) -> Result:
        self.jobs.fail(job.id, code, message)
        return Result(Outcome.FAILED, job.id, detail=code)


class LimitReached(FinalError):
    code = ErrorCode.LIMIT_REACHED


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
