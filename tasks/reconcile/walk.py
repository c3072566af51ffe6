"""One reconciliation: the recordings Recall finished in a window, each classified, and the job
its `recording.done` would have started submitted for each one no webhook brought.

A walk reads List Recordings (`status_code=done` and the window's `created_at` bounds) to the
end of its cursor pages (their order is undocumented, so it never stops early). A walk that keeps
a high-water mark (the periodic run, periodic.py) first lists the recordings still `processing`,
then `paused`, and only then the `done` ones: the oldest of the pending ones, and of the finished
ones left to their webhook, is where the next run must look again. Pending first, because a
recording only moves on towards `done`: one pending at its listing holds the mark, and one that
finished since is in the `done` listing after it (done first, a recording finishing between the
listings was in neither, and the mark passed it). Only one that resumes from `paused` between
the two pending listings and is still not done at the last is missed by a run.
After each page the walk's position (phase, cursor, counts) is saved, so a run cut short
resumes at that page; a page handled twice submits nothing twice, since a recording's automatic
job is found by the submit itself (tasks/jobs/transitions.lua), whatever its provider.
A walk waits for its slots of the `recordings` quota family (its own: it never takes the
pipeline's) and waits out Recall's 429s; neither is a failure.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import NamedTuple, cast

from tasks import keys
from tasks.dispatch import Dispatcher
from tasks.jobs.record import fields
from tasks.jobs.views import Source
from tasks.metrics import Metrics
from tasks.names import DEFAULT
from tasks.recall.client import RecallClient
from tasks.recall.errors import (
    BadRequest,
    Malformed,
    NotFound,
    RateLimited,
    Rejected,
    RetryableError,
    Throttled,
)
from tasks.recall.limiter import Quota
from tasks.recall.models import Recording

log = logging.getLogger(__name__)

SOURCE = Source.RECONCILE  # the jobs reconciliation starts (also in their metadata, as before)
PHASES = ("processing", "paused", "done")  # `done` is reconciled; the others only hold the mark
DONE = PHASES.index("done")
UNAVAILABLE_TRIES = 5  # Recall down or unreachable this many times in a row ends the run
UNAVAILABLE_WAIT_S = 5.0
MALFORMED_TRIES = 3  # a page of the wrong shape this many times in a row is skipped
MAX_PAGES = 20_000  # pages in one walk (a 3-day backfill of 10,000 recordings reads ~1,000)
SLACK_S = 1.0  # a recording's created_at may be this far outside the window it was listed in
SKIPPED = "skipped"  # in Walk.counts: items of List Recordings that were not recordings (logged)


class Outcome(StrEnum):
    """What reconciliation did with one finished recording."""

    SUBMITTED = "submitted"  # no job here: the one its `recording.done` would have started
    KNOWN = "known"  # a job exists here for it (any source)
    TRANSCRIBED = "transcribed"  # Recall holds a transcript of it (RECONCILE_SKIP_TRANSCRIBED)
    UNFINISHED = "unfinished"  # finished less than RECONCILE_GRACE_S ago: left to its webhook


class Stopped(Exception):
    """The walk must stop where it is (its lease was lost, or the worker stops)."""


@dataclass
class Walk:
    """Where a walk of one window stands (Unix times); saved after every page."""

    after: float
    before: float
    phase: int = 0  # index in PHASES
    order: str = ",".join(PHASES)  # the PHASES `phase` counts in (a walk saved before: restart)
    cursor: str | None = None  # the next page of the phase (None: its first)
    pages: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    oldest_pending: float | None = None  # created_at of the oldest recording not reconciled yet
    started_at: float | None = None  # Redis's clock; a walk without `id`: its own jobs since
    id: str | None = None  # in its jobs' metadata (`walk`): which jobs this walk submitted
    held: float | None = None  # the mark this window started from: a listing given up holds it

    def dump(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def load(cls, text: str | bytes | None) -> Walk | None:
        """The walk `dump` wrote; None for nothing or anything unreadable (then a new walk)."""
        if not text:
            return None
        try:
            fields = json.loads(text)
            if fields.get("order") != ",".join(PHASES):  # saved with the old order: from the start
                fields.update(order=",".join(PHASES), phase=0, cursor=None)
            return cls(**fields)
        except (ValueError, TypeError, AttributeError):
            return None

    def count(self, outcome: Outcome) -> int:
        return self.counts.get(outcome, 0)

    def summary(self) -> str:
        return ", ".join(f"{outcome} {self.count(outcome)}" for outcome in Outcome)


Classified = list[tuple[Recording, Outcome]]


@dataclass
class Reconciliation:
    """Reconciles one workspace with Recall, a window at a time."""

    dispatch: Dispatcher
    recall: RecallClient
    workspace: str
    grace_s: float
    skip_transcribed: bool
    metrics: Metrics | None = None
    dry_run: bool = False
    wait: Callable[[float], None] = time.sleep  # may raise Stopped

    def walk(
        self,
        walk: Walk,
        *,
        pending: bool = False,
        save: Callable[[Walk], None] | None = None,
        progress: Callable[[Walk, Classified], None] | None = None,
    ) -> Walk:
        """Go through the window from where `walk` stands to its end; with `pending`, through
        the recordings still processing too (for the mark). `save` after every page."""
        if not pending and walk.phase < DONE:
            walk.phase, walk.cursor = DONE, None
        quota, failures = Quota(), 0
        restarted: set[int] = set()  # the phases whose listing began again in this call
        seen: dict[int, set[str | None]] = {}  # each phase's cursors read in this call
        try:
            while walk.phase < len(PHASES):
                try:
                    pages = self.recall.list_recordings(
                        PHASES[walk.phase],
                        _datetime(walk.after),
                        _datetime(walk.before),
                        walk.cursor,
                        quota,
                    )
                    read = seen.setdefault(walk.phase, {walk.cursor})
                    for recordings, next_page, skipped in pages:
                        failures = 0
                        if skipped:
                            walk.counts[SKIPPED] = walk.counts.get(SKIPPED, 0) + skipped
                        classified = self._page(walk, recordings)
                        looped = next_page is not None and next_page in read
                        read.add(next_page)
                        walk.cursor, walk.pages = next_page, walk.pages + 1
                        if looped:  # Recall's next link leads back: the rest cannot be read
                            self._give_up_phase(walk, save, "a next link to a page already read")
                            break
                        if walk.pages >= MAX_PAGES:
                            self._give_up_phase(walk, save, f"{MAX_PAGES} pages", rest=True)
                            break
                        if next_page is None:
                            walk.phase += 1
                        if save is not None:
                            save(walk)
                        if progress is not None:
                            progress(walk, classified)
                except Throttled as exc:  # our own pacing: the slot reserved for the next call
                    quota.ticket = exc.ticket
                    self.wait(exc.retry_after or 0.0)
                except RateLimited as exc:  # Recall's 429: the limiter paused the whole fleet
                    self.wait(exc.retry_after or 1.0)
                except Malformed as exc:
                    failures += 1
                    if failures < MALFORMED_TRIES:
                        log.warning("reconcile %s: %s; trying again", self.workspace, exc.message)
                        self.wait(UNAVAILABLE_WAIT_S * failures)
                        continue
                    failures = 0
                    self._give_up_phase(walk, save, f"{exc.message}, {MALFORMED_TRIES} times")
                except (BadRequest, Rejected, NotFound) as exc:  # a cursor refused or elsewhere
                    if walk.cursor is not None and walk.phase not in restarted:
                        restarted.add(walk.phase)  # saved before Recall forgot it, or its URL
                        log.warning(  # changed: the listing starts again (submits nothing twice)
                            "reconcile %s: %s; the %s listing starts again from its first page",
                            self.workspace,
                            exc.message,
                            PHASES[walk.phase],
                        )
                        walk.cursor = None
                        seen.pop(walk.phase, None)
                        continue
                    self._give_up_phase(walk, save, exc.message)
                except RetryableError as exc:
                    failures += 1
                    if failures >= UNAVAILABLE_TRIES:
                        raise
                    log.warning("reconcile %s: %s; trying again", self.workspace, exc.message)
                    self.wait(UNAVAILABLE_WAIT_S * failures)
        finally:
            self.recall.release(quota)  # a slot reserved for a call the walk no longer makes
        if walk.counts.get(SKIPPED):
            log.warning(
                "reconcile %s: %d item(s) of List Recordings were left out (not recordings, or "
                "not the ones listed; each logged)",
                self.workspace,
                walk.counts[SKIPPED],
            )
        return walk

    def _give_up_phase(
        self, walk: Walk, save: Callable[[Walk], None] | None, why: str, *, rest: bool = False
    ) -> None:
        """Go on with the next phase (with `rest`, end the walk); the recordings not read hold
        the mark where this window started from (the next run reads the window again, and one
        given up run after run does not move the mark back each time)."""
        log.error(
            "reconcile %s: %s: the rest of the %s listing%s is skipped; the mark stays at the "
            "window's start",
            self.workspace,
            why,
            PHASES[walk.phase],
            " and the listings after it" if rest else "",
        )
        held = walk.after if walk.held is None else walk.held
        pending = walk.oldest_pending
        walk.oldest_pending = held if pending is None else min(pending, held)
        walk.phase, walk.cursor = len(PHASES) if rest else walk.phase + 1, None
        if save is not None:
            save(walk)

    def _page(self, walk: Walk, recordings: list[Recording]) -> Classified:
        recordings = self._listed(walk, recordings)
        if PHASES[walk.phase] != "done":
            for recording in recordings:
                walk.oldest_pending = _oldest(walk.oldest_pending, recording)
            return []
        classified = self.classify(recordings, walk)
        submitted = []
        for recording, outcome in classified:
            walk.counts[outcome] = walk.count(outcome) + 1
            if outcome == Outcome.UNFINISHED or (
                outcome == Outcome.TRANSCRIBED and recording.transcript_pending
            ):  # looked at again next run: it may end without a transcript
                walk.oldest_pending = _oldest(walk.oldest_pending, recording)
            elif outcome == Outcome.SUBMITTED:
                submitted.append(recording.id)
        if submitted and not self.dry_run:
            log.warning(
                "reconcile %s: no recording.done came for %d finished recording(s); submitted "
                "their jobs: %s",
                self.workspace,
                len(submitted),
                ", ".join(submitted),
                extra={"outcome": Outcome.SUBMITTED},
            )
        if self.metrics is not None and not self.dry_run:
            for outcome in Outcome:
                found = sum(1 for _, o in classified if o == outcome)
                if found:
                    self.metrics.reconciled(outcome, found)
        return classified

    def _listed(self, walk: Walk, recordings: list[Recording]) -> list[Recording]:
        """The recordings the listing asked for: created in the window, and in the `done`
        listing, done (an answer that ignores its filters never gets a recording a job, nor
        drags the mark back to a recording of another window); the others logged and counted."""
        phase, kept = PHASES[walk.phase], []
        for recording in recordings:
            created = recording.created_at.timestamp() if recording.created_at else None
            status = recording.status.code if recording.status else None
            if created is None or not walk.after - SLACK_S <= created <= walk.before + SLACK_S:
                why = f"created at {recording.created_at}, outside the window"
            elif phase == "done" and status != phase:
                why = f"status {status!r} in the done listing"
            else:
                kept.append(recording)
                continue
            walk.counts[SKIPPED] = walk.counts.get(SKIPPED, 0) + 1
            log.warning(
                "reconcile %s: recording %s left out: %s", self.workspace, recording.id, why
            )
        return kept

    def classify(self, recordings: list[Recording], walk: Walk | None = None) -> Classified:
        """Each finished recording's outcome; those `submitted` have their job (unless dry).
        A job `walk` submitted before it was cut short is still `submitted`, so that it is
        counted and logged when its page is handled again (another walk's, a CLI run's while
        this one ran, is `known`)."""
        jobs = self.dispatch.jobs
        here = self._jobs_here(recordings)
        now = jobs.now()
        out: Classified = []
        for recording in recordings:
            finished = recording.finished_at
            found = here.get(recording.id)
            if found:
                ours = walk is not None and any(_submitted_by(walk, job) for job in found)
                outcome = Outcome.SUBMITTED if ours else Outcome.KNOWN
            elif self.skip_transcribed and recording.transcribed:
                outcome = Outcome.TRANSCRIBED
            elif finished is not None and now - finished.timestamp() < self.grace_s:
                outcome = Outcome.UNFINISHED
            elif self.dry_run:
                outcome = Outcome.SUBMITTED
            else:
                submitted = self._submit(recording, walk.id if walk is not None else None)
                outcome = Outcome.SUBMITTED if submitted else Outcome.KNOWN
            out.append((recording, outcome))
        return out

    def _jobs_here(self, recordings: list[Recording]) -> dict[str, list[_JobSeen]]:
        """Each recording's jobs in this workspace (any source)."""
        redis = self.dispatch.jobs.redis
        pipe = redis.pipeline(transaction=False)
        for recording in recordings:
            pipe.zrange(keys.recording(recording.id), 0, -1)  # the recording's jobs, everywhere
        listed = cast(list[list[bytes]], pipe.execute()) if recordings else []
        pairs = [(r.id, j.decode()) for r, ids in zip(recordings, listed, strict=True) for j in ids]
        for _, job_id in pairs:
            pipe.hgetall(keys.job(job_id))  # whole: a finished job's metadata may be in parts
        found = cast(list[dict[bytes, bytes]], pipe.execute()) if pairs else []
        here: dict[str, list[_JobSeen]] = {}
        for (recording_id, _), raw in zip(pairs, found, strict=True):
            job = fields(raw)
            if "created_at" not in job or job.get("workspace", DEFAULT) != self.workspace:
                continue  # gone, or another workspace's
            tag = _walk_tag(job.get("metadata"))
            here.setdefault(recording_id, []).append(
                _JobSeen(job.get("source", ""), float(job["created_at"]), tag)
            )
        return here

    def _submit(self, recording: Recording, walk_id: str | None) -> bool:
        """The job `recording.done` would start: no key (so the derived one), the workspace's
        provider; False when one exists (a webhook came meanwhile)."""
        metadata = {"source": str(SOURCE)} | ({"walk": walk_id} if walk_id else {})
        _, created = self.dispatch.submit(
            recording.id, None, metadata, None, workspace=self.workspace, source=SOURCE
        )
        return created


class _JobSeen(NamedTuple):
    source: str
    created_at: float
    walk: str | None  # the walk that submitted it (its metadata's `walk`)


def _submitted_by(walk: Walk, job: _JobSeen) -> bool:
    """The job is one `walk` submitted: tagged with its id; a walk saved before walks had ids
    takes every reconciliation job created since it began."""
    if walk.id is not None:
        return job.walk == walk.id
    return walk.started_at is not None and (
        job.source == SOURCE and job.created_at >= walk.started_at
    )


def _walk_tag(metadata: str | None) -> str | None:
    try:
        tag = json.loads(metadata or "{}").get("walk")
    except (ValueError, AttributeError):
        return None
    return tag if isinstance(tag, str) else None


def _oldest(current: float | None, recording: Recording) -> float | None:
    if recording.created_at is None:
        return current
    created = recording.created_at.timestamp()
    return created if current is None else min(current, created)


def _datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
