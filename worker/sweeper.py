"""The sweeper: a worker bootstep that, from a thread of its own, re-drives due jobs, sends on the
news of finished jobs (callbacks), re-sends unapplied events and forgets old jobs.

It wakes when the next job falls due (at most every SWEEP_INTERVAL_S), so a job coming back for a
reserved quota slot is sent on time, not up to an interval late; and when a step of this worker
finishes a job (`wake`), so its callbacks go out at once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import bootsteps

from tasks.callbacks.outbox import Outbox
from tasks.dispatch import Dispatcher
from tasks.inbox import Inbox
from tasks.jobs.store import JobStore
from tasks.recall.limiter import Limiter, release_unused
from tasks.reconcile import Periodic
from worker.deliveries import DeliveryPool

log = logging.getLogger(__name__)
SOONEST_S = 0.01


@dataclass
class Sweep:
    """What the sweeper drives, and how often."""

    dispatch: Dispatcher
    jobs: JobStore  # the store the dispatcher sends for: upgraded, pruned and repaired here
    inbox: Inbox
    outbox: Outbox
    pool: DeliveryPool | None
    limiters: dict[str, Limiter]  # each workspace's
    interval: float
    retention_s: float
    woken: threading.Event = field(default_factory=threading.Event)
    reconcile: Periodic | None = None  # the fleet's periodic reconciliation (RECONCILE_INTERVAL_S)

    def wake(self) -> None:
        """A job finished here: send its news now, not at the next tick."""
        self.woken.set()


def redrive_due(dispatch: Dispatcher) -> tuple[int, float | None]:
    """Send the step of every job whose due time has come (and whose message is not already on
    its way); returns how many, and the seconds until the next job falls due."""
    due, next_due = dispatch.jobs.claim_due()
    return dispatch.redrive(due), next_due


def sweeper_step(sweep: Sweep) -> type[bootsteps.StartStopStep]:
    """A bootstep running `sweep` until the worker stops."""

    class Sweeper(bootsteps.StartStopStep):
        requires = ("celery.worker.components:Pool",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self._stop = threading.Event()
            self._upgraded = False

        def start(self, parent: Any) -> None:
            threading.Thread(target=self._loop, name="sweeper", daemon=True).start()

        def stop(self, parent: Any) -> None:
            self._stop.set()
            sweep.woken.set()
            if sweep.pool is not None:
                sweep.pool.stop()
            if sweep.reconcile is not None:
                sweep.reconcile.stop()

        def _loop(self) -> None:
            pause, housekept = sweep.interval, 0.0
            duties = [self._upgrade, self._redrive, self._send_news, self._fill_deliveries]
            while not self._stop.is_set():
                sweep.woken.wait(pause)
                sweep.woken.clear()
                if self._stop.is_set():
                    return
                pause = sweep.interval
                chores = duties
                if time.monotonic() - housekept >= sweep.interval:
                    housekept = time.monotonic()
                    chores = [*duties, self._housekeep, self._reconcile]
                for chore in chores:  # each on its own: one failing never holds up the others
                    try:
                        pause = min(pause, chore() or pause)
                    except redis.RedisError as exc:  # Redis away: keep trying, all is durable
                        log.warning("sweeper: %s", exc)
                    except Exception:  # a bug must not stop the thread that re-drives every job
                        log.exception("sweeper: unexpected error in %s", chore.__name__)

        def _upgrade(self) -> None:
            """Jobs a previous release wrote, once per worker start."""
            if not self._upgraded:
                log.info("upgraded %d job(s)", sweep.jobs.upgrade())
                self._upgraded = True

        def _redrive(self) -> float | None:
            """Due jobs; returns how soon the next one falls due."""
            _, next_due = redrive_due(sweep.dispatch)
            return None if next_due is None else max(SOONEST_S, next_due)

        def _send_news(self) -> None:
            sweep.outbox.send_on()

        def _fill_deliveries(self) -> None:
            if sweep.pool is not None:
                sweep.pool.fill()

        def _housekeep(self) -> None:
            sweep.inbox.resend_due()
            sweep.jobs.prune_finished(sweep.retention_s)
            repaired = sweep.jobs.repair_after_rollout()
            if repaired is not None:
                log.info("repaired the listing indexes of %d job(s) after the rollout", repaired)
            release_unused(sweep.jobs.redis, sweep.limiters)

        def _reconcile(self) -> None:
            """Start a reconciliation when one is due (it runs in a thread of its own)."""
            if sweep.reconcile is not None:
                sweep.reconcile.tick()

    return Sweeper
