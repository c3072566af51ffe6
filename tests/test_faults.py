"""Faults, real processes: killed workers, restarted Redis, killed receiver, Recall errors."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from harness import System, recording_done, start_redis, transcript_event, wait_for
from tests.helpers import FAST_RECOVERY, queued_events


def assert_persisted_once(system: System, recording_id: str) -> None:
    """One transcript created by us for the recording, persisted byte for byte."""
    ours = [t for t in system.emulator.transcripts(recording_id) if t["metadata"].get("job_id")]
    assert len(ours) == 1, ours
    (transcript,) = ours
    path = system.store / recording_id / f"{transcript['id']}.json"
    assert path.read_bytes() == system.emulator.data(transcript["id"])


def calls(system: System, target: str) -> int:
    return int(system.emulator.stats()["calls"].get(target, 0))


@pytest.mark.parametrize("step", ["create", "await", "fetch", "remediate"])
def test_worker_killed_mid_step_job_finishes_on_another_worker_without_a_second_transcript(
    start_system: Any, step: str
) -> None:
    extra = {"RECALL_POLL_INITIAL_S": "0.5"} if step == "await" else {}
    system: System = start_system(**FAST_RECOVERY, **extra)
    emulator = system.emulator
    emulator.recording("r")
    target = {"create": "create", "await": "retrieve", "fetch": "download", "remediate": "delete"}[
        step
    ]
    if step == "remediate":
        emulator.seed("r", 10, "done")
    if step == "await":
        emulator.fault(target="webhook", action="drop", recording_id="r")
    emulator.fault(target=target, action="latency", seconds=2)
    before = calls(system, target)
    assert system.post(recording_done("r")).status_code == 200
    wait_for(lambda: calls(system, target) > before, 20, what=f"the {target} call in flight")
    system.workers[0].kill()
    system.start_worker("w2")
    wait_for(lambda: system.count("done") == 1, 40, what="job done on the second worker")
    assert_persisted_once(system, "r")
    if step == "remediate":
        live = [t for t in emulator.transcripts("r") if t["status"]["code"] != "deleted"]
        assert len(live) == 10


def test_a_job_whose_worker_died_mid_download_resumes_on_a_fresh_worker_within_a_lease(
    start_system: Any,
) -> None:
    """Default lease: the killed worker's lock expires (no heartbeat) and the sweeper re-drives
    the job; the Celery message it held is not needed (its visibility timeout is minutes)."""
    system: System = start_system(JOB_STEP_LEASE_S="15", SWEEP_INTERVAL_S="1")
    emulator = system.emulator
    emulator.recording("slow")
    emulator.fault(target="download", action="latency", seconds=120)
    assert system.post(recording_done("slow")).status_code == 200
    wait_for(lambda: calls(system, "download") == 1, 20, what="the download in flight")
    system.workers[0].kill()
    killed = time.monotonic()
    system.start_worker("w2")
    wait_for(lambda: system.count("done") == 1, 60, what="job done on the fresh worker")
    print(f"crash to persisted: {time.monotonic() - killed:.1f} s")
    assert_persisted_once(system, "slow")
    assert calls(system, "download") == 2 and calls(system, "create") == 1


def test_a_step_running_three_leases_never_gets_a_second_runner(start_system: Any) -> None:
    system: System = start_system(workers=2, JOB_STEP_LEASE_S="0.8", SWEEP_INTERVAL_S="0.1")
    emulator = system.emulator
    emulator.recording("long")
    # Three leases long, inside the client's read timeout (3 s here).
    emulator.fault(target="download", action="latency", seconds=2.5)
    assert system.post(recording_done("long")).status_code == 200
    wait_for(lambda: system.count("done") == 1, 30, what="job done")
    assert calls(system, "download") == 1
    assert_persisted_once(system, "long")


def test_redis_restart_loses_nothing_accepted(start_system: Any, tmp_path: Path) -> None:
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    proc, url = start_redis(tmp_path, *aof)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        system: System = start_system(workers=0, REDIS_URL=url, **FAST_RECOVERY)
        recordings = [f"rr-{i}" for i in range(20)]
        for recording_id in recordings[:10]:
            system.emulator.recording(recording_id)
            assert system.post(recording_done(recording_id)).status_code == 200
        proc.kill()  # accepted but not yet processed: only the AOF has them now
        proc, _ = start_redis(tmp_path, *aof, port=port)
        system.start_worker("w1")
        for recording_id in recordings[10:]:
            system.emulator.recording(recording_id)
            assert system.post(recording_done(recording_id)).status_code == 200
        proc.kill()  # again, with the pipeline mid-flight
        proc, _ = start_redis(tmp_path, *aof, port=port)
        wait_for(lambda: system.count("done") == 20, 30, what="all 20 jobs done after two restarts")
        for recording_id in recordings:
            assert_persisted_once(system, recording_id)
    finally:
        proc.kill()


def test_receiver_killed_with_requests_in_flight_keeps_every_event_it_acknowledged(
    start_system: Any,
) -> None:
    system: System = start_system(workers=0)
    client = redis.Redis.from_url(system.env["REDIS_URL"])
    answers: dict[str, int | None] = {}
    lock = threading.Lock()

    def send(index: int) -> None:
        msg_id = f"msg_kill_{index}"
        try:
            status: int | None = system.post(recording_done(f"k-{index}"), msg_id).status_code
        except requests.RequestException:
            status = None
        with lock:
            answers[msg_id] = status

    threads = [threading.Thread(target=send, args=(i,)) for i in range(300)]
    for index, thread in enumerate(threads):
        thread.start()
        if index == 150:
            system.processes["receiver"].kill()  # mid-burst
    for thread in threads:
        thread.join(30)
    acknowledged = [
        m for m, status in answers.items() if status is not None and 200 <= status < 300
    ]
    assert acknowledged and len(acknowledged) < 300
    queued = [event["data"]["recording"]["id"] for event in queued_events(client)]
    for msg_id in acknowledged:
        assert f"k-{msg_id.rsplit('_', 1)[1]}" in queued
    assert len(queued) == len(set(queued))  # nothing enqueued twice


def test_receiver_answers_503_while_redis_is_down(start_system: Any, tmp_path: Path) -> None:
    proc, url = start_redis(tmp_path)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        system: System = start_system(workers=0, REDIS_URL=url)
        assert system.post(recording_done("x")).status_code == 200
        proc.kill()
        assert system.post(recording_done("y")).status_code == 503
        assert requests.get(f"{system.receiver_url}/readyz", timeout=5).status_code == 503
        proc, _ = start_redis(tmp_path, port=port)
        wait_for(lambda: system.post(recording_done("y")).status_code == 200, 20, what="recovery")
    finally:
        proc.kill()


@pytest.mark.parametrize(
    "faults",
    [
        [{"target": "create", "action": "status", "status": 429, "retry_after": 1, "times": 2}],
        [{"target": "create", "action": "status", "status": 429, "times": 2}],
        [{"target": "create", "action": "status", "status": 503, "times": 3}],
        [{"target": "create", "action": "lose_response"}],
        [{"target": "create", "action": "latency", "seconds": 4}],  # the client times out at 3 s
        [{"target": "retrieve", "action": "status", "status": 502, "times": 4}],
        [{"target": "download", "action": "status", "status": 403}],  # expired URL: retrieve again
        [{"target": t, "action": "reset"} for t in ("create", "retrieve", "download")],
        [{"target": "webhook", "action": "duplicate", "times": -1}],
    ],
    ids=[
        "429-retry-after",
        "429-bare",
        "503",
        "answer-lost",
        "timeout",
        "retrieve-502",
        "expired-url",
        "connection-resets",
        "dup-webhooks",
    ],
)
def test_recall_errors_end_in_one_persisted_transcript(
    start_system: Any, faults: list[dict[str, Any]]
) -> None:
    system: System = start_system(**FAST_RECOVERY)
    system.emulator.recording("f")
    for fault in faults:
        system.emulator.fault(**fault)
    assert system.post(recording_done("f")).status_code == 200
    wait_for(lambda: system.count("done") == 1, 40, what="job done despite the fault")
    assert_persisted_once(system, "f")


def test_transcript_done_before_the_create_call_returned(start_system: Any) -> None:
    system: System = start_system(**FAST_RECOVERY)
    system.emulator.recording("early")
    system.emulator.fault(target="create", action="delay_response", seconds=1.5)
    assert system.post(recording_done("early")).status_code == 200
    wait_for(lambda: system.count("done") == 1, 30, what="job done")
    deliveries = requests.get(f"{system.emulator_url}/_emulator/webhooks", timeout=5).json()
    assert deliveries and deliveries[0]["status"] == 200  # delivered while create was still open
    assert_persisted_once(system, "early")
    assert calls(system, "retrieve") == 1  # no poll was needed


def test_late_and_duplicate_transcript_webhooks_change_nothing(start_system: Any) -> None:
    system: System = start_system(**FAST_RECOVERY)
    system.emulator.recording("late")
    assert system.post(recording_done("late")).status_code == 200
    wait_for(lambda: system.count("done") == 1, 30, what="job done")
    (job,) = system.jobs()
    late = transcript_event("transcript.done", "late", job["transcript_id"], {"job_id": job["id"]})
    for _ in range(3):
        assert system.post(late).status_code == 200
    failed = transcript_event(
        "transcript.failed", "late", job["transcript_id"], {"job_id": job["id"]}, "x"
    )
    assert system.post(failed).status_code == 200
    time.sleep(1)
    (after,) = system.jobs()
    assert after["state"] == "done" and after["updated_at"] == job["updated_at"]
    assert calls(system, "retrieve") == 1


def test_failed_transcript_is_recorded_with_its_sub_code(start_system: Any) -> None:
    system: System = start_system(**FAST_RECOVERY)
    system.emulator.recording("bad")
    system.emulator.fault(target="transcript", action="fail", sub_code="provider_connection_failed")
    assert system.post(recording_done("bad")).status_code == 200
    (job,) = wait_for(lambda: system.jobs("failed"), 30, what="job failed")
    assert job["error"]["code"] == "transcript_failed"
    assert job["error"]["sub_code"] == "provider_connection_failed"


def test_many_jobs_racing_on_one_recording_never_delete_a_transcript_in_use(
    start_system: Any,
) -> None:
    system: System = start_system(workers=2, **FAST_RECOVERY)
    emulator = system.emulator
    emulator.recording("busy")
    emulator.seed("busy", 6, "done")
    providers = [{f"p{i}_async": {}} for i in range(12)]
    for provider in providers:
        response = requests.post(
            f"{system.receiver_url}/api/v1/jobs",
            json={"recording_id": "busy", "provider": provider},
            headers={"Authorization": "Bearer test-token"},
            timeout=5,
        )
        assert response.status_code == 202
    wait_for(lambda: len(system.jobs("done")) == 12, 90, what="12 jobs done")
    transcripts = {t["id"]: t for t in emulator.transcripts("busy")}
    for job in system.jobs("done"):
        assert transcripts[job["transcript_id"]]["metadata"]["job_id"] == job["id"]
        assert (system.store / "busy" / f"{job['transcript_id']}.json").exists()
    deleted = [t for t in transcripts.values() if t["status"]["code"] == "deleted"]
    assert len(transcripts) - len(deleted) <= 10
    for transcript in deleted:  # each deleted done transcript was archived first
        assert (system.store / "busy" / f"{transcript['id']}.json").exists()
    owners = [t["metadata"]["job_id"] for t in transcripts.values() if t["metadata"].get("job_id")]
    assert sorted(owners) == sorted(job["id"] for job in system.jobs("done"))  # one each


def test_killing_a_worker_with_signal_term_requeues_nothing_twice(start_system: Any) -> None:
    system: System = start_system(**FAST_RECOVERY)
    for index in range(10):
        system.emulator.recording(f"t-{index}")
        assert system.post(recording_done(f"t-{index}")).status_code == 200
    system.workers[0].proc.send_signal(signal.SIGTERM)
    system.workers[0].proc.wait(30)
    system.start_worker("w2")
    wait_for(lambda: system.count("done") == 10, 40, what="all done after a warm shutdown")
    for index in range(10):
        assert_persisted_once(system, f"t-{index}")
