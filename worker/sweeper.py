"""The sweeper: a worker bootstep that re-drives due jobs and unapplied events from a thread."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import bootsteps

from tasks.inbox import Inbox
from tasks.jobs import JobStore
from tasks.pipeline import Enqueue

log = logging.getLogger(__name__)


def redrive_due(jobs: JobStore, enqueue: Enqueue) -> int:
    """Enqueue the step of every job whose due time has come; returns how many."""
    due = jobs.claim_due()
    for job_id, step, recording_id in due:
        enqueue(step, job_id, recording_id)
    return len(due)


def sweeper_step(
    jobs: JobStore, enqueue: Enqueue, inbox: Inbox, interval: float, retention_s: float
) -> type[bootsteps.StartStopStep]:
    """A bootstep re-driving due jobs, re-sending unapplied events and forgetting finished jobs
    past their retention, every `interval` seconds."""

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
            while not self._stop.wait(interval):
                try:
                    redrive_due(jobs, enqueue)
                    inbox.resend_due()
                    jobs.prune_finished(retention_s)
                except redis.RedisError as exc:  # Redis away: keep trying, the due-sets are durable
                    log.warning("sweeper: %s", exc)
                except Exception:  # a bug must not stop the thread that re-drives every job
                    log.exception("sweeper: unexpected error")

    return Sweeper
