"""Workspaces share a worker process's threads fairly: a workspace whose Recall hangs (every call
waits out RECALL_HTTP_TIMEOUT_S) must not hold the threads another workspace's jobs need.

Work-conserving: a workspace's *share* (WORKSPACE_THREADS, or the threads divided by the
workspaces) caps its steps in flight only while another workspace wants threads in this
process (a step of it in flight, or one asked within `QUIET_S`). A workspace alone borrows the
idle threads, all but one: the spare lets a workspace that comes back start at once and so be
seen, while the borrowed threads return as their steps end. A step refused a thread is not run
but deferred (tasks/pipeline.py): its job stays in the due-set and comes back shortly.
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
        self._mutex = threading.Lock()

    @property
    def share(self) -> int:
        return self.configured or max(1, self.threads // max(1, len(self.workspaces)))

    @contextmanager
    def slot(self, workspace: str) -> Iterator[bool]:
        """A thread for a step of `workspace` for the block; yields False, holding none, when
        the workspace is at its share and another wants threads (or only the spare is left)."""
        if not self._take(workspace):
            yield False
            return
        try:
            yield True
        finally:
            with self._mutex:
                self._running[workspace] -= 1

    def running(self, workspace: str) -> int:
        """Steps of `workspace` in flight in this process."""
        with self._mutex:
            return self._running[workspace]

    def _take(self, workspace: str) -> bool:
        with self._mutex:
            now = self._clock()
            self._asked[workspace] = now
            mine = self._running[workspace]
            borrow = mine < self.threads - 1 and not self._contended(workspace, now)
            if mine < self.share or borrow:
                self._running[workspace] += 1
                return True
            return False

    def _contended(self, workspace: str, now: float) -> bool:
        """Whether another workspace wants threads here (called with the mutex held)."""
        return any(
            other != workspace and (self._running[other] > 0 or now - asked < QUIET_S)
            for other, asked in self._asked.items()
        )
