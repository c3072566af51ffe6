"""Workspaces share a worker process's threads fairly: a workspace whose Recall hangs (every call
waits out RECALL_HTTP_TIMEOUT_S) must not hold the threads another workspace's jobs need.

Each workspace has a *share* (WORKSPACE_THREADS, or the threads divided by the workspaces) that
is kept for it while it wants threads in this process (a step of it in flight, or one asked
within `QUIET_S`); the rest may be borrowed: a healthy workspace alone uses every thread
(work-conserving). A workspace whose steps fail (a timeout, a 5xx: the step retries; a 429 is a
wait, not a failure) holds fewer, alone or not: its limit halves at each such step, down to one
thread, and grows by one at each step that does not, until it is healthy again (additive
increase, multiplicative decrease). So a hung region soon holds one thread: even when its backlog
fills the queue before another workspace's steps, its steps are deferred until those come. A
workspace new to a worker busy with others starts at one thread, until a step of it succeeds.
A step refused a thread is not run but deferred (tasks/steps.py): its job stays in the due-set
and comes back a second later.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

# A workspace counts as wanting threads this long after its last step asked for one: longer
# than the gaps in a busy workspace's steady flow of steps (a deferral, a sweep).
QUIET_S = 10.0


class Shares:
    """Each workspace's steps in flight in this process, held to its share while contended."""

    def __init__(
        self,
        workspaces: Iterable[str],
        threads: int,
        configured: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workspaces = frozenset(workspaces)
        self.threads = threads  # the worker's concurrency, set once the worker knows it
        self.configured = configured  # WORKSPACE_THREADS; 0: a fair share
        self._clock = clock
        self._running: Counter[str] = Counter()
        self._asked: dict[str, float] = {}
        # Threads a workspace may hold while its steps fail or until one succeeded; a healthy
        # one has no limit.
        self._limits: dict[str, float] = {}
        self._healthy: set[str] = set()
        self._mutex = threading.Lock()

    @property
    def share(self) -> int:
        return self.configured or max(1, self.threads // max(1, len(self.workspaces)))

    @contextmanager
    def slot(self, workspace: str) -> Iterator[bool]:
        """A thread for a step of `workspace` for the block; yields False, holding none, when
        the workspace is at its limit, or past its share with the rest held or kept by others."""
        if not self._take(workspace):
            yield False
            return
        try:
            yield True
        finally:
            with self._mutex:
                self._running[workspace] -= 1

    def ended(self, workspace: str, failed: bool) -> None:
        """A step of `workspace` ended: `failed` (Recall timed out or erred) halves its limit
        (from all the threads if it had none), anything else raises it by one, and a limit that
        reaches all the threads goes: the workspace is healthy."""
        with self._mutex:
            limit = self._limits.get(workspace)
            if failed:
                self._limits[workspace] = max(1.0, (limit or self.threads) / 2)
                self._healthy.discard(workspace)
            elif limit is None or limit + 1 >= self.threads:
                self._limits.pop(workspace, None)
                self._healthy.add(workspace)
            else:
                self._limits[workspace] = limit + 1

    def running(self, workspace: str) -> int:
        """Steps of `workspace` in flight in this process."""
        with self._mutex:
            return self._running[workspace]

    def _take(self, workspace: str) -> bool:
        with self._mutex:
            now = self._clock()
            self._asked[workspace] = now
            if self._running[workspace] >= self._cap(workspace, now):
                return False
            self._running[workspace] += 1
            return True

    def _cap(self, workspace: str, now: float) -> int:
        """How many steps `workspace` may have in flight now: its limit, and within it its
        share or all that the others do not hold or keep (called with the mutex held)."""
        kept = sum(self._kept(other, now) for other in self._asked if other != workspace)
        if kept == 0:  # nobody else wants threads here: all of them, unless its steps fail
            return max(1, int(self._limits.get(workspace, self.threads)))
        return max(1, min(self._limit(workspace), max(self.share, self.threads - kept)))

    def _kept(self, workspace: str, now: float) -> int:
        """The threads `workspace` holds, or keeps for itself while it wants threads: up to
        its share, within its limit."""
        running = self._running[workspace]
        if running == 0 and now - self._asked[workspace] >= QUIET_S:
            return 0
        return max(running, min(self.share, self._limit(workspace)))

    def _limit(self, workspace: str) -> int:
        """Its limit; all the threads once healthy; one for a workspace not yet seen to succeed."""
        if workspace in self._healthy:
            return self.threads
        return int(self._limits.get(workspace, 1.0))
