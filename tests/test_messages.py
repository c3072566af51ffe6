"""The hand-built task messages against Celery's own: same body, same headers, a real signature."""

from __future__ import annotations

import base64
import inspect
import json
from typing import Any

import pytest
from celery import Celery
from kombu.utils import json as kombu_json

from harness import recording_done
from tasks.jobs.states import Step
from tasks.messages import ingest_message, sent_from, step_message
from tasks.names import EVENTS_QUEUE, INGEST_TASK, PIPELINE_QUEUE, STEP_TASKS
from tasks.settings import load_settings
from worker.celery_app import create_worker_app

# Headers that differ by nature: fresh ids, how arguments print, the sending host, and stamping
# fields a producer adds for canvas features we do not use.
VARYING = {"id", "root_id", "argsrepr", "kwargsrepr", "origin"}
STAMPING = {"replaced_task_nesting", "stamped_headers", "stamps"}


@pytest.fixture(scope="module")
def app() -> Celery:
    return create_worker_app(load_settings(REDIS_URL="redis://127.0.0.1:1/0"))


def decoded(message: str) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    envelope = json.loads(message)
    body = json.loads(base64.b64decode(envelope["body"]))
    return envelope, body[0], body[1]


def assert_same_as_celery(
    app: Celery, message: str, name: str, args: list[Any], queue: str
) -> None:
    envelope, sent_args, sent_kwargs = decoded(message)
    celery = app.amqp.as_task_v2("id", name, args=args, kwargs={}, ignore_result=True)
    assert [sent_args, sent_kwargs, json.loads(base64.b64decode(envelope["body"]))[2]] == list(
        celery.body
    )
    ours = {k: v for k, v in envelope["headers"].items() if k not in VARYING}
    theirs = {k: v for k, v in celery.headers.items() if k not in VARYING | STAMPING}
    assert ours == theirs
    assert envelope["headers"]["root_id"] == envelope["headers"]["id"]
    assert envelope["properties"]["correlation_id"] == envelope["headers"]["id"]
    assert envelope["properties"]["delivery_info"]["routing_key"] == queue
    assert app.amqp.router.route({}, name)["queue"].name == queue
    # The worker's task accepts these arguments.
    inspect.signature(app.tasks[name].run).bind(*sent_args, **sent_kwargs)


@pytest.mark.parametrize("step", list(Step))
def test_step_messages_are_what_celery_would_send(app: Celery, step: Step) -> None:
    message, task_id = step_message(step, "job-1", "rec-1")
    envelope = json.loads(message)
    assert task_id == envelope["headers"]["id"] == envelope["properties"]["delivery_tag"]
    assert_same_as_celery(app, message, STEP_TASKS[step], ["job-1", "rec-1"], PIPELINE_QUEUE)
    assert json.loads(message)["headers"]["argsrepr"] == "['job-1', 'rec-1']"  # Flower shows it


def test_a_message_sent_by_a_task_is_its_child_in_the_jobs_chain() -> None:
    with sent_from("task-2", "task-1"):
        headers = json.loads(step_message(Step.FETCH, "job-1", "rec-1")[0])["headers"]
    assert (headers["root_id"], headers["parent_id"]) == ("task-1", "task-2")
    with sent_from("task-1", None):  # the first task of a chain is its own root
        headers = json.loads(step_message(Step.CREATE, "job-1", "rec-1")[0])["headers"]
    assert (headers["root_id"], headers["parent_id"]) == ("task-1", "task-1")
    headers = json.loads(step_message(Step.CREATE, "job-1", "rec-1")[0])["headers"]
    assert headers["root_id"] == headers["id"] and headers["parent_id"] is None


def test_the_receivers_ingest_message_is_what_celery_would_send(app: Celery) -> None:
    event = json.dumps(recording_done("rec-1"))
    message, _ = ingest_message(event, "event-1", "default")
    assert_same_as_celery(app, message, INGEST_TASK, [event, "event-1", "default"], EVENTS_QUEUE)


def test_no_user_data_in_a_message_can_be_read_as_a_kombu_type_tag() -> None:
    """Recall passes bot metadata through; an object whose keys are exactly `__type__` and
    `__value__` would be decoded by kombu as a type tag (and refused). The event travels as a
    JSON string, so kombu decodes it back to the same text."""
    event = recording_done("rec-1")
    event["data"]["recording"]["metadata"] = {"__type__": "nope", "__value__": "x"}
    event["data"]["bot"]["metadata"] = {"__type__": "bytes", "__value__": "x"}
    text = json.dumps(event)
    body = base64.b64decode(json.loads(ingest_message(text, "event-1", "default")[0])["body"])
    args, _, _ = kombu_json.loads(body)
    assert args == [text, "event-1", "default"]
