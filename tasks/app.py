"""Assembles the pipeline: the Celery app, its tasks, and the sweeper that re-drives due jobs."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import Celery, bootsteps

from tasks.events import parse_event
from tasks.jobs import JobStore, Step
from tasks.recall import RecallClient
from tasks.steps import Pipeline
from tasks.store import LocalStore
from worker.app import PIPELINE_QUEUE, create_celery
from worker.settings import Settings

log = logging.getLogger(__name__)

INGEST_TASK = "recall.ingest_event"
SUBMIT_TASK = "recall.submit_job"
STEP_TASKS: dict[Step, str] = {
    "create": "recall.create_transcript",
    "remediate": "recall.remediate_limit",
    "await": "recall.await_completion",
    "fetch": "recall.fetch_and_persist",
}


def redis_client(settings: Settings) -> redis.Redis:
    """The process's Redis client; short timeouts so an outage is noticed, not waited out."""
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
    )


def create_app(settings: Settings) -> tuple[Celery, Pipeline]:
    """The Celery app with the pipeline's tasks registered, and the pipeline they call."""
    app = create_celery(settings)
    jobs = JobStore(redis_client(settings), settings.JOB_STEP_LEASE_S)

    def enqueue(step: Step, job_id: str) -> None:
        app.send_task(STEP_TASKS[step], args=[job_id], queue=PIPELINE_QUEUE)

    pipeline = Pipeline(
        settings, jobs, RecallClient(settings), LocalStore(settings.TRANSCRIPTS_STORE), enqueue
    )

    @app.task(name=INGEST_TASK)
    def ingest_event(event: dict[str, Any]) -> str:
        return pipeline.ingest(parse_event(event))

    @app.task(name=SUBMIT_TASK)
    def submit_job(
        recording_id: str,
        provider: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        job_id, _ = pipeline.submit(recording_id, provider, metadata, idempotency_key)
        return job_id

    for step, name in STEP_TASKS.items():
        _register_step(app, pipeline, step, name)
    app.steps["worker"].add(_sweeper_step(pipeline, settings.SWEEP_INTERVAL_S))
    return app, pipeline


def _register_step(app: Celery, pipeline: Pipeline, step: Step, name: str) -> None:
    def run(job_id: str) -> str:
        return pipeline.run_step(step, job_id)

    run.__name__ = name.rsplit(".", 1)[-1]
    app.task(name=name)(run)


def _sweeper_step(pipeline: Pipeline, interval: float) -> type[bootsteps.StartStopStep]:
    """A worker bootstep running `pipeline.sweep` in a thread every `interval` seconds."""

    class Sweeper(bootsteps.StartStopStep):
        requires = ("celery.worker.components:Pool",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self._stop = threading.Event()
            self._thread: threading.Thread | None = None

        def start(self, parent: Any) -> None:
            self._thread = threading.Thread(target=self._loop, name="sweeper", daemon=True)
            self._thread.start()

        def stop(self, parent: Any) -> None:
            self._stop.set()

        def _loop(self) -> None:
            while not self._stop.wait(interval):
                try:
                    pipeline.sweep()
                except Exception as exc:  # Redis down: keep trying, the due-set is durable
                    log.warning("sweeper: %s", exc)

    return Sweeper
