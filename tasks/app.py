"""Assembles the pipeline: the Celery app, its tasks, and the sweeper that re-drives due jobs."""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery
from celery.exceptions import Reject
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from tasks.bootsteps import sweeper_step
from tasks.events import parse_event
from tasks.inbox import INGEST_TASK, Inbox
from tasks.jobs import JobStore, Step
from tasks.recall import RecallClient
from tasks.steps import Pipeline
from tasks.store import LocalStore
from worker.app import PIPELINE_QUEUE, create_celery
from worker.messages import task_message
from worker.settings import Settings

SUBMIT_TASK = "recall.submit_job"
STEP_TASKS: dict[Step, str] = {
    "create": "recall.create_transcript",
    "remediate": "recall.remediate_limit",
    "await": "recall.await_completion",
    "fetch": "recall.fetch_and_persist",
}


def redis_client(settings: Settings, patient: bool = False) -> redis.Redis:
    """A Redis client with short timeouts; a `patient` one rides out a restart (~20 s)."""
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), 12 if patient else 0)
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def create_app(settings: Settings) -> tuple[Celery, Pipeline]:
    """The Celery app with the pipeline's tasks registered, and the pipeline they call."""
    app = create_celery(settings)
    jobs = JobStore(redis_client(settings, patient=True), settings.JOB_STEP_LEASE_S)

    def enqueue(step: Step, job_id: str) -> None:
        jobs.redis.lpush(PIPELINE_QUEUE, task_message(STEP_TASKS[step], [job_id], PIPELINE_QUEUE))

    inbox = Inbox(jobs.redis, settings.JOB_STEP_LEASE_S, settings.WEBHOOK_DEDUPE_TTL_S)
    pipeline = Pipeline(
        settings, jobs, RecallClient(settings), LocalStore(settings.TRANSCRIPTS_STORE), enqueue
    )

    # These two have no job in the due-set yet: if Redis stays away, requeue rather than ack.
    @app.task(name=INGEST_TASK)
    def ingest_event(event: dict[str, Any], event_id: str | None = None) -> str:
        try:
            result = pipeline.ingest(parse_event(event), run_now=True)
            if event_id:
                inbox.applied(event_id)
        except redis.RedisError as exc:
            raise Reject(exc, requeue=True) from exc
        return result

    @app.task(name=SUBMIT_TASK)
    def submit_job(
        recording_id: str,
        provider: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        try:
            job_id, _ = pipeline.submit(
                recording_id, provider, metadata, idempotency_key, run_now=True
            )
        except redis.RedisError as exc:
            raise Reject(exc, requeue=True) from exc
        return job_id

    for step, name in STEP_TASKS.items():
        _register_step(app, pipeline, step, name)

    def sweep() -> None:
        pipeline.sweep()
        inbox.resend_due()

    app.steps["worker"].add(sweeper_step(sweep, settings.SWEEP_INTERVAL_S))
    return app, pipeline


def _register_step(app: Celery, pipeline: Pipeline, step: Step, name: str) -> None:
    def run(job_id: str) -> str:
        return pipeline.run_step(step, job_id)

    run.__name__ = name.rsplit(".", 1)[-1]
    app.task(name=name)(run)
