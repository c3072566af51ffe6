"""Starting jobs and pushing their steps: all the receiver and the CLI need to enqueue work."""

from __future__ import annotations

from typing import Any

import redis

from tasks.jobs import JobStore
from tasks.messages import step_message
from tasks.names import PIPELINE_QUEUE
from tasks.states import State, Step

RESUME_STEP = {State.QUEUED: Step.CREATE, State.AWAITING: Step.AWAIT}


class Enqueuer:
    """Pushes step messages straight onto the pipeline queue."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def __call__(self, step: Step, job_id: str, recording_id: str) -> None:
        self._redis.lpush(PIPELINE_QUEUE, step_message(step, job_id, recording_id))


def submit(
    jobs: JobStore,
    enqueue: Enqueuer,
    recording_id: str,
    provider: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> tuple[str, bool]:
    """Start a job unless one exists for the key, and enqueue its create; (job id, created)."""
    job_id, created = jobs.submit(recording_id, provider, metadata, idempotency_key)
    if created:
        enqueue(Step.CREATE, job_id, recording_id)
    return job_id, created


def retry_failed(
    jobs: JobStore,
    *,
    error_code: str | None = None,
    recording_id: str | None = None,
    created_after: float | None = None,
) -> int:
    """Re-run every failed job that matches, each from the furthest point known; returns how
    many. They become due at once and the sweepers send them on: a large replay is paced by
    Recall's quotas like any burst, and creates no transcript twice."""
    retried = 0
    for job in jobs.records(State.FAILED, recording_id):
        if error_code is not None and (job.error is None or job.error.code != error_code):
            continue
        if created_after is not None and job.created_at < created_after:
            continue
        retried += jobs.retry(job.id) is not None
    return retried


def retry(jobs: JobStore, enqueue: Enqueuer, job_id: str) -> bool:
    """Re-run a failed job from the furthest point known and enqueue that step; False when the
    job is not failed."""
    state = jobs.retry(job_id)
    job = jobs.record(job_id)
    if state is None or job is None:
        return False
    enqueue(RESUME_STEP[state], job_id, job.recording_id)
    return True
