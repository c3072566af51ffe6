"""Task, queue, route and workspace names the receiver, the worker and other services agree on."""

from __future__ import annotations

from tasks.jobs.states import Step

DEFAULT = "default"  # the workspace of the single-workspace settings (tasks/workspaces.py)

EVENTS_QUEUE = "recall.events"
PIPELINE_QUEUE = "recall.pipeline"
QUEUES = (EVENTS_QUEUE, PIPELINE_QUEUE)

INGEST_TASK = "recall.ingest_event"
SUBMIT_TASK = "recall.submit_job"
STEP_TASKS: dict[Step, str] = {
    Step.CREATE: "recall.create_transcript",
    Step.REMEDIATE: "recall.remediate_limit",
    Step.AWAIT: "recall.await_completion",
    Step.FETCH: "recall.fetch_and_persist",
}
ROUTES = {INGEST_TASK: {"queue": EVENTS_QUEUE}}
