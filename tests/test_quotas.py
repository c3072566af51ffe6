"""Recall's quotas as the ceiling: a burst on the hour, paced by the fleet, nothing failed."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests

from emulator.quotas import RECALL_QUOTAS, scaled
from tasks import keys
from tests.conftest import System
from tests.helpers import recording_done, signed, wait_for

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

    url = f"{system.receiver_url}/webhooks/recall"

    def deliver(recording_id: str) -> int:
        body, headers = signed(recording_done(recording_id))
        return requests.post(url, data=body, headers=headers, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:  # all at once, as meetings end on the hour
        assert set(pool.map(deliver, recordings)) == {200}

    client = redis.Redis.from_url(system.env["REDIS_URL"], decode_responses=True)
    wait_for(lambda: client.zcard(keys.state("done")) == BURST, 240, what="every job done")
    assert client.zcard(keys.state("failed")) == 0
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
