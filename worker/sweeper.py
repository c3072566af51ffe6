"""The sweeper: a worker bootstep that re-drives due jobs and unapplied events from a thread.

It wakes when the next job falls due (at most every SWEEP_INTERVAL_S), so a job coming back for a
reserved quota slot is sent on time, not up to an interval late.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import bootsteps

from tasks.dispatch import Dispatcher
from tasks.inbox import Inbox

log = logging.getLogger(__name__)
SOONEST_S = 0.01


def redrive_due(dispatch: Dispatcher) -> tuple[int, float | None]:
    """Send the step of every job whose due time has come (and whose message is not already on
    its way); returns how many, and the seconds until the next job falls due."""
    due, next_due = dispatch.jobs.claim_due()
    return dispatch.redrive(due), next_due


def sweeper_step(
    dispatch: Dispatcher, inbox: Inbox, interval: float, retention_s: float
) -> type[bootsteps.StartStopStep]:
    """A bootstep re-driving due jobs, re-sending unapplied events and forgetting finished jobs
    past their retention."""

    class Sweeper(bootsteps.StartStopStep):
        requires = ("celery.worker.components:Pool",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self._stop = threading.Event()

        def start(self, parent: Any) -> None:
            threading.Thread(target=self._loop, name="sweeper", daemon=True).start()

        def stop(self, parent: Any) -> None:
            self._stop.set()

        def _loop(self) -> None:
            pause, housekept = interval, 0.0
            while not self._stop.wait(pause):
                pause = interval
                try:
                    _, next_due = redrive_due(dispatch)
                    if next_due is not None:
                        pause = min(interval, max(SOONEST_S, next_due))
                    if time.monotonic() - housekept >= interval:
                        housekept = time.monotonic()
                        inbox.resend_due()
                        dispatch.jobs.prune_finished(retention_s)
                except redis.RedisError as exc:  # Redis away: keep trying, the due-sets are durable
                    log.warning("sweeper: %s", exc)
                except Exception:  # a bug must not stop the thread that re-drives every job
                    log.exception("sweeper: unexpected error")

    return Sweeper
