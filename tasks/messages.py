"""Celery task messages (protocol 2, kombu's Redis envelope) built without a producer.

The receiver pushes these itself inside one Lua command (dedupe + keep + push), which is atomic and
cheaper than `apply_async` in a hot HTTP handler (BENCHMARKS.md); the pipeline's steps are sent by a
Lua command too (tasks/jobs/sending.py `send`), which records each message on its job. A message's
task id is also its delivery tag, the key kombu keeps it under while a worker holds it
unacknowledged. No user data is ever a JSON object in a message: kombu's decoder would read an
object whose keys are exactly `__type__` and `__value__` as a type tag (and refuse the message), so
a webhook's body travels as a JSON string. `tests/test_messages.py` checks the messages against
Celery's own `app.amqp.as_task_v2` for the same calls.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from tasks.jobs.states import Step
from tasks.names import EVENTS_QUEUE, INGEST_TASK, PIPELINE_QUEUE, STEP_TASKS

_EMBED_JSON = json.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})


@dataclass(frozen=True)
class Lineage:
    """The task sending a message (its parent) and the first task of its chain (its root)."""

    root_id: str
    parent_id: str


_sender: ContextVar[Lineage | None] = ContextVar("sender", default=None)


@contextmanager
def sent_from(task_id: str | None, root_id: str | None) -> Iterator[None]:
    """Messages sent in this block are the children of task `task_id` (Flower links them)."""
    token = _sender.set(Lineage(root_id or task_id, task_id) if task_id else None)
    try:
        yield
    finally:
        _sender.reset(token)


def step_message(step: Step, job_id: str, recording_id: str) -> tuple[str, str]:
    """The message of `STEP_TASKS[step](job_id, recording_id)` on the pipeline queue, and its
    task id; Flower shows both ids as its arguments."""
    return task_message(STEP_TASKS[step], [job_id, recording_id], PIPELINE_QUEUE)


def ingest_message(
    event_json: str, event_id: str, workspace: str, summary: str = ""
) -> tuple[str, str]:
    """The message of `ingest_event(event_json, event_id, workspace)` (the event's JSON text as
    it came, as a string: never decoded by kombu) and its task id; `summary` is what Flower
    shows."""
    args_json = json.dumps([event_json, event_id, workspace])
    return task_message_json(INGEST_TASK, args_json, EVENTS_QUEUE, summary)


def task_message(
    task_name: str, args: list[Any], queue: str, task_id: str | None = None
) -> tuple[str, str]:
    """The JSON string kombu's Redis transport LPUSHes onto `queue` for `task_name(*args)`,
    and its task id (a fresh one unless given)."""
    return task_message_json(task_name, json.dumps(args), queue, repr(args)[:200], task_id)


def task_message_json(
    task_name: str,
    args_json: str,
    queue: str,
    argsrepr: str = "",
    task_id: str | None = None,
) -> tuple[str, str]:
    """`task_message` for arguments already serialised: `args_json` is a JSON array."""
    task_id = task_id or str(uuid.uuid4())
    sender = _sender.get()
    body = f"[{args_json},{{}},{_EMBED_JSON}]".encode()
    message = json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task_name,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": sender.root_id if sender else task_id,
                "parent_id": sender.parent_id if sender else None,
                "argsrepr": argsrepr,
                "kwargsrepr": "{}",
                "origin": "recall-transcribe",
                "ignore_result": True,
            },
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": task_id,
            },
        }
    )
    return message, task_id
