"""Leases: a running step holds its job's lock, and a heartbeat keeps the lock alive while it runs.

The lease is short (JOB_STEP_LEASE_S) so a job whose worker died resumes elsewhere within about a
lease; the heartbeat (one thread per process, every third of a lease) extends the locks of the
steps still running, so a long step (a slow download) never gets a second runner. The sweeper
leaves a job alone while its lock is held (tasks/jobs/jobs.lua, `claim`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.exceptions import LockError, LockNotOwnedError
from redis.lock import Lock

log = logging.getLogger(__name__)


class Leases:
    """Takes, keeps alive and gives back the locks of running steps."""

    def __init__(self, client: redis.Redis, lease_s: float) -> None:
        self._redis = client
        self.lease_s = lease_s
        self._held: set[Lock] = set()
        self._mutex = threading.Lock()
        self._beating = False

    @contextmanager
    def hold(self, key: str, wait_s: float | None) -> Iterator[bool]:
        """Hold the lock `key` for the block (waiting up to `wait_s`; None: not at all); yields
        False, and holds nothing, when another holder has it."""
        lock = Lock(
            self._redis,
            key,
            timeout=self.lease_s,
            blocking=wait_s is not None,
            blocking_timeout=wait_s,
            thread_local=False,  # the heartbeat thread extends it
        )
        if not lock.acquire():
            yield False
            return
        with self._mutex:
            self._held.add(lock)
            if not self._beating:
                self._beating = True
                threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True).start()
        try:
            yield True
        finally:
            with self._mutex:
                self._held.discard(lock)
            try:
                lock.release()
            except LockError:  # lost: Redis restarted without it, or the process stalled a lease
                log.warning("lease %s was lost before its step ended", key)

    def _beat(self) -> None:
        while True:
            threading.Event().wait(self.lease_s / 3)
            with self._mutex:
                held = list(self._held)
            for lock in held:
                try:
                    lock.reacquire()
                except LockNotOwnedError:
                    log.warning("lease %r was lost while its step ran", lock.name)
                except redis.RedisError as exc:  # Redis away: try again at the next beat
                    log.warning("lease heartbeat: %s", exc)
