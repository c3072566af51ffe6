"""The webhook endpoint: verify, dedupe, enqueue, answer; and every refusal enqueues nothing."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from flask.testing import FlaskClient

from harness import OTHER_SECRET, SECRET, WEBHOOK_PATH, free_port, recording_done, signed
from receiver.app import create_app
from tasks import keys
from tasks.names import EVENTS_QUEUE
from tasks.settings import ConfigError, Settings
from tests.helpers import queued_events, reconfigure

URL = WEBHOOK_PATH


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


def test_signed_event_is_enqueued_once_per_webhook_id(
    client: FlaskClient, rclient: redis.Redis
) -> None:
    event = recording_done("r1")
    body, headers = signed(event)
    first = client.post(URL, data=body, headers=headers)
    again = client.post(URL, data=body, headers=headers)
    assert (first.status_code, first.json) == (200, {"status": "enqueued"})
    assert (again.status_code, again.json) == (200, {"status": "duplicate"})
    assert queued_events(rclient) == [event]


def test_legacy_svix_headers_are_accepted(client: FlaskClient, rclient: redis.Redis) -> None:
    body, headers = signed(recording_done("r1"), legacy=True)
    assert client.post(URL, data=body, headers=headers).status_code == 200
    assert len(queued_events(rclient)) == 1


def test_every_secret_of_a_rotation_verifies(settings: Settings, rclient: redis.Redis) -> None:
    rotated = reconfigure(settings, RECALL_WEBHOOK_SECRET=f"{SECRET},{OTHER_SECRET}")
    client = create_app(rotated).test_client()
    for secret in (SECRET, OTHER_SECRET):
        body, headers = signed(recording_done(f"r-{secret[-4:]}"), secret=secret)
        assert client.post(URL, data=body, headers=headers).status_code == 200
    assert len(queued_events(rclient)) == 2


def _tampered() -> tuple[bytes, dict[str, str]]:
    body, headers = signed(recording_done("r1"))
    return body.replace(b"r1", b"r2"), headers


def _unsigned() -> tuple[bytes, dict[str, str]]:
    body, _ = signed(recording_done("r1"))
    return body, {"Content-Type": "application/json"}


def _forged() -> tuple[bytes, dict[str, str]]:
    return signed(recording_done("r1"), secret="whsec_Zm9yZ2VkLXNlY3JldC1rZXk=")


def _stale() -> tuple[bytes, dict[str, str]]:
    return signed(recording_done("r1"), timestamp=datetime.now(UTC) - timedelta(minutes=6))


def _future() -> tuple[bytes, dict[str, str]]:
    return signed(recording_done("r1"), timestamp=datetime.now(UTC) + timedelta(minutes=6))


def _garbage_signature() -> tuple[bytes, dict[str, str]]:
    body, headers = signed(recording_done("r1"))
    headers["webhook-signature"] = "v1"
    return body, headers


@pytest.mark.parametrize(
    "build", [_tampered, _unsigned, _forged, _stale, _future, _garbage_signature]
)
def test_bad_signatures_are_refused_with_401_and_nothing_enqueued(
    client: FlaskClient, rclient: redis.Redis, build: object
) -> None:
    body, headers = build()  # type: ignore[operator]
    response = client.post(URL, data=body, headers=headers)
    assert response.status_code == 401
    assert queued_events(rclient) == []


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"event": "recording.done", "data": {}}', b'"x"', b""],
)
def test_malformed_bodies_are_refused_with_400_and_nothing_enqueued(
    client: FlaskClient, rclient: redis.Redis, body: bytes
) -> None:
    body, headers = signed(body)
    response = client.post(URL, data=body, headers=headers)
    assert response.status_code == 400
    assert queued_events(rclient) == []


def test_body_over_one_mebibyte_is_refused_with_413(
    client: FlaskClient, rclient: redis.Redis
) -> None:
    event = recording_done("r1")
    event["padding"] = "x" * (1024 * 1024)
    body, headers = signed(event)
    assert client.post(URL, data=body, headers=headers).status_code == 413
    assert queued_events(rclient) == []


def test_unknown_event_types_are_acknowledged_counted_and_not_enqueued(
    client: FlaskClient, rclient: redis.Redis
) -> None:
    body, headers = signed({"event": "bot.status_change", "data": {"bot": {"id": "b"}}})
    response = client.post(URL, data=body, headers=headers)
    assert (response.status_code, response.json) == (200, {"status": "ignored"})
    assert queued_events(rclient) == []
    assert rclient.hget(keys.EVENTS_IGNORED, "bot.status_change") == b"1"


def test_redis_down_answers_503_never_2xx(settings: Settings) -> None:
    down = reconfigure(settings, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = create_app(down).test_client()
    body, headers = signed(recording_done("r1"))
    assert client.post(URL, data=body, headers=headers).status_code == 503
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_ready_when_redis_answers(client: FlaskClient) -> None:
    assert client.get("/readyz").status_code == 200


def test_refuses_to_start_without_a_secret_unless_insecure(
    settings: Settings, rclient: redis.Redis
) -> None:
    unsigned = reconfigure(settings, RECALL_WEBHOOK_SECRET=None)
    with pytest.raises(ConfigError, match="RECALL_WEBHOOK_SECRET"):
        create_app(unsigned)
    other = '{"eu": {"base_url": "https://x", "api_key": "k", "webhook_secret": "whsec_eA=="}}'
    with pytest.raises(ConfigError, match="RECALL_WEBHOOK_SECRET"):  # default is a workspace too
        create_app(reconfigure(unsigned, RECALL_WORKSPACES=other))
    insecure = create_app(reconfigure(unsigned, RECALL_WEBHOOK_INSECURE=True)).test_client()
    response = insecure.post(URL, json=recording_done("r1"))
    assert response.status_code == 200 and len(queued_events(rclient)) == 1


def test_openapi_describes_the_endpoints(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    assert {
        "/webhooks/recall",
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/retry",
    } <= set(spec["paths"])
    assert "Job" in spec["components"]["schemas"]


def test_an_event_whose_message_was_lost_is_sent_again_until_applied(
    client: FlaskClient, rclient: redis.Redis, settings: Settings
) -> None:
    from tasks.inbox import Inbox

    event = recording_done("r1")
    body, headers = signed(event)
    assert client.post(URL, data=body, headers=headers).status_code == 200
    rclient.delete(EVENTS_QUEUE)  # lost with Redis, between the pop and the unacked record
    inbox = Inbox(rclient, settings.INBOX_RESEND_S, settings.WEBHOOK_DEDUPE_TTL_S)
    assert inbox.resend_due() == 0  # not before a lease has passed
    (event_id,) = rclient.zrange(keys.INBOX_DUE, 0, -1)
    rclient.zadd(keys.INBOX_DUE, {event_id: 0})
    assert inbox.resend_due() == 1
    assert queued_events(rclient) == [event]
    inbox.applied(event_id.decode())
    rclient.zadd(keys.INBOX_DUE, {event_id: 0}, xx=True)  # nothing left to push ahead
    assert inbox.resend_due() == 0


def test_an_event_no_worker_applies_becomes_a_dead_letter_and_can_be_replayed(
    client: FlaskClient, rclient: redis.Redis, settings: Settings
) -> None:
    from tasks.inbox import Inbox

    event = recording_done("r1")
    body, headers = signed(event)
    assert client.post(URL, data=body, headers=headers).status_code == 200
    inbox = Inbox(rclient, 0.01, settings.WEBHOOK_DEDUPE_TTL_S, max_deliveries=3)
    (event_id,) = (member.decode() for member in rclient.zrange(keys.INBOX_DUE, 0, 0))
    rclient.zadd(keys.INBOX_DUE, {event_id: 0})
    sent = []
    for _ in range(3):  # each time a worker takes the event and fails to apply it
        take_one(rclient, inbox, event_id)
        time.sleep(0.02)
        sent.append(inbox.resend_due())
    assert sent == [1, 1, 0]  # delivered 3 times in all (the first by the receiver), then dead
    assert rclient.llen(EVENTS_QUEUE) == 0
    assert inbox.dead()[event_id][0] == "default"
    assert json.loads(inbox.dead()[event_id][1]) == event
    assert rclient.hlen(keys.INBOX) == 0 and rclient.zcard(keys.INBOX_DUE) == 0
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "recall_transcribe_inbox_dead_events 1.0" in metrics

    assert inbox.replay_dead() == 1
    assert queued_events(rclient) == [event] and inbox.dead() == {}
    inbox.applied(event_id)
    assert rclient.hlen(keys.INBOX) == 0 and rclient.hlen(keys.INBOX_DELIVERIES) == 0


def test_events_kept_before_workspaces_existed_are_replayed_whole_to_the_default_one(
    rclient: redis.Redis, settings: Settings
) -> None:
    from tasks.inbox import Inbox

    event = recording_done("r1")
    raw = json.dumps(event, indent=1)  # what the previous release kept: the bare JSON
    rclient.hset(keys.INBOX_DEAD, "e1", raw)
    inbox = Inbox(rclient, 0.01, settings.WEBHOOK_DEDUPE_TTL_S)
    assert inbox.dead() == {"e1": ("default", raw)}
    assert inbox.replay_dead() == 1
    assert queued_events(rclient) == [event]


def test_events_waiting_in_a_backlog_are_never_copied_nor_dead_lettered(
    rclient: redis.Redis, settings: Settings
) -> None:
    """No worker takes anything for many intervals: every event's message still waits in the
    queue, so none is sent again and none counts as a delivery."""
    from tasks.inbox import Inbox

    inbox = Inbox(rclient, 0.01, settings.WEBHOOK_DEDUPE_TTL_S, max_deliveries=3)
    for index in range(50):
        assert inbox.put(f"wh-{index}", json.dumps(recording_done(f"r{index}")))
    for _ in range(12):
        time.sleep(0.02)
        assert inbox.resend_due() == 0
    assert rclient.llen(EVENTS_QUEUE) == 50 and inbox.dead() == {}
    assert rclient.hlen(keys.INBOX) == 50


def take_one(client: redis.Redis, inbox: object, event_id: str) -> None:
    """What a worker does first with an ingest message: take it off the queue, say so."""
    raw = client.rpop(EVENTS_QUEUE)
    assert raw is not None
    inbox.taken(event_id, json.loads(raw)["headers"]["id"])  # type: ignore[attr-defined]


def test_metrics_want_the_metrics_token_when_one_is_set(settings: Settings) -> None:
    assert create_app(settings).test_client().get("/metrics").status_code == 200
    guarded = create_app(reconfigure(settings, METRICS_TOKEN="s3cret")).test_client()
    assert guarded.get("/metrics").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert guarded.get("/metrics", headers=wrong).status_code == 401
    right = guarded.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert right.status_code == 200 and "recall_transcribe_jobs" in right.get_data(as_text=True)
