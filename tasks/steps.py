"""The pipeline's steps as plain functions over a job id; Celery-free and testable directly.

Each step reads the job, checks that its state still calls for this step (a late or duplicated
message does nothing), does its work under the job's lock, and records the outcome with one atomic
transition. The next step is enqueued directly and is also due in the due-set, so a lost message
costs a delay, never the job.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from tasks.events import RECORDING_DONE, TRANSCRIPT_DONE, TRANSCRIPT_FAILED, WebhookEvent
from tasks.jobs import ACTIVE, JobStore, Step
from tasks.recall import (
    BadRequest,
    FinalError,
    RecallClient,
    RecallError,
    RetryableError,
    Transcript,
)
from tasks.retry import compute_backoff
from tasks.store import LocalStore
from worker.settings import Settings

log = logging.getLogger(__name__)

TRANSCRIPT_LIMIT = 10
Enqueue = Callable[[Step, str], None]


class Pipeline:
    """The steps of a job, with their dependencies built once per process."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        recall: RecallClient,
        store: LocalStore,
        enqueue: Enqueue,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.recall = recall
        self.store = store
        self.enqueue = enqueue

    # -- entry points -----------------------------------------------------------------------

    def submit(
        self,
        recording_id: str,
        provider: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        run_now: bool = False,
    ) -> tuple[str, bool]:
        """Start a job unless one exists for the key; returns (job id, created).

        The create step is enqueued, or with `run_now` run here and now (by a worker already
        handling the event: one task fewer per job; a crash is re-driven from the due-set).
        """
        job_id, created, _ = self._submit(
            recording_id, provider, metadata, idempotency_key, run_now
        )
        return job_id, created

    def _submit(
        self,
        recording_id: str,
        provider: dict[str, Any] | None,
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
        run_now: bool,
    ) -> tuple[str, bool, str]:
        job_id, created = self.jobs.submit(
            recording_id, provider or self.settings.TRANSCRIPT_PROVIDER, metadata, idempotency_key
        )
        return job_id, created, self._next("create", job_id, run_now) if created else ""

    def _next(self, step: Step, job_id: str, run_now: bool) -> str:
        if run_now:
            return f"; {step}: {self.run_step(step, job_id)}"
        self.enqueue(step, job_id)
        return ""

    def ingest(self, event: WebhookEvent, run_now: bool = False) -> str:
        """Act on one webhook event (running the step it makes due with `run_now`); returns
        what was done, for logs and tests."""
        recording = event.data.recording
        if event.event == RECORDING_DONE and recording is not None:
            job_id, created, follow = self._submit(
                recording.id, None, {"source": "recording.done"}, None, run_now
            )
            return f"{'created' if created else 'existing'} job {job_id}{follow}"
        transcript = event.data.transcript
        if event.event in (TRANSCRIPT_DONE, TRANSCRIPT_FAILED) and transcript is not None:
            job_id = self.jobs.owner_of(transcript.id) or str(
                (transcript.metadata or {}).get("job_id") or ""
            )
            if not job_id:
                return "ignored: transcript not ours"
            outcome = "done" if event.event == TRANSCRIPT_DONE else "failed"
            sub_code = event.data.data.sub_code if event.data.data else None
            result = self.jobs.on_transcript_event(job_id, transcript.id, outcome, sub_code)
            follow = self._next("fetch", job_id, run_now) if result == "fetch" else ""
            return f"{result} job {job_id}{follow}"
        return f"ignored: {event.event}"

    def sweep(self) -> int:
        """Re-drive every job whose due time has come; returns how many."""
        due = self.jobs.claim_due()
        for job_id, step in due:
            self.enqueue(step, job_id)  # type: ignore[arg-type]
        return len(due)

    def run_step(self, step: Step, job_id: str) -> str:
        """Run `step` for the job if it is still the job's step; never raises a Recall error."""
        lock = self.jobs.lock(job_id)
        if not lock.acquire():  # another step of the job is still running: look again soon
            self.jobs.nudge(job_id, 1.0)
            return "busy"
        try:
            fields = self.jobs.fields(job_id)
            if fields.get("state") not in ACTIVE or fields.get("step") != step:
                return "stale"
            try:
                return self._STEPS[step](self, job_id, fields)
            except RetryableError as exc:
                return self._retry_later(job_id, fields, exc)
            except FinalError as exc:
                self.jobs.fail(job_id, exc.code, exc.message)
                return f"failed: {exc.code}"
        finally:
            try:
                lock.release()
            except Exception:  # the lease ran out; the next runner already owns the lock
                log.warning("job %s: lock expired before %s finished", job_id, step)

    # -- steps --------------------------------------------------------------------------------

    def _create(self, job_id: str, fields: dict[str, str]) -> str:
        recording_id = fields["recording_id"]
        self.jobs.transition(job_id, ("queued", "creating"), "creating", due_in=self.jobs.lease_s)
        adopted = fields.get("signal_transcript") or None
        if adopted is None and fields.get("create_pending"):
            adopted = self._find_ours(job_id, recording_id)
        if adopted is None:
            adopted = self._call_create(job_id, fields)
            if adopted is None:
                return "remediate"
        return self._created(job_id, adopted)

    def _call_create(self, job_id: str, fields: dict[str, str]) -> str | None:
        """Create Async Transcript; None when the recording is at the limit (remediation queued)."""
        recording_id = fields["recording_id"]
        key = f"{job_id}:{fields.get('create_seq', '0')}"
        self.jobs.update(job_id, create_pending=1)
        metadata = {"job_id": job_id, "idempotency_key": fields["idempotency_key"][:500]}
        try:
            transcript = self.recall.create_transcript(
                recording_id, json.loads(fields["provider"]), metadata, key
            )
        except BadRequest as exc:
            # A definite answer: the next create uses a new Idempotency-Key (errors are replayed).
            seq = int(fields.get("create_seq", "0")) + 1
            self.jobs.update(job_id, create_seq=seq, create_pending=None)
            live = [t for t in self.recall.list_transcripts(recording_id) if _live(t)]
            if len(live) < TRANSCRIPT_LIMIT:
                raise
            if self.settings.LIMIT_POLICY == "fail":
                raise LimitReached(
                    f"recording {recording_id} already has {len(live)} transcripts"
                ) from exc
            self.jobs.transition(
                job_id, "creating", "creating", due_in=self.jobs.lease_s, step="remediate"
            )
            self.enqueue("remediate", job_id)
            return None
        except FinalError:
            self.jobs.update(job_id, create_pending=None)
            raise
        return transcript.id

    def _created(self, job_id: str, transcript_id: str) -> str:
        next_step = self.jobs.record_created(
            job_id, transcript_id, self.settings.RECALL_POLL_INITIAL_S
        )
        if next_step == "fetch":
            self.enqueue("fetch", job_id)
        return f"created {transcript_id}: {next_step}"

    def _find_ours(self, job_id: str, recording_id: str) -> str | None:
        """A transcript this job created whose answer we never saw, matched by metadata."""
        for transcript in self.recall.list_transcripts(recording_id):
            if (transcript.metadata or {}).get("job_id") == job_id and _live(transcript):
                log.info("job %s: adopting transcript %s found by listing", job_id, transcript.id)
                return transcript.id
        return None

    def _remediate(self, job_id: str, fields: dict[str, str]) -> str:
        recording_id = fields["recording_id"]
        lock = self.jobs.redis.lock(
            f"rt:lock:recording:{recording_id}", timeout=self.jobs.lease_s, blocking=False
        )
        if not lock.acquire():
            self.jobs.schedule(job_id, 1.0)
            return "recording busy"
        try:
            live = [t for t in self.recall.list_transcripts(recording_id) if _live(t)]
            freed = "a slot was free"
            if len(live) >= TRANSCRIPT_LIMIT:
                victim = self._pick_victim(live)
                if victim is None:
                    raise LimitReached(
                        f"recording {recording_id} has {len(live)} transcripts and policy "
                        f"{self.settings.LIMIT_POLICY} allows deleting none of them"
                    )
                if victim.status.code == "done":
                    self._archive(job_id, victim)
                self.recall.delete_transcript(victim.id)
                freed = f"deleted {victim.status.code} transcript {victim.id}"
                log.info("job %s: limit remediation %s", job_id, freed)
        finally:
            lock.release()
        self.jobs.transition(
            job_id, "creating", "creating", due_in=self.jobs.lease_s, step="create"
        )
        self.enqueue("create", job_id)
        return freed

    def _pick_victim(self, live: list[Transcript]) -> Transcript | None:
        """Failed transcripts first; then, under archive-oldest, the oldest done one not in use."""
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
        return any(
            owner and self.jobs.fields(str(owner)).get("state") in ACTIVE for owner in owners
        )

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

    def _await(self, job_id: str, fields: dict[str, str]) -> str:
        transcript_id = fields["transcript_id"]
        transcript = self.recall.retrieve_transcript(transcript_id)
        code = transcript.status.code
        if code == "done":
            self.jobs.transition(
                job_id, "awaiting", "fetching", due_in=self.jobs.lease_s, step="fetch", retries=0
            )
            self.enqueue("fetch", job_id)
            return "done: fetching"
        if code in ("failed", "deleted"):
            sub = transcript.status.sub_code or code
            self.jobs.fail(
                job_id,
                "transcript_failed",
                f"Recall reported the transcript {code} (sub_code: {sub})",
                sub_code=sub,
            )
            return f"failed: {sub}"
        started = float(fields.get("transcript_created_at") or fields["created_at"])
        left = started + self.settings.RECALL_TRANSCRIPT_TIMEOUT_S - time.time()
        if left <= 0:
            self.jobs.fail(
                job_id, "timeout", f"transcript {transcript_id} still {code} after the timeout"
            )
            return "failed: timeout"
        polls = int(fields.get("polls", "0")) + 1
        gap = min(self.settings.RECALL_POLL_INITIAL_S * 2**polls, self.settings.RECALL_POLL_MAX_S)
        self.jobs.schedule(job_id, min(gap, left + 0.01), polls=polls)
        return f"still {code}"

    def _fetch(self, job_id: str, fields: dict[str, str]) -> str:
        transcript = self.recall.retrieve_transcript(fields["transcript_id"])
        if transcript.status.code != "done":
            raise NotReady(f"transcript {transcript.id} is {transcript.status.code}, not done")
        data = self.recall.download(_download_url(transcript))
        recording_id = fields["recording_id"]
        self.store.save(recording_id, transcript.id, data, {**transcript.raw, "job_id": job_id})
        self.jobs.transition(job_id, "fetching", "done")
        return f"persisted {recording_id}/{transcript.id}"

    _STEPS: ClassVar[dict[str, Callable[[Pipeline, str, dict[str, str]], str]]] = {
        "create": _create,
        "remediate": _remediate,
        "await": _await,
        "fetch": _fetch,
    }

    # -- helpers ------------------------------------------------------------------------------

    def _retry_later(self, job_id: str, fields: dict[str, str], exc: RecallError) -> str:
        retries = int(fields.get("retries", "0"))
        if retries >= self.settings.MAX_STEP_RETRIES:
            self.jobs.fail(job_id, exc.code, f"gave up after {retries} retries: {exc.message}")
            return f"failed: {exc.code}"
        delay = compute_backoff(
            retries,
            self.settings.RETRY_BACKOFF_BASE_S,
            self.settings.RETRY_BACKOFF_MAX_S,
            getattr(exc, "retry_after", None),
        )
        self.jobs.schedule(job_id, delay, retries=retries + 1, last_error=exc.message)
        log.info("job %s: %s; retry %d in %.1fs", job_id, exc.message, retries + 1, delay)
        return f"retry in {delay:.1f}s"


class LimitReached(FinalError):
    code = "limit_reached"


class NotReady(RetryableError):
    code = "not_ready"


def _live(transcript: Transcript) -> bool:
    return transcript.status.code != "deleted"


def _download_url(transcript: Transcript) -> str:
    url = transcript.download_url
    if not url:
        raise NotReady(f"transcript {transcript.id} has no download_url yet")
    return url
