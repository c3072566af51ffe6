"""Limits on what a client hands a job, stated and enforced at every door; one bad job (stored
before the limits) breaks no page, no view and no other job's callbacks."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import Reject
from flask.testing import FlaskClient

from receiver.app import create_app
from receiver.schemas import MAX_BODY_BYTES
from tasks import keys
from tasks.callbacks.deliveries import Deliveries
from tasks.callbacks.outbox import Outbox
from tasks.callbacks.views import job_views
from tasks.celery_tasks import register
from tasks.inbox import Inbox
from tasks.jobs import indexes
from tasks.limits import MAX_DEPTH, MAX_FIELD_BYTES, WITHHELD, OverLimit, check
from tasks.names import SUBMIT_TASK
from tasks.settings import Settings
from tests.helpers import Harness, reconfigure

AUTH = {"Authorization": "Bearer token-1"}


def nested(levels: int) -> Any:
    """A value of `levels` levels of objects and arrays, taking turns, an object outermost."""
    value: Any = "x"
    for level in range(levels):
        value = {"k": value} if (levels - level) % 2 else [value]
    return value


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(reconfigure(settings, API_TOKENS="token-1")).test_client()


def listed(client: FlaskClient) -> list[dict[str, Any]]:
    answer = client.get("/api/v1/jobs", headers=AUTH)
    assert answer.status_code == 200
    jobs: list[dict[str, Any]] = answer.json["jobs"]  # type: ignore[index]
    return jobs


@pytest.mark.parametrize("field", ["metadata", "provider"])
def test_a_field_nested_past_the_limit_is_400_in_one_line_and_nothing_is_stored(
    client: FlaskClient, field: str
) -> None:
    deep = {"recallai_async": nested(MAX_DEPTH - 1)} if field == "provider" else nested(MAX_DEPTH)
    fits = client.post("/api/v1/jobs", json={"recording_id": "r1", field: deep}, headers=AUTH)
    assert fits.status_code == 202, fits.json
    too_deep = (
        {"recallai_async": nested(MAX_DEPTH)} if field == "provider" else nested(MAX_DEPTH + 1)
    )
    answer = client.post("/api/v1/jobs", json={"recording_id": "r2", field: too_deep}, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json == {"error": f"{field}: nested deeper than {MAX_DEPTH} levels"}
    assert [job["recording_id"] for job in listed(client)] == ["r1"]


@pytest.mark.parametrize("field", ["metadata", "provider"])
def test_a_field_over_its_size_is_400_naming_the_limit(client: FlaskClient, field: str) -> None:
    text = "y" * MAX_FIELD_BYTES
    big = {"recallai_async": {"vocabulary": text}} if field == "provider" else {"notes": text}
    answer = client.post("/api/v1/jobs", json={"recording_id": "r1", field: big}, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json["error"].startswith(f"{field}: ")  # type: ignore[index]
    assert f"over the limit of {MAX_FIELD_BYTES}" in answer.json["error"]  # type: ignore[index]
    assert listed(client) == []


@pytest.mark.parametrize(
    "body", [b"[" * 5000, b'{"recording_id": "r1", "metadata": ' + b"[" * 3000 + b"]" * 3000]
)
def test_json_nested_past_what_the_parser_takes_is_400_not_500(
    client: FlaskClient, body: bytes
) -> None:
    answer = client.post(
        "/api/v1/jobs", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert answer.status_code == 400
    assert "nested deeper than" in answer.json["error"]  # type: ignore[index]


def test_a_body_over_the_jobs_apis_limit_is_413(client: FlaskClient) -> None:
    body = json.dumps({"recording_id": "r1", "padding": " " * MAX_BODY_BYTES}).encode()
    answer = client.post(
        "/api/v1/jobs", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert answer.status_code == 413
    assert answer.json["error"].startswith("body: ")  # type: ignore[index]


def test_the_submit_task_and_the_cli_meet_the_same_limits(harness: Harness) -> None:
    """Every door to a job goes through the dispatcher: the Celery submit task and `enqueue`."""
    with pytest.raises(OverLimit, match="metadata: nested deeper"):
        harness.pipeline.dispatch.submit("r1", None, nested(MAX_DEPTH + 1))
    with pytest.raises(OverLimit, match="provider: "):
        harness.pipeline.dispatch.submit("r1", {"recallai_async": {"v": "z" * MAX_FIELD_BYTES}})
    assert indexes.count(harness.redis) == 0


@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("metadata", b'{"recording_id": "r1", "metadata": {"a": "Ana \\ud83d"}}'),
        ("metadata", b'{"recording_id": "r1", "metadata": {"\\udfff": 1}}'),
        ("provider", b'{"recording_id": "r1", "provider": {"x": {"language_code": "\\ud800"}}}'),
    ],
)
def test_a_lone_surrogate_is_400_in_one_line_not_500(
    client: FlaskClient, field: str, body: bytes
) -> None:
    """As the review found it: text cut in the middle of a UTF-16 pair (JSON's `\\ud83d`) in a
    key or a value made measuring the field raise, and the POST answer 500."""
    answer = client.post(
        "/api/v1/jobs", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert answer.status_code == 400
    error = answer.json["error"]  # type: ignore[index]
    assert error.startswith(f"{field}: holds a lone surrogate, ") and "\n" not in error
    assert listed(client) == []


def test_the_submit_task_and_the_dispatcher_refuse_a_lone_surrogate_anywhere(
    harness: Harness,
) -> None:
    """The Celery submit task (JSON messages carry `\\ud800` too) rejects the message, naming
    the field; `limits.check` raises nothing but `OverLimit`, whatever it is handed."""
    app = Celery("review19", set_as_current=False)
    register(app, harness.pipeline, Inbox(harness.redis, 60, 60), lambda: None)
    submit = app.tasks[SUBMIT_TASK]
    for field, kwargs in [
        ("metadata", {"metadata": {"name": "Ana \ud83d"}}),
        ("provider", {"provider": {"recallai_async": {"language_code": "\udc00"}}}),
        ("recording_id", {"recording_id": "r\ud800"}),
        ("idempotency_key", {"idempotency_key": "\udfff"}),
    ]:
        with pytest.raises(Reject) as refused:
            submit(**{"recording_id": "r1", **kwargs})
        assert refused.value.reason.startswith(f"{field}: holds a lone surrogate, ")
        assert not refused.value.requeue
    with pytest.raises(OverLimit, match="metadata: not a JSON value"):
        check("metadata", {"a": {1, 2}})
    assert indexes.count(harness.redis) == 0


def test_a_job_stored_before_the_limits_is_shown_withheld_and_breaks_no_page(
    client: FlaskClient, harness: Harness
) -> None:
    """As the review found it: metadata 300 levels deep (past what pydantic serialises) used to
    answer 500 on the job, on every page holding it, and in every sweep of the outbox."""
    old, _ = harness.pipeline.dispatch.jobs.submit("old", {"recallai_async": {}}, nested(300))
    harness.pipeline.dispatch.submit("new", None, {"team": "a"})
    answer = client.get(f"/api/v1/jobs/{old}", headers=AUTH)
    assert answer.status_code == 200 and answer.json["metadata"] == WITHHELD  # type: ignore[index]
    shown = {job["recording_id"]: job["metadata"] for job in listed(client)}
    assert shown == {"old": WITHHELD, "new": {"team": "a"}}


def test_one_job_that_cannot_be_read_holds_back_no_other_jobs_callbacks(
    harness: Harness, settings: Settings, rclient: redis.Redis
) -> None:
    jobs = harness.pipeline.dispatch.jobs
    broken, _ = jobs.submit("broken", {"recallai_async": {}})
    fine, _ = jobs.submit("fine", {"recallai_async": {}})
    for job_id in (broken, fine):
        rclient.hset(keys.job(job_id), "state", "failed")
        rclient.zadd(keys.OUTBOX, {f"{job_id}:1": 0})
    rclient.hset(keys.job(broken), "metadata", "{not json")  # unreadable, whatever the reason
    deliveries = Deliveries.from_settings(rclient, settings)
    outbox = Outbox(jobs, deliveries, ["https://hooks.example.com/in"], None, "theirs")
    assert outbox.send_on() == 2
    (callback,) = job_views(jobs, [jobs.record(fine)])[0].callbacks  # type: ignore[list-item]
    assert callback.state == "pending"
    assert rclient.zscore(keys.OUTBOX, f"{broken}:1") is not None  # kept, to be tried again
    assert rclient.zscore(keys.OUTBOX, f"{fine}:1") is None
