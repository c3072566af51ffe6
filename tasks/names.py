"""Task, queue, route and workspace names the receiver, the worker and other services agree on."""

from __future__ import annotations

DEFAULT = "default"  # the workspace of the single-workspace settings (tasks/workspaces.py)

EVENTS_QUEUE = "recall.events"
PIPELINE_QUEUE = "recall.pipeline"
QUEUES = (EVENTS_QUEUE, PIPELINE_QUEUE)

INGEST_TASK = "recall.ingest_event"
SUBMIT_TASK = "recall.submit_job"
STEP_TASKS = {  # by step (tasks/jobs/states.py, Step)
    "create": "recall.create_transcript",
    "remediate": "recall.remediate_limit",
    "await": "recall.await_completion",
    "fetch": "recall.fetch_and_persist",
}
ROUTES = {INGEST_TASK: {"queue": EVENTS_QUEUE}}
