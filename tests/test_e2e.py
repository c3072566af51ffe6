"""The whole system as real processes: emulator, receiver, worker, Redis, all over loopback."""

from __future__ import annotations

import json
from typing import Any

import redis
import requests

from harness import System, recording_done, wait_for
from tasks import keys


def test_fifty_recordings_each_delivered_twice_persist_fifty_transcripts_created_once(
    start_system: Any,
) -> None:
    system: System = start_system()
    recordings = [f"rec-{i:02d}" for i in range(50)]
    for recording_id in recordings:
        system.emulator.recording(recording_id)
        event, msg_id = recording_done(recording_id), f"msg_{recording_id}"
        first, second = system.post(event, msg_id), system.post(event, msg_id)
        assert (first.status_code, first.json()["status"]) == (200, "enqueued")
        assert (second.status_code, second.json()["status"]) == (200, "duplicate")

    wait_for(lambda: system.count("done") == 50, 90, what="50 jobs done")

    stats = system.emulator.stats()
    assert stats["created_by_recording"] == {rid: 1 for rid in recordings}
    assert stats["calls"]["create"] == 50
    for recording_id in recordings:
        (transcript,) = system.emulator.transcripts(recording_id)
        job = system.job_of(recording_id)
        assert job["state"] == "done" and job["transcript_id"] == transcript["id"]
        folder = system.store / recording_id
        assert (folder / f"{transcript['id']}.json").read_bytes() == system.emulator.data(
            transcript["id"]
        )
        meta = json.loads((folder / f"{transcript['id']}.meta.json").read_text())
        assert meta["id"] == transcript["id"] and meta["job_id"] == job["id"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [f"{transcript['id']}.json", f"{transcript['id']}.meta.json"]
        )


def test_recording_at_the_limit_is_remediated_failed_first_then_oldest_archived(
    start_system: Any,
) -> None:
    system: System = start_system()
    emulator = system.emulator
    emulator.recording("full")
    done = emulator.seed("full", 9, "done")
    (failed,) = emulator.seed("full", 1, "failed")
    oldest_data = emulator.data(done[0]["id"])

    assert system.post(recording_done("full")).status_code == 200
    wait_for(lambda: system.count("done") == 1, 30, what="first job done")
    by_id = {t["id"]: t for t in emulator.transcripts("full")}
    assert by_id[failed["id"]]["status"]["code"] == "deleted"
    assert all(by_id[t["id"]]["status"]["code"] == "done" for t in done)

    # A second job (another provider, so another idempotency key) must archive the oldest done one.
    response = requests.post(
        f"{system.receiver_url}/api/v1/jobs",
        json={"recording_id": "full", "provider": {"deepgram_async": {}}},
        headers={"Authorization": "Bearer test-token"},
        timeout=5,
    )
    assert response.status_code == 202
    wait_for(lambda: system.count("done") == 2, 30, what="second job done")
    by_id = {t["id"]: t for t in emulator.transcripts("full")}
    assert by_id[done[0]["id"]]["status"]["code"] == "deleted"
    assert (system.store / "full" / f"{done[0]['id']}.json").read_bytes() == oldest_data
    archived_meta = json.loads((system.store / "full" / f"{done[0]['id']}.meta.json").read_text())
    assert archived_meta["id"] == done[0]["id"]
    assert sum(t["status"]["code"] != "deleted" for t in by_id.values()) == 10


def test_dropped_transcript_webhook_is_caught_by_polling(start_system: Any) -> None:
    system: System = start_system(RECALL_POLL_INITIAL_S="1")
    system.emulator.recording("quiet")
    system.emulator.fault(target="webhook", action="drop", recording_id="quiet")
    assert system.post(recording_done("quiet")).status_code == 200

    wait_for(lambda: system.count("done") == 1, 30, what="job done by polling")
    stats = system.emulator.stats()
    assert stats["created_by_recording"] == {"quiet": 1}
    assert stats["calls"]["retrieve"] >= 2  # at least one poll, then the fetch
    delivered = requests.get(f"{system.emulator_url}/_emulator/webhooks", timeout=5).json()
    assert delivered == []
    (transcript,) = system.emulator.transcripts("quiet")
    assert (
        system.store / "quiet" / f"{transcript['id']}.json"
    ).read_bytes() == system.emulator.data(transcript["id"])


def test_a_recording_whose_metadata_looks_like_a_kombu_type_tag_is_transcribed(
    start_system: Any,
) -> None:
    """Recall passes bot metadata through: it is the user's, whatever its keys."""
    system: System = start_system()
    system.emulator.recording("tagged")
    event = recording_done("tagged")
    event["data"]["recording"]["metadata"] = {"__type__": "unknown", "__value__": 1}
    event["data"]["bot"]["metadata"] = {"__type__": "bytes", "__value__": "x"}
    assert system.post(event).status_code == 200
    wait_for(lambda: system.count("done") == 1, 30, what="the job done")
    client = redis.Redis.from_url(system.env["REDIS_URL"])
    assert client.hlen(keys.INBOX) == 0 and client.hlen(keys.INBOX_DEAD) == 0
