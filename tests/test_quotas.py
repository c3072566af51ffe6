"""Recall's quotas as the ceiling: a burst on the hour, paced by the fleet, nothing failed."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from emulator.config import EmulatorConfig
from emulator.quotas import RECALL_QUOTAS, scaled
from emulator.server import create_emulator
from harness import System, recording_done, wait_for
from tasks import keys
from tasks.jobs import indexes

# Timing-sensitive (their windows and rates are measured): one xdist worker runs them in turn.
pytestmark = pytest.mark.xdist_group("timing")

BURST = 120
SCALE = 1 / 6  # every quota window: 1 min -> 10 s
# Recall's, and a workspace whose retrieve and list quotas the burst exceeds several times over.
QUOTAS = {"recall": RECALL_QUOTAS, "tight": "create=5/60,retrieve=40/60,list=12/60,delete=12/60"}


@pytest.mark.parametrize("quotas", QUOTAS)
def test_a_burst_of_recordings_under_recalls_quotas_is_paced_not_failed(
    start_system: Any, quotas: str
) -> None:
    system: System = start_system(
        workers=2,
        emulator_args=(
            "--quotas",
            QUOTAS[quotas],
            "--quota-scale",
            f"{SCALE:.6f}",
            "--seed",
            "7",
        ),
        RECALL_RATE_LIMITS=os.environ.get("TEST_RATE_LIMITS") or scaled(QUOTAS[quotas], SCALE),
        RECALL_POLL_INITIAL_S="3",
        RECALL_POLL_MAX_S="6",
    )
    emulator = system.emulator
    recordings = [f"burst-{index}" for index in range(BURST)]
    for index, recording_id in enumerate(recordings):
        emulator.recording(recording_id)
        if index % 20 == 0:  # at the limit: remediation lists and deletes
            emulator.seed(recording_id, 10, "done")
    emulator.fault(target="create", action="lose_response", probability=0.1, times=-1)
    emulator.fault(target="webhook", action="drop", probability=0.2, times=-1)

    def deliver(recording_id: str) -> int:
        return system.post(recording_done(recording_id)).status_code

    with ThreadPoolExecutor(8) as pool:  # all at once, as meetings end on the hour
        assert set(pool.map(deliver, recordings)) == {200}

    client = redis.Redis.from_url(system.env["REDIS_URL"], decode_responses=True)
    wait_for(lambda: indexes.count(client, "done") == BURST, 240, what="every job done")
    assert indexes.count(client, "failed") == 0
    for recording_id in recordings:
        ours = [t for t in emulator.transcripts(recording_id) if t["metadata"].get("job_id")]
        assert len(ours) == 1, recording_id
        path = system.store / recording_id / f"{ours[0]['id']}.json"
        assert path.read_bytes() == emulator.data(ours[0]["id"])
    stats = emulator.stats()
    api = ("create", "retrieve", "list", "delete")  # downloads are not API calls
    calls = sum(stats["calls"].get(family, 0) for family in api)
    throttled = sum(stats["throttled"].values())
    print(json.dumps({"calls": stats["calls"], "throttled": stats["throttled"]}))
    assert throttled <= 0.01 * calls  # Recall refuses almost nothing: we pace within its window


def test_recall_enforcing_less_than_declared_costs_few_429s_and_no_job(start_system: Any) -> None:
    """Another application shares the key: Recall gives 4 retrieves per 0.5 s (windows x 0.1),
    the settings declare its documented 300 per minute. The first 429 pauses the fleet (alone,
    it may be another application's burst); a second one soon after teaches the fleet Recall's
    pace. So at most two bursts meet 429s, each at most the fleet's 16 threads less Recall's 4,
    and then calls stop meeting them: every job persisted, and after those two bursts at most a
    twentieth of the retrieves refused (without learning, about half of all the retrieves are,
    in burst after burst)."""
    jobs = 60
    system: System = start_system(
        workers=2,
        emulator_args=("--quotas", "create=5/60,retrieve=4/5,list=60/60,delete=60/60"),
    )  # RECALL_RATE_LIMITS: Recall's documented quotas, x QUOTA_SCALE as the emulator's windows
    recordings = [f"shared-{index}" for index in range(jobs)]
    for recording_id in recordings:
        system.emulator.recording(recording_id)
        assert system.post(recording_done(recording_id)).status_code == 200

    client = redis.Redis.from_url(system.env["REDIS_URL"], decode_responses=True)
    wait_for(lambda: indexes.count(client, "done") == jobs, 60, what="every job done")
    assert indexes.count(client, "failed") == 0
    stats = system.emulator.stats()
    calls, refused_at = stats["calls"]["retrieve"], stats["throttled_at"].get("retrieve", [])
    bursts = _bursts(refused_at, gap=0.5)
    print(json.dumps({"retrieve calls": calls, "refused": [len(b) for b in bursts]}))
    assert bursts and all(len(burst) <= 16 - 4 for burst in bursts[:2])
    assert sum(len(burst) for burst in bursts[2:]) <= 0.05 * calls
    assert float(client.hget(keys.METRIC_RATE_LIMITED, "retrieve|default") or 0) > 0


def _bursts(times: list[float], gap: float) -> list[list[float]]:
    """`times` (ascending) grouped where more than `gap` seconds separate two."""
    bursts: list[list[float]] = []
    for at in times:
        if bursts and at - bursts[-1][-1] <= gap:
            bursts[-1].append(at)
        else:
            bursts.append([at])
    return bursts


def test_the_emulator_answers_every_read_over_its_quota_429_with_retry_after() -> None:
    """Its own quotas, whatever the fleet declares: Retrieve, List and Delete as well as Create."""
    app = create_emulator(
        EmulatorConfig("http://127.0.0.1", quotas="retrieve=1/60,list=1/60,delete=1/60")
    )
    client = app.test_client()
    for method, path in [
        ("GET", "/api/v1/transcript/t1/"),
        ("GET", "/api/v1/transcript/?recording_id=r1"),
        ("DELETE", "/api/v1/transcript/t1/"),
    ]:
        first = client.open(path, method=method, headers={"Authorization": "Token k"})
        second = client.open(path, method=method, headers={"Authorization": "Token k"})
        assert first.status_code != 429, path
        assert second.status_code == 429 and second.headers["Retry-After"] == "60", path
    app.extensions["emulator"].scheduler.stop()
