"""The fleet's periodic reconciliation: every RECONCILE_INTERVAL_S, one worker per workspace.

Each workspace's reconciliation is held by one worker at a time: a lease in Redis
(`rt:reconcile:{ws}:lease`, RECONCILE_LEASE_S), extended while the walk runs and while it waits for
quota, given back when it ends. What the fleet knows of a workspace lives beside it
(`rt:reconcile:{ws}`): the high-water mark (recordings created before it were reconciled), when the
last run began and ended, and the walk in progress (its window, phase, cursor and counts, saved
after every page). A run starts from the mark minus an hour of overlap (the first looks back
RECONCILE_LOOKBACK_S) up to now; a worker that dies, stops or loses Redis mid-walk leaves the walk
in Redis, and whichever worker takes the lease next goes on from the page saved. The new mark is the
window's end, held back to the oldest recording still processing or left to its webhook (so a long
meeting is looked at again once it finishes), but never more than RECONCILE_LOOKBACK_S (a recording
stuck in processing holds no mark for ever).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import cast

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from tasks import keys
from tasks.reconcile.walk import Reconciliation, Stopped, Walk

log = logging.getLogger(__name__)

OVERLAP_S = 3600.0  # each run looks again at the last hour before the previous run's mark
CHECK_EVERY_S = 5.0  # how often a worker's sweeper looks whether a run is due
FAILED_PAUSE_S = 300.0  # after a run failed (Recall or Redis away), this worker waits this long


class Periodic:
    """Runs each workspace's reconciliation when due, in a thread of its own (a walk waits for
    its quota for minutes: never in the sweeper's thread, never in a worker slot)."""

    def __init__(
        self,
        client: redis.Redis,
        reconciliations: Mapping[str, Reconciliation],
        interval_s: float,
        lookback_s: float,
        lease_s: float,
    ) -> None:
        self._redis = client
        self._reconciliations = reconciliations
        self.interval_s = interval_s
        self.lookback_s = lookback_s
        self.lease_s = lease_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._checked = -CHECK_EVERY_S
        self._lease: Lock | None = None  # the lease of the run in progress
        for reconciliation in reconciliations.values():
            reconciliation.wait = self._wait

    # -- from the sweeper ----------------------------------------------------------------------

    def tick(self) -> None:
        """Start a run in the background when a workspace is due and none runs here."""
        if self._thread is not None and self._thread.is_alive():
            return
        if time.monotonic() - self._checked < CHECK_EVERY_S:
            return
        self._checked = time.monotonic()
        if any(self.due(workspace) for workspace in self._reconciliations):
            self._thread = threading.Thread(target=self.run_due, name="reconcile", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop a walk where it stands (its position is saved) and give its lease back."""
        self._stop.set()

    # -- the runs ------------------------------------------------------------------------------

    def due(self, workspace: str) -> bool:
        """A walk waits to be resumed, or the last run ended an interval ago (or never ran)."""
        walk, ended = self._redis.hmget(keys.reconcile(workspace), ["walk", "ended_at"])
        if walk:
            return True
        return ended is None or self._now() - float(cast(bytes, ended)) >= self.interval_s

    def run_due(self) -> int:
        """Reconcile every due workspace whose lease this worker gets; how many it ran."""
        ran = 0
        for workspace in self._reconciliations:
            if self._stop.is_set():
                break
            try:
                ran += self.run(workspace)
            except Stopped:
                log.info("reconcile %s: stopped; the next run goes on from here", workspace)
            except Exception:  # Recall or Redis away, or a bug: the walk saved stays for later
                log.exception("reconcile %s: run failed; the next one goes on from here", workspace)
                self._checked = time.monotonic() + min(self.interval_s, FAILED_PAUSE_S)
        return ran

    def run(self, workspace: str) -> bool:
        """One run for the workspace, if due and its lease is free; True if it ran to the end."""
        lease = Lock(
            self._redis,
            keys.reconcile_lease(workspace),
            timeout=self.lease_s,
            blocking=False,
            thread_local=False,
        )
        if not self.due(workspace) or not lease.acquire():
            return False
        self._lease = lease
        try:
            if not self.due(workspace):  # another worker finished a run meanwhile
                return False
            return self._walk(workspace)
        finally:
            self._lease = None
            try:
                lease.release()
            except LockError:
                log.warning("reconcile %s: the lease was lost before the run ended", workspace)

    def _walk(self, workspace: str) -> bool:
        key = keys.reconcile(workspace)
        raw_walk, raw_mark = self._redis.hmget(key, ["walk", "mark"])
        walk = Walk.load(cast(bytes | None, raw_walk))
        if walk is None:
            now = self._now()
            mark = float(cast(bytes, raw_mark)) if raw_mark else None
            after = now - self.lookback_s if mark is None else mark - OVERLAP_S
            walk = Walk(after=after, before=now, started_at=now, id=uuid.uuid4().hex, held=mark)
            self._redis.hset(key, "walk", walk.dump())
        else:
            log.info("reconcile %s: resuming a walk at page %d", workspace, walk.pages + 1)
        walk = self._reconciliations[workspace].walk(walk, pending=True, save=self._saver(key))
        self._held()  # the mark is written only by the lease's holder
        pipe = self._redis.pipeline()
        ended = self._now()
        started = walk.started_at or ended
        pipe.hset(
            key, mapping={"mark": self.mark_after(walk), "started_at": started, "ended_at": ended}
        )
        pipe.hdel(key, "walk")
        pipe.execute()
        log.info("reconcile %s: %s (%d pages)", workspace, walk.summary(), walk.pages)
        return True

    def mark_after(self, walk: Walk) -> float:
        """The window's end, held back to the oldest recording not reconciled yet, but by no
        more than the lookback."""
        if walk.oldest_pending is None:
            return walk.before
        return max(min(walk.before, walk.oldest_pending), walk.before - self.lookback_s)

    def _saver(self, key: str) -> Callable[[Walk], None]:
        def save(walk: Walk) -> None:
            self._held()
            self._redis.hset(key, "walk", walk.dump())

        return save

    def _held(self) -> None:
        """Extend the lease; `Stopped` when it was lost (another worker may have the walk now)
        or the worker stops."""
        if self._stop.is_set():
            raise Stopped("the worker stops")
        if self._lease is not None:
            try:
                self._lease.reacquire()
            except LockError:
                raise Stopped("the lease was lost") from None

    def _wait(self, seconds: float) -> None:
        """Wait for a quota slot or a 429's end, keeping the lease."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._held()
            self._stop.wait(min(left, self.lease_s / 3))
        self._held()

    def _now(self) -> float:
        seconds, micros = self._redis.time()
        return seconds + micros / 1_000_000
