"""Redis fails over under a burst: a primary with AOF, replicas and three Sentinels, real processes
on loopback. The primary is SIGKILLed partway, or cut off from the rest while clients still reach
it; what was acknowledged stays, every recording is transcribed once, and processing resumes
seconds after the promotion."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from harness import System, free_port, http_ready, recording_done, signed, wait_for
from tasks.connection import redis_client
from tasks.jobs import indexes
from tasks.settings import Settings
from tests.cluster import Cluster, cluster, wait_until_promoted
from tests.helpers import reconfigure

# Timing-sensitive (their windows and rates are measured): one xdist worker runs them in turn.
pytestmark = pytest.mark.xdist_group("timing")

RECORDINGS = 120


class RecallSends:
    """As Recall does: each webhook again, 0.2 s apart, until a 2xx (a 503 while Redis switches),
    to each receiver in turn (as through a load balancer), the first one first."""

    def __init__(self, receivers: list[str]) -> None:
        self.receivers = receivers
        self.acknowledged: list[str] = []
        self.refused = [0] * len(receivers)  # by receiver
        self._lock = threading.Lock()
        self.stopped = threading.Event()  # the test failed: stop, so its own error is what shows

    def deliver(self, recording_id: str) -> None:
        body, headers = signed(recording_done(recording_id), msg_id=f"msg_{recording_id}")
        deadline = time.monotonic() + 150
        attempt = 0
        while time.monotonic() < deadline and not self.stopped.is_set():
            index = attempt % len(self.receivers)
            url = f"{self.receivers[index]}/webhooks/recall"
            try:
                status = requests.post(url, data=body, headers=headers, timeout=10).status_code
            except requests.RequestException:
                status = 0
            with self._lock:
                if status == 200:
                    self.acknowledged.append(recording_id)
                    return
                self.refused[index] += 1
            attempt += 1
            time.sleep(0.2)
        raise AssertionError(f"{recording_id} never accepted")


@pytest.fixture
def sentinels(tmp_path: Path) -> Any:
    found = cluster(tmp_path / "cluster")
    yield found
    found.stop()


def test_a_failover_mid_burst_loses_nothing_acknowledged_and_creates_nothing_twice(
    start_system: Any, sentinels: Cluster
) -> None:
    old = sentinels.primary_port
    assert sentinels.replica_ports
    system: System = start_system(
        workers=2,
        REDIS_URL=f"redis://127.0.0.1:{old}/0",  # through Sentinel, only its database counts
        REDIS_SENTINELS=sentinels.sentinels,
        REDIS_MIN_REPLICAS="1",
        JOB_STEP_LEASE_S="3",
        INBOX_RESEND_S="3",
        CELERY_VISIBILITY_TIMEOUT_S="5",
    )
    recordings = [f"fo-{index}" for index in range(RECORDINGS)]
    for recording_id in recordings:
        system.emulator.recording(recording_id)
    recall = RecallSends([system.receiver_url])
    acknowledged = recall.acknowledged
    client = redis.Redis.from_url(f"redis://127.0.0.1:{old}/0")
    with ThreadPoolExecutor(6) as pool:
        sent = [pool.submit(recall.deliver, r) for r in recordings]
        try:
            wait_for(lambda: len(acknowledged) >= RECORDINGS // 3, 60, what="a third accepted")
            done_before = indexes.count(client, "done")
            sentinels.kill(old)  # mid-burst, jobs in every phase
            killed = time.monotonic()
            promote_s = wait_until_promoted(sentinels, old)
            promoted = time.monotonic()
            fresh = redis.Redis.from_url(f"redis://127.0.0.1:{sentinels.primary()}/0")
            # Liveness only (a worker that never follows the promotion); bench/failover.py times it.
            wait_for(lambda: indexes.count(fresh, "done") > done_before, 45, what="a job")
            resume_s = time.monotonic() - promoted
            sentinels.start_server(old)  # the old primary comes back, as the new one's replica
            for future in sent:
                future.result()
        finally:
            recall.stopped.set()
    wait_for(lambda: indexes.count(fresh, "done") == RECORDINGS, 180, what="every job done")

    assert sorted(acknowledged) == sorted(recordings)
    assert indexes.count(fresh) == RECORDINGS and indexes.count(fresh, "failed") == 0
    for recording_id in recordings:
        ours = [t for t in system.emulator.transcripts(recording_id) if t["metadata"]]
        assert len(ours) == 1, (recording_id, ours)  # never a second transcript
        path = system.store / recording_id / f"{ours[0]['id']}.json"
        assert path.read_bytes() == system.emulator.data(ours[0]["id"])
    summary = {
        "recordings": RECORDINGS,
        "seconds to promote": round(promote_s, 1),
        "seconds from promotion to a job done": round(resume_s, 1),
        "seconds from the kill to every job done": round(time.monotonic() - killed, 1),
        "webhooks refused during the switch": recall.refused[0],
    }
    print(json.dumps(summary))  # the figures bench/failover.py reports; no timing is asserted


def test_a_primary_cut_off_from_the_rest_acknowledges_nothing_and_creates_nothing(
    start_system: Any, tmp_path: Path
) -> None:
    """A partition: the primary and the clients that still reach it (a receiver and a worker
    with its address) on one side; two replicas, three Sentinels and the rest of the fleet on
    the other. "Recall" sends each webhook to either receiver until one answers 2xx."""
    nodes = cluster(tmp_path / "cluster", replicas=2, partitionable=True)
    link = nodes.link
    assert link is not None
    try:
        system: System = start_system(
            workers=2,
            REDIS_URL="redis://127.0.0.1/0",  # through Sentinel, only its database counts
            REDIS_SENTINELS=nodes.sentinels,
            REDIS_MIN_REPLICAS="1",
            JOB_STEP_LEASE_S="3",
            INBOX_RESEND_S="3",
            CELERY_VISIBILITY_TIMEOUT_S="5",
        )
        cut_off = _cut_off_side(system, f"redis://127.0.0.1:{nodes.primary_port}/0")
        try:
            _partitioned_burst(system, nodes, link, cut_off)
        finally:
            cut_off.stop()
    finally:
        nodes.stop()


def _cut_off_side(system: System, primary_url: str) -> System:
    """A receiver and a worker that reach the primary at its address, not through Sentinel."""
    env = {**system.env, "REDIS_URL": primary_url, "REDIS_SENTINELS": ""}
    port = free_port()
    side = System(system.workdir, env, system.emulator_url, f"http://127.0.0.1:{port}")
    side.start("receiver-cut", ["receiver", "--port", str(port)])
    wait_for(http_ready(f"{side.receiver_url}/healthz"), 20, what="the cut-off receiver up")
    side.start_worker("cut")
    return side


def _partitioned_burst(system: System, nodes: Cluster, link: Any, cut_off: System) -> None:
    recordings = [f"pt-{index}" for index in range(60)]
    for recording_id in recordings:
        system.emulator.recording(recording_id)
    recall = RecallSends([cut_off.receiver_url, system.receiver_url])  # the cut-off one first
    acknowledged = recall.acknowledged
    old = redis.Redis(port=nodes.primary_port)
    try:
        with ThreadPoolExecutor(6) as pool:
            sent = [pool.submit(recall.deliver, r) for r in recordings]
            wait_for(lambda: len(acknowledged) >= 20, 60, what="a third accepted")
            done_before = indexes.count(old, "done")
            link.cut()
            refused_before = recall.refused[0]
            promote_s = wait_until_promoted(nodes, link.port)
            promoted = time.monotonic()
            fresh = redis.Redis(port=nodes.primary())
            wait_for(lambda: indexes.count(fresh, "done") > done_before, 30, what="a job")
            resume_s = time.monotonic() - promoted
            for future in sent:  # the rest of the fleet goes on: everything gets accepted
                future.result()
        time.sleep(3)  # and the cut-off side keeps trying a little longer
    finally:
        link.heal()
    healed = time.monotonic()
    wait_for(lambda: old.info("replication")["role"] == "slave", 60, what="old primary rejoined")
    rejoin_s = time.monotonic() - healed
    wait_for(lambda: indexes.count(fresh, "done") == len(recordings), 120, what="all done")

    refused_by_cut_off = recall.refused[0] - refused_before
    assert refused_by_cut_off > 0  # the cut-off side was asked, and said no
    assert sorted(acknowledged) == sorted(recordings)
    assert indexes.count(fresh) == len(recordings) and indexes.count(fresh, "failed") == 0
    for recording_id in recordings:
        ours = [t for t in system.emulator.transcripts(recording_id) if t["metadata"]]
        assert len(ours) == 1, (recording_id, ours)
        path = system.store / recording_id / f"{ours[0]['id']}.json"
        assert path.read_bytes() == system.emulator.data(ours[0]["id"])
    summary = {
        "recordings": len(recordings),
        "seconds to promote": round(promote_s, 1),
        "seconds from promotion to a job done": round(resume_s, 1),
        "seconds from the heal to the old primary a replica": round(rejoin_s, 1),
        "webhooks the cut-off side refused": refused_by_cut_off,
    }
    print(json.dumps({"partition": summary}))


def test_a_command_retried_on_its_own_connection_reaches_the_promoted_primary(
    tmp_path: Path, settings: Settings
) -> None:
    """A partition cuts the primary off while a worker's connection is open: the command times
    out, and its retry reconnects that same connection. redis-py reconnected it to the address it
    had (the old primary, silent), retry after retry, for as long as the partition lasted: steps
    stalled 20-30 s after the promotion. Ours asks the Sentinels again on every reconnection."""
    nodes = cluster(tmp_path / "cluster", replicas=2, partitionable=True)
    link = nodes.link
    assert link is not None
    try:
        sentinel = reconfigure(
            settings, REDIS_URL="redis://127.0.0.1/0", REDIS_SENTINELS=nodes.sentinels
        )
        client = redis_client(sentinel, patient=True)
        client.set("mark", "before")  # its connection is open, to the primary through the link
        link.cut()
        wait_until_promoted(nodes, link.port)
        started = time.monotonic()
        client.set("mark", "after")  # times out on the cut-off primary, then retries
        took = time.monotonic() - started
        assert redis.Redis(port=nodes.primary()).get("mark") == b"after"
        assert took < 15, took  # one socket timeout (5 s) and a retry, not the partition's length
    finally:
        link.heal()
        nodes.stop()
