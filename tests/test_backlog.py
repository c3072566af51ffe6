"""A backlog, as on the hour: each step is sent once and calls Recall once, however long the
queue waits (longer than a lease here)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import requests

from harness import System, wait_for
from tasks.jobs import indexes
from tasks.names import PIPELINE_QUEUE

RECORDINGS = 60


def test_a_backlog_longer_than_a_lease_sends_each_step_once(start_system: Any) -> None:
    """60 recordings on one worker with 2 threads, every Recall call taking 250 ms: the queue
    waits about 20 s, ten leases. The sweeper must not send a step again while its message
    waits, and a copy must do nothing."""
    system: System = start_system(
        workers=0,
        emulator_args=("--latency-s", "0.25"),
        JOB_STEP_LEASE_S="2",
        RECALL_POLL_INITIAL_S="120",
    )
    system.start_worker("w1", "--concurrency", "2")
    client = redis.Redis.from_url(system.env["REDIS_URL"], decode_responses=True)
    recordings = [f"backlog-{index}" for index in range(RECORDINGS)]
    for recording_id in recordings:
        system.emulator.recording(recording_id)

    deepest, stop = [0], threading.Event()

    def watch_the_queue() -> None:
        while not stop.wait(0.1):
            deepest[0] = max(deepest[0], int(client.llen(PIPELINE_QUEUE)))

    watcher = threading.Thread(target=watch_the_queue, daemon=True)
    watcher.start()
    url = f"{system.receiver_url}/api/v1/jobs"

    def submit(recording_id: str) -> int:  # each sends its create step at once
        body = {"recording_id": recording_id}
        auth = {"Authorization": "Bearer test-token"}
        return requests.post(url, json=body, headers=auth, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(submit, recordings)) == {202}
    wait_for(lambda: indexes.count(client, "done") == RECORDINGS, 180, what="every job done")
    stop.set()
    watcher.join(5)

    calls = system.emulator.stats()["calls"]
    print(json.dumps({"calls": calls, "deepest queue": deepest[0]}))
    assert calls["create"] <= 1.05 * RECORDINGS
    assert calls["retrieve"] <= 1.3 * RECORDINGS
    assert deepest[0] <= RECORDINGS + 5  # about one message per job, never a copy per lease
