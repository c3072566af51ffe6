"""The pipeline's Celery tasks: thin wrappers that parse arguments, call the plain functions and
show a step's result as Celery's task state (`_shown`).

`register` binds them to the worker's app (worker/celery_app.py) with their dependencies, built
once per worker process. Names: tasks/names.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Reject, Retry

from tasks.events import parse_event
from tasks.inbox import Inbox
from tasks.jobs.states import State, Step
from tasks.jobs.store import JobStore
from tasks.jobs.views import Source
from tasks.limits import OverLimit
from tasks.messages import sent_from
from tasks.names import DEFAULT, INGEST_TASK, STEP_TASKS, SUBMIT_TASK
from tasks.outcomes import JobFailed, JobRetrying, Outcome, Result
from tasks.pipeline import Pipeline

FINISHING = (Outcome.PERSISTED, Outcome.FAILED)


def register(app: Celery, pipeline: Pipeline, inbox: Inbox, finished: Callable[[], None]) -> None:
    """Register ingest, submit and one task per step on `app`. Messages a task sends are its
    children in Flower (root and parent ids), so a job's chain shows there. `finished` is told
    when a task finished a job (its callbacks go out at once). Not shared: Celery would hand a
    shared task to every app made later in the process, bound to this app's pipeline."""

    # These two have no job in the due-set yet: if Redis stays away, requeue rather than ack.
    @app.task(name=INGEST_TASK, bind=True, shared=False)
    def ingest_event(
        self: Task[Any, Any],
        event_json: str | dict[str, Any],
        event_id: str | None = None,
        workspace: str = DEFAULT,
    ) -> str:
        """Apply one accepted webhook of `workspace` (its body as it came, a JSON string; an
        object in messages from before this release)."""
        try:
            if event_id:
                inbox.taken(event_id, str(self.request.id))
            event = json.loads(event_json) if isinstance(event_json, str) else event_json
            with sent_from(self.request.id, self.request.root_id):
                result = pipeline.ingest(parse_event(event), workspace)
            if event_id:
                inbox.applied(event_id)
        except redis.RedisError as exc:
            raise Reject(exc, requeue=True) from exc
        if result.outcome in FINISHING:
            finished()
        return str(result)

    @app.task(name=SUBMIT_TASK, bind=True, shared=False)
    def submit_job(
        self: Task[Any, Any],
        recording_id: str,
        provider: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        workspace: str = DEFAULT,
    ) -> str:
        """Start a job (the jobs API's POST, for services that speak Celery); its id."""
        if not pipeline.dispatch.knows(workspace):
            raise Reject(f"no workspace {workspace!r} is set up", requeue=False)
        try:
            with sent_from(self.request.id, self.request.root_id):
                job_id, _ = pipeline.dispatch.submit(
                    recording_id,
                    provider,
                    metadata,
                    idempotency_key,
                    workspace=workspace,
                    source=Source.TASK,
                )
        except OverLimit as exc:  # nothing to retry: the message itself is refused
            raise Reject(str(exc), requeue=False) from None
        except redis.RedisError as exc:
            raise Reject(exc, requeue=True) from exc
        return job_id

    for step, name in STEP_TASKS.items():
        _register_step(app, pipeline, Step(step), name, finished)


def _register_step(
    app: Celery, pipeline: Pipeline, step: Step, name: str, finished: Callable[[], None]
) -> None:
    def run(self: Task[Any, Any], job_id: str, recording_id: str = "") -> str:
        """One step of one job (`recording_id` is there for people reading Flower); the task id
        tells the job's current message from a stale copy."""
        with sent_from(self.request.id, self.request.root_id):
            result = pipeline.run_step(step, job_id, str(self.request.id))
        if result.outcome in FINISHING:
            finished()
        return _shown(result, pipeline.jobs)

    run.__name__ = name.rsplit(".", 1)[-1]
    # JobFailed is expected: logged without a trace.
    app.task(name=name, bind=True, shared=False, throws=(JobFailed,))(run)


def _shown(result: Result, jobs: JobStore) -> str:
    """A step's result as Celery (and so Flower) shows it: `FAILURE` when the step ended its job
    `failed`, `RETRY` when it left the job to retry after an error, else `SUCCESS` with the result
    as a short string (a wait for our own quota slot too: pacing is not an error). Both
    exceptions name the job's error, read from the job.

    `Retry` is raised, never `Task.retry()`: Celery marks the task `RETRY` and sends
    `task-retried` but no new message, as the job's due time brings the step back (the sweeper,
    tasks/dispatch.py). With late acks and `task_acks_on_failure_or_timeout` (worker/celery_app.py)
    a `FAILURE` or a `RETRY` is acknowledged like a success: nothing is delivered again."""
    if result.outcome == Outcome.FAILED or result.state == State.FAILED:
        job = jobs.record(result.job_id)
        error = job.error if job is not None else None
        why = f"{error.code}: {error.message}" if error is not None else result.detail
        raise JobFailed(f"job {result.job_id} failed: {why}")
    if result.outcome == Outcome.RETRY:
        job = jobs.record(result.job_id)
        retrying = JobRetrying(
            f"job {result.job_id} retries ({result.detail}): {job.last_error if job else ''}"
        )
        raise Retry(str(retrying), exc=retrying)
    return str(result)
