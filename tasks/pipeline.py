"""The pipeline's steps as plain functions over a job; Celery-free and testable directly.

A step runs only for its job's current message (a stale copy does nothing), under the job's
lease; it reads the job's record, checks that its phase still calls for this step, does its
work, and records the outcome with one transition (tasks/jobs/states.py). The next step is
sent and is also due in the due-set, so a lost message costs a delay, never the job. Every call
a step makes to Recall takes its quota through the step's `Quota`: the slot reserved for it on
an earlier run is redeemed by the call it was reserved for, and given back if the step ends
before that call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

import redis

from tasks.events import RECORDING_DONE, TRANSCRIPT_DONE, TRANSCRIPT_FAILED, WebhookEvent
from tasks.formats import beside
from tasks.jobs.errors import ErrorCode
from tasks.jobs.record import JobRecord
from tasks.jobs.states import Step
from tasks.jobs.views import Source
from tasks.names import DEFAULT
from tasks.outcomes import Outcome, Result
from tasks.recall.errors import (
    BadRequest,
    FinalError,
    RecallError,
    RetryableError,
    Throttled,
    may_have_changed,
)
from tasks.recall.limiter import Quota, Ticket
from tasks.remediation import CutShort, Remediation
from tasks.replicas import NotReplicated
from tasks.steps import (
    HeldBack,
    Inconsistent,
    NotReady,
    Run,
    Unconfigured,
    Unexpected,
    about,
    download_url,
)
from tasks.store import UnsafeName

log = logging.getLogger(__name__)

# Recall replays a create's first answer for an hour after it completed; within this much of it,
# a create whose answer was lost is reconciled by sending it again with the same key (no List).
REPLAY_WINDOW_S = 3000


class Pipeline(Remediation):
    """The steps of a job, with their dependencies built once per process: the entry points and
    the create, await and fetch steps here; the limit's remediation in tasks/remediation.py, and
    what every step shares (its dependencies, how it ends) in tasks/steps.py."""

    # -- entry points -----------------------------------------------------------------------

    def ingest(self, event: WebhookEvent, workspace: str = DEFAULT) -> Result:
        """Act on one webhook event of `workspace`, sending the step it makes due."""
        recording = event.data.recording
        if event.event == RECORDING_DONE and recording is not None:
            job_id, created = self.dispatch.submit(
                recording.id,
                metadata={"source": event.event},
                workspace=workspace,
                source=Source.WEBHOOK,
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
        with self.shares.slot(job.workspace) as granted:
            if not granted:
                return self._defer(job)
            started = time.monotonic()
            result = self._outcome_of(step, job)
            self.shares.ended(job.workspace, failed=result.outcome == Outcome.RETRY)
        if self.metrics is not None:
            self.metrics.step(step, time.monotonic() - started)
        extra = about(job, step=step, outcome=result.outcome, transcript_id=result.transcript_id)
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
            log.exception("job %s: the %s step failed", job.id, step, extra=about(job, step=step))
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
            run.recall.download(download_url(transcript), staged)
            meta = {**transcript.raw, "job_id": job.id}
            formats = beside(staged, self.settings.transcript_formats)
            self.store.save(job.recording_id, transcript.id, staged, meta, formats)
        self.jobs.finish(job.id)
        return Result(Outcome.PERSISTED, job.id, transcript_id=transcript.id)

    _STEPS: ClassVar[dict[Step, Callable[[Pipeline, JobRecord, Run], Result]]] = {
        Step.CREATE: _create,
        Step.REMEDIATE: Remediation._remediate,
        Step.AWAIT: _await,
        Step.FETCH: _fetch,
    }


def _transcript_id(job: JobRecord) -> str:
    if job.transcript_id is None:
        raise Inconsistent(f"job {job.id} is {job.state} without a transcript id")
    return job.transcript_id
