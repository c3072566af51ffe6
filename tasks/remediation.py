"""Recall's limit of 10 transcripts per recording: a create refused at it lists the recording,
adopts a transcript of the job's own whose answer was lost, or frees a slot as LIMIT_POLICY says
(failed transcripts first, then under archive-oldest the oldest done one, persisted before it is
deleted), then creates again. Listings cut short by the quota go on from where they stopped."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, NamedTuple

from tasks.formats import beside
from tasks.jobs.errors import ErrorCode
from tasks.jobs.record import JobRecord, Listing
from tasks.jobs.states import Step
from tasks.outcomes import Outcome, Result
from tasks.recall.errors import BadRequest, FinalError, Throttled
from tasks.recall.models import Transcript
from tasks.steps import Run, Steps, about, download_url

log = logging.getLogger("tasks.pipeline")  # the pipeline's one log, whichever module writes

TRANSCRIPT_LIMIT = 10
LISTING_FRESH_S = 60  # a listing cut short by the quota goes on from its cursor within this


class CutShort(NamedTuple):
    """A listing the quota interrupted: what was seen, and the wait before it can go on."""

    listing: Listing
    until: Throttled


class Remediation(Steps):
    """The remediation step, and the listing the create step reads too."""

    def _ours(self, job: JobRecord, listing: list[dict[str, Any]]) -> str | None:
        """A transcript this job created whose answer we never saw, matched by metadata."""
        for transcript in _live(listing):
            if transcript.job_id == job.id:
                log.info(
                    "job %s: adopting transcript %s found by listing",
                    job.id,
                    transcript.id,
                    extra=about(job, transcript_id=transcript.id),
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
                extra=about(job, step=Step.REMEDIATE),
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
                run.recall.download(download_url(fresh), staged)
                meta = {**fresh.raw, "job_id": owner, "archived_by_job_id": job.id}
                formats = beside(staged, self.settings.transcript_formats)
                self.store.save(recording_id, transcript.id, staged, meta, formats)
        if owner is None or self.jobs.record(owner) is None:
            return True
        return self.jobs.record_archive(owner, transcript.id)  # a replica knows it, or no delete

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


class LimitReached(FinalError):
    code = ErrorCode.LIMIT_REACHED


def _live(listing: list[dict[str, Any]]) -> list[Transcript]:
    """The listed transcripts that count towards the limit."""
    transcripts = [Transcript.from_api(raw) for raw in listing]
    return [t for t in transcripts if t.status.code != "deleted"]
