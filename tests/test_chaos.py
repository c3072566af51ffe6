"""Chaos: every fault at once over many recordings, with a fixed seed.

CI runs 200 recordings. A soak run is one variable away:
`CHAOS_RECORDINGS=2000 .venv/bin/pytest tests/test_chaos.py -s` (`CHAOS_SEED` picks the seed).
"""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import requests

from harness import System, recording_done, signed, start_redis, wait_for
from tasks import keys
from tasks.jobs import indexes
from tasks.jobs.record import fields
from tasks.jobs.views import JobError
from tests.helpers import FAST_RECOVERY

# Timing-sensitive (their windows and rates are measured): one xdist worker runs them in turn.
pytestmark = pytest.mark.xdist_group("timing")

RECORDINGS = int(os.environ.get("CHAOS_RECORDINGS", "200"))
SEED = int(os.environ.get("CHAOS_SEED", "20261125"))
TERMINAL = ("done", "failed")

# Each fault fires at random with its probability, for as long as the run lasts.
FAULTS: list[dict[str, Any]] = [
    {
        "target": "create",
        "action": "status",
        "status": 429,
        "retry_after": 0.2,
        "probability": 0.05,
    },
    {"target": "create", "action": "status", "status": 429, "probability": 0.03},
    {"target": "create", "action": "status", "status": 503, "probability": 0.05},
    {"target": "create", "action": "lose_response", "probability": 0.05},
    {"target": "create", "action": "delay_response", "seconds": 1.0, "probability": 0.03},
    {"target": "create", "action": "latency", "seconds": 4, "probability": 0.01},  # > HTTP timeout
    {"target": "retrieve", "action": "status", "status": 502, "probability": 0.05},
    {"target": "list", "action": "status", "status": 503, "probability": 0.05},
    {"target": "delete", "action": "status", "status": 503, "probability": 0.1},
    {"target": "download", "action": "status", "status": 403, "probability": 0.05},
    {"target": "download", "action": "status", "status": 503, "probability": 0.05},
    {"target": "retrieve", "action": "reset", "probability": 0.03},
    {"target": "download", "action": "reset", "probability": 0.03},
    {"target": "create", "action": "reset", "probability": 0.03},
    {"target": "webhook", "action": "drop", "probability": 0.1},
    {"target": "webhook", "action": "duplicate", "probability": 0.1},
    {"target": "webhook", "action": "delay", "seconds": 2, "probability": 0.1},
    {"target": "transcript", "action": "fail", "probability": 0.05},
]


def _deliver(url: str, event: dict[str, Any], msg_id: str, deadline: float) -> None:
    """Deliver a webhook as Recall does: retry until a 2xx (503s come while Redis is away)."""
    body, headers = signed(event, msg_id=msg_id)
    while time.monotonic() < deadline:
        try:
            if requests.post(url, data=body, headers=headers, timeout=5).status_code < 300:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"webhook {msg_id} never accepted")


@pytest.mark.timeout(300 + RECORDINGS)
def test_chaos_every_job_ends_once_with_its_transcript(start_system: Any, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    redis_proc, redis_url = start_redis(tmp_path, *aof)
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    started = time.monotonic()
    try:
        system: System = start_system(
            workers=2,
            emulator_args=("--seed", str(SEED)),
            REDIS_URL=redis_url,
            RECALL_POLL_INITIAL_S="2",
            RECALL_POLL_MAX_S="4",
            **FAST_RECOVERY,
        )
        emulator = system.emulator
        recordings = [f"chaos-{index}" for index in range(RECORDINGS)]
        for index, recording_id in enumerate(recordings):
            emulator.recording(recording_id)
            if index % 10 == 0:  # at the limit: remediation must free a slot
                emulator.seed(recording_id, 7, "done")
                emulator.seed(recording_id, 3, rng.choice(["done", "failed"]))
        for fault in FAULTS:
            emulator.fault(times=-1, **fault)

        # Each recording.done twice under one webhook id, and for some a third time as a new one.
        deliveries = [(r, f"msg_{r}") for r in recordings for _ in range(2)]
        deliveries += [(r, f"msg_{r}_again") for r in recordings if rng.random() < 0.2]
        rng.shuffle(deliveries)
        url = f"{system.receiver_url}/webhooks/recall"
        deadline = time.monotonic() + 120
        third = len(deliveries) // 3
        with ThreadPoolExecutor(8) as pool:
            for start in range(0, len(deliveries), 40):  # in waves, so the faults land mid-flight
                wave = deliveries[start : start + 40]
                for done in [
                    pool.submit(_deliver, url, recording_done(r), msg_id, deadline)
                    for r, msg_id in wave
                ]:
                    done.result()
                if start <= third < start + 40:  # a worker dies mid-flight; another takes over
                    system.workers[0].kill()
                    system.start_worker("w3")
                if (
                    start <= 2 * third < start + 40
                ):  # Redis restarts; its AOF keeps what was accepted
                    redis_proc.kill()
                    redis_proc, _ = start_redis(tmp_path, *aof, port=port)
                    system.workers[1].kill()
                    system.start_worker("w4")
        client = redis.Redis.from_url(redis_url, decode_responses=True)

        def unfinished() -> int:
            terminal = indexes.count(client, *TERMINAL)
            return len(recordings) - terminal

        wait_for(lambda: unfinished() == 0, 120 + RECORDINGS / 2, what="every job finished")
        elapsed = time.monotonic() - started
        whole = redis.Redis.from_url(redis_url)  # a finished job keeps long values in parts
        found = whole.scan_iter(f"{keys.JOB_PREFIX}*", count=1000)
        jobs = [fields(cast(dict[bytes, bytes], whole.hgetall(key))) for key in found]
        assert len(jobs) == len(recordings)  # one job per recording, whatever the duplicates
        outcomes: dict[str, int] = {}
        ours_per_recording: dict[str, int] = {}
        for recording_id in recordings:
            transcripts = emulator.transcripts(recording_id)
            ours = [t for t in transcripts if t["metadata"].get("job_id")]
            ours_per_recording[recording_id] = len(ours)
        assert max(ours_per_recording.values()) == 1  # never a second transcript for a job
        for job in jobs:
            assert job["state"] in TERMINAL
            outcomes[job["state"]] = outcomes.get(job["state"], 0) + 1
            if job["state"] == "failed":  # only for the injected final fault, with its reason
                error = json.loads(job["error"])
                assert error["code"] == "transcript_failed" and error["sub_code"], job
                (transcript,) = [
                    t
                    for t in emulator.transcripts(job["recording_id"])
                    if t["id"] == job["transcript_id"]
                ]
                assert transcript["status"]["code"] == "failed"
                continue
            path = system.store / job["recording_id"] / f"{job['transcript_id']}.json"
            assert path.read_bytes() == emulator.data(job["transcript_id"])
        # Every accepted event is applied, late ones (delayed, duplicated webhooks) included.
        wait_for(lambda: client.hlen(keys.INBOX) == 0, 60, what="every accepted event applied")
        stats = emulator.stats()
        summary = {
            "recordings": RECORDINGS,
            "seed": SEED,
            "seconds": round(elapsed, 1),
            "outcomes": outcomes,
            "failure_reasons": sorted(
                {
                    JobError.model_validate_json(j["error"]).message
                    for j in jobs
                    if j["state"] == "failed"
                }
            ),
            "webhooks_delivered": len(deliveries),
            "recall_calls": stats["calls"],
            "recall_throttled": stats["throttled"],
            "transcripts_created_by_us": sum(ours_per_recording.values()),
        }
        print(json.dumps(summary, indent=2))
        (tmp_path / "chaos-summary.json").write_text(json.dumps(summary, indent=2))
    finally:
        redis_proc.kill()
