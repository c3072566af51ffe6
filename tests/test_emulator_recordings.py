"""The emulator's List Recordings (`GET /api/v1/recording/`) and the controls that build
reconciliation's scenarios, driven over HTTP: filters, cursor pages, media shortcuts, recordings
finished without their webhook, the `recordings` quota, malformed dates and auth."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from emulator.quotas import RECALL_QUOTAS
from harness import API_KEY, EmulatorHandle, free_port, wait_for
from tests.helpers import serving_emulator

AUTH = {"Authorization": f"Token {API_KEY}"}
DAY = timedelta(days=1)
NOW = datetime.now(UTC).replace(microsecond=0)


def at(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def add(emulator: EmulatorHandle, **body: Any) -> Any:
    response = requests.post(f"{emulator.url}/_emulator/recordings", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def page(emulator: EmulatorHandle, url: str | None = None, **params: str) -> dict[str, Any]:
    response = requests.get(
        url or f"{emulator.url}/api/v1/recording/", params=params, headers=AUTH, timeout=10
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"next", "previous", "results"}
    for link in (body["next"], body["previous"]):
        assert link is None or link.startswith(f"{emulator.url}/api/v1/recording/?")
    return body


def walk(emulator: EmulatorHandle, **params: str) -> list[dict[str, Any]]:
    """Every recording the filters select, following `next` to the end."""
    body = page(emulator, **params)
    results = list(body["results"])
    while body["next"]:
        body = page(emulator, body["next"])
        results += body["results"]
    return results


def ids(emulator: EmulatorHandle, **params: str) -> list[str]:
    found = [r["id"] for r in walk(emulator, **params)]
    assert len(found) == len(set(found)), "a recording listed twice"
    return found


@pytest.fixture
def seeded(emulator: EmulatorHandle) -> dict[str, str]:
    """Recordings that differ in one thing each: status, creation time, bot, metadata."""
    made = {
        "old-done": dict(created_at=at(NOW - 3 * DAY), metadata={"team": "a", "kind": "x"}),
        "mid-done": dict(created_at=at(NOW - 2 * DAY), metadata={"team": "a", "kind": "y"}),
        "new-done": dict(created_at=at(NOW - DAY), bot_id="bot-1", metadata={"team": "b"}),
        "processing": dict(created_at=at(NOW - DAY), status="processing", bot_id="bot-1"),
        "paused": dict(created_at=at(NOW - 2 * DAY), status="paused", metadata={"team": "a"}),
        "failed": dict(
            created_at=at(NOW - 3 * DAY), status="failed", sub_code="bot_kicked_from_call"
        ),
        "desktop": dict(created_at=at(NOW), bot_id=None, desktop_sdk_upload_id="upload-1"),
    }
    for recording_id, fields in made.items():
        add(emulator, id=recording_id, send_done=False, **fields)
    return {rid: str(fields["created_at"]) for rid, fields in made.items()}


def test_each_filter_alone(emulator: EmulatorHandle, seeded: dict[str, str]) -> None:
    assert sorted(ids(emulator)) == sorted(seeded)
    assert sorted(ids(emulator, status_code="done")) == [
        "desktop",
        "mid-done",
        "new-done",
        "old-done",
    ]
    assert ids(emulator, status_code="processing") == ["processing"]
    assert ids(emulator, status_code="paused") == ["paused"]
    assert ids(emulator, status_code="failed") == ["failed"]
    # both bounds inclusive, to the millisecond the recording shows
    after = sorted(ids(emulator, created_at_after=seeded["mid-done"]))
    assert after == ["desktop", "mid-done", "new-done", "paused", "processing"]
    before = sorted(ids(emulator, created_at_before=seeded["mid-done"]))
    assert before == ["failed", "mid-done", "old-done", "paused"]
    assert sorted(ids(emulator, bot_id="bot-1")) == ["new-done", "processing"]
    assert ids(emulator, desktop_sdk_upload_id="upload-1") == ["desktop"]
    assert sorted(ids(emulator, metadata__team="a")) == ["mid-done", "old-done", "paused"]
    assert ids(emulator, metadata__team="a", metadata__kind="y") == ["mid-done"]  # all pairs
    assert ids(emulator, metadata__team="c") == []
    assert ids(emulator, bot_id="no-such-bot") == []


def test_filters_combined(emulator: EmulatorHandle, seeded: dict[str, str]) -> None:
    window = {
        "created_at_after": at(NOW - 2 * DAY - timedelta(hours=1)),
        "created_at_before": at(NOW - DAY),
    }
    assert sorted(ids(emulator, **window)) == ["mid-done", "new-done", "paused", "processing"]
    assert sorted(ids(emulator, status_code="done", **window)) == ["mid-done", "new-done"]
    assert ids(emulator, status_code="done", metadata__team="a", **window) == ["mid-done"]
    assert ids(emulator, status_code="processing", bot_id="bot-1", **window) == ["processing"]
    assert ids(emulator, status_code="done", bot_id="bot-1", metadata__team="a") == []


def test_a_recording_shows_what_recall_shows(
    emulator: EmulatorHandle, seeded: dict[str, str]
) -> None:
    shown = {r["id"]: r for r in walk(emulator)}
    done = shown["new-done"]
    assert set(done) >= {
        "id",
        "created_at",
        "started_at",
        "completed_at",
        "expires_at",
        "status",
        "metadata",
        "bot",
        "media_shortcuts",
    }
    assert done["created_at"] == seeded["new-done"].replace("Z", ".000Z")
    assert done["status"]["code"] == "done" and done["status"]["sub_code"] is None
    assert done["completed_at"] == done["status"]["updated_at"] >= done["started_at"]
    assert done["bot"] == {"id": "bot-1", "metadata": {}}
    assert done["metadata"] == {"team": "b"}
    assert done["media_shortcuts"] == {"transcript": None}
    assert shown["processing"]["completed_at"] is None
    assert shown["processing"]["status"]["code"] == "processing"
    assert shown["failed"]["status"] == {
        "code": "failed",
        "sub_code": "bot_kicked_from_call",
        "updated_at": shown["failed"]["completed_at"],
    }
    assert shown["desktop"]["bot"] is None


def test_a_cursor_walk_lists_every_recording_once_and_not_by_creation_time(
    emulator: EmulatorHandle,
) -> None:
    made = add(
        emulator, count=50, created_from=at(NOW - 3 * DAY), created_to=at(NOW), send_done=False
    )
    assert made["created"] == 50
    walked = walk(emulator)
    assert [r["id"] for r in walked] != [
        r["id"] for r in sorted(walked, key=lambda r: r["created_at"])
    ]
    assert sorted(r["id"] for r in walked) == sorted(made["ids"])
    # and back again, through `previous`
    body = page(emulator)
    while body["next"]:
        body = page(emulator, body["next"])
    backwards = list(reversed(body["results"]))
    while body["previous"]:
        body = page(emulator, body["previous"])
        backwards += reversed(body["results"])
    assert [r["id"] for r in backwards] == [r["id"] for r in reversed(walked)]


def test_pages_stay_put_while_recordings_are_added(emulator: EmulatorHandle) -> None:
    before = add(emulator, count=30, created_from=at(NOW - DAY), send_done=False)["ids"]
    body = page(emulator, status_code="done")
    seen = [r["id"] for r in body["results"]]
    while body["next"]:
        add(emulator, ids=[str(uuid.uuid4()) for _ in range(4)], send_done=False)
        body = page(emulator, body["next"])
        seen += [r["id"] for r in body["results"]]
    assert len(seen) == len(set(seen)), "a recording listed twice"
    assert set(before) <= set(seen), "a recording that was there all along was skipped"


def test_media_shortcuts_show_the_newest_transcript_not_deleted(emulator: EmulatorHandle) -> None:
    add(emulator, id="bare", send_done=False)
    add(emulator, id="transcribed", transcript=True, send_done=False)
    seeded = requests.post(
        f"{emulator.url}/_emulator/transcripts",
        json={"recording_id": "twice", "count": 2, "status": "done"},
        timeout=5,
    ).json()
    shortcuts = {r["id"]: r["media_shortcuts"]["transcript"] for r in walk(emulator)}
    assert shortcuts["bare"] is None
    assert shortcuts["transcribed"]["status"]["code"] == "done"
    assert shortcuts["transcribed"]["recording"]["id"] == "transcribed"
    assert shortcuts["twice"]["id"] == seeded[-1]["id"]
    deleted = requests.delete(
        f"{emulator.url}/api/v1/transcript/{seeded[-1]['id']}/", headers=AUTH, timeout=5
    )
    assert deleted.status_code == 204
    shortcuts = {r["id"]: r["media_shortcuts"]["transcript"] for r in walk(emulator)}
    assert shortcuts["twice"]["id"] == seeded[0]["id"]


@pytest.fixture
def webhooks_to_nowhere(emulator: EmulatorHandle) -> Iterator[list[str]]:
    """The emulator's webhooks go to a listener that answers 204 and notes each event."""
    received: list[str] = []

    @Request.application  # type: ignore[arg-type]
    def app(request: Request) -> Response:
        received.append(request.get_data(as_text=True))
        return Response(status=204)

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    requests.patch(
        f"{emulator.url}/_emulator/config",
        json={"webhook_urls": [f"http://127.0.0.1:{port}/webhooks/recall"]},
        timeout=5,
    ).raise_for_status()
    yield received
    server.shutdown()


def test_a_silent_finish_sends_no_webhook(
    emulator: EmulatorHandle, webhooks_to_nowhere: list[str]
) -> None:
    for recording_id in ("silent", "silent-too", "loud"):
        made = add(emulator, id=recording_id, status="processing")  # send_done left on
        assert made["completed_at"] is None
    for recording_id, body in (("silent", {"send_done": False}), ("silent-too", {"silent": True})):
        finished = requests.post(
            f"{emulator.url}/_emulator/recordings/{recording_id}/finish", json=body, timeout=5
        )
        assert finished.status_code == 200, finished.text
        assert finished.json()["status"]["code"] == "done"
        assert finished.json()["completed_at"] is not None
    loud = requests.post(f"{emulator.url}/_emulator/recordings/loud/finish", json={}, timeout=5)
    assert loud.status_code == 200

    def subjects() -> list[Any]:
        log = requests.get(f"{emulator.url}/_emulator/webhooks", timeout=5).json()
        return [entry["subject"] for entry in log if entry["event"] == "recording.done"]

    wait_for(lambda: "loud" in subjects(), 10, what="the loud recording's webhook")
    time.sleep(0.2)
    assert subjects() == ["loud"]
    assert len(webhooks_to_nowhere) == 1
    # all three are done at Recall, which is how reconciliation finds the silent ones
    assert sorted(ids(emulator, status_code="done")) == ["loud", "silent", "silent-too"]
    again = requests.post(f"{emulator.url}/_emulator/recordings/loud/finish", json={}, timeout=5)
    assert again.status_code == 409
    unknown = requests.post(f"{emulator.url}/_emulator/recordings/nope/finish", json={}, timeout=5)
    assert unknown.status_code == 404


def test_a_backfill_of_ten_thousand_over_three_days_is_one_quick_request(
    emulator: EmulatorHandle,
) -> None:
    started = time.monotonic()
    made = add(
        emulator,
        count=10_000,
        created_from=at(NOW - 3 * DAY),
        created_to=at(NOW),
        send_done=False,
        id_prefix="backfill-",
    )
    assert time.monotonic() - started < 10
    assert made["created"] == 10_000 and made["ids"][0] == "backfill-0"
    stats = requests.get(f"{emulator.url}/_emulator/stats", timeout=5).json()
    assert stats["recordings"] == 10_000 and stats["recordings_by_status"] == {"done": 10_000}
    requests.patch(f"{emulator.url}/_emulator/config", json={"page_size": 500}, timeout=5)
    last_day = walk(emulator, status_code="done", created_at_after=at(NOW - DAY))
    assert 3300 <= len(last_day) <= 3400
    now = datetime.now(UTC)
    assert all(datetime.fromisoformat(r["completed_at"]) <= now for r in last_day)
    calls = requests.get(f"{emulator.url}/_emulator/stats", timeout=5).json()["calls"]
    assert calls["recordings"] == 7  # 3333 recordings, 500 a page


def test_malformed_dates_and_statuses_are_400(emulator: EmulatorHandle) -> None:
    url = f"{emulator.url}/api/v1/recording/"
    for name in ("created_at_after", "created_at_before"):
        for bad in ("yesterday", "2025-13-01T00:00:00Z", "2025-01-01T25:00", "1700000000"):
            response = requests.get(url, params={name: bad}, headers=AUTH, timeout=5)
            assert response.status_code == 400, (name, bad)
            assert name in response.json()
    for good in ("2025-01-01", "2025-01-01T10:00:00Z", "2025-01-01T10:00:00.123+02:00", ""):
        response = requests.get(url, params={"created_at_after": good}, headers=AUTH, timeout=5)
        assert response.status_code == 200, good
    response = requests.get(url, params={"status_code": "finished"}, headers=AUTH, timeout=5)
    assert response.status_code == 400 and "status_code" in response.json()
    response = requests.get(url, params={"cursor": "not-ours"}, headers=AUTH, timeout=5)
    assert response.status_code == 400


def test_list_recordings_needs_the_api_key(emulator: EmulatorHandle) -> None:
    url = f"{emulator.url}/api/v1/recording/"
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, headers={"Authorization": "Token wrong"}, timeout=5).status_code == 401
    assert requests.get(url, headers={"Authorization": API_KEY}, timeout=5).status_code == 200
    assert requests.get(url, headers=AUTH, timeout=5).status_code == 200


def test_faults_target_list_recordings(emulator: EmulatorHandle) -> None:
    emulator.fault(target="recordings", action="status", status=503, times=1)
    url = f"{emulator.url}/api/v1/recording/"
    assert requests.get(url, headers=AUTH, timeout=5).status_code == 503
    assert requests.get(url, headers=AUTH, timeout=5).status_code == 200
    assert emulator.stats()["calls"]["recordings"] == 2


def test_the_controls_refuse_what_recall_would_not_hold(emulator: EmulatorHandle) -> None:
    url = f"{emulator.url}/_emulator/recordings"
    for body in (
        {"status": "finished"},
        {"created_at": "last week"},
        {"metadata": {"n": 1}},
        {"count": 0},
        {"count": 5, "created_from": at(NOW), "created_to": at(NOW - DAY)},
    ):
        assert requests.post(url, json=body, timeout=5).status_code == 400, body


def test_the_existing_recording_control_is_unchanged(emulator: EmulatorHandle) -> None:
    one = add(emulator, id="plain", send_done=False)
    assert one["id"] == "plain" and one["status"]["code"] == "done"
    many = add(emulator, ids=["m1", "m2"], send_done=False)
    assert [r["id"] for r in many] == ["m1", "m2"]
    assert (
        add(emulator, id="plain", status="processing", send_done=False)["status"]["code"] == "done"
    )


@pytest.fixture
def quota_emulator() -> Iterator[EmulatorHandle]:
    """An emulator with Recall's quotas on, every window a twentieth (a minute is 3 s)."""
    with serving_emulator(quotas=RECALL_QUOTAS, quota_scale=0.05) as handle:
        yield handle


def test_list_recordings_is_its_own_quota_of_60_a_minute(quota_emulator: EmulatorHandle) -> None:
    url = f"{quota_emulator.url}/api/v1/recording/"
    with requests.Session() as session:
        session.headers.update(AUTH)
        answers = [session.get(url, timeout=5) for _ in range(61)]
        assert [a.status_code for a in answers[:60]] == [200] * 60
        refused = answers[60]
        assert refused.status_code == 429
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 3  # the scaled minute
        # List Transcripts is another family: still answered
        assert session.get(f"{quota_emulator.url}/api/v1/transcript/", timeout=5).status_code == 200
        time.sleep(retry_after)
        assert session.get(url, timeout=5).status_code == 200
    stats = quota_emulator.stats()
    assert stats["throttled"] == {"recordings": 1}
    assert stats["calls"]["recordings"] == 62
