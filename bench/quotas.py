"""Recall's quotas as the ceiling: a burst of recordings against the bound the quotas imply, the
429s a quota tighter than declared costs, and how long a job whose worker died takes to resume."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.pipeline import start_system
from emulator.quotas import RECALL_QUOTAS, parse_quotas, scaled
from harness import API_TOKEN, deliver_recordings_done, wait_for

FAMILIES = ("create", "retrieve", "list", "delete")


def _persist_all(
    workdir: Path, prefix: str, recordings: int, scale: float, quotas: str, declared: str
) -> tuple[float, dict[str, Any]]:
    """`recordings` finished at once, two worker processes, Recall enforcing `quotas` with every
    window x `scale`, the fleet pacing itself to `declared`: seconds until all are persisted,
    and the emulator's counters."""
    system = start_system(
        workdir,
        workers=2,
        quotas=quotas,
        quota_scale=scale,
        RECALL_POLL_INITIAL_S="600",
        RECALL_RATE_LIMITS=declared,
    )
    try:
        seconds = system.persist_all([f"{prefix}-{index}" for index in range(recordings)])
        return seconds, system.emulator.stats()
    finally:
        system.stop()


def _retrieve_bound(quotas: str, recordings: int, scale: float) -> tuple[int, float, float]:
    """Retrieve's (count, window) under `quotas` x `scale`, and the least time `recordings`
    fetches take: its sliding window lets the k-th call go no earlier than k // count windows in."""
    count, window = parse_quotas(quotas)["retrieve"]
    window *= scale
    return count, window, ((recordings - 1) // count) * window


def burst(workdir: Path, recordings: int, scale: float) -> dict[str, Any]:
    """Recall's quotas on both sides; each job needs one retrieve (its fetch)."""
    declared = scaled(RECALL_QUOTAS, scale)
    seconds, stats = _persist_all(workdir, "q", recordings, scale, RECALL_QUOTAS, declared)
    count, window, bound = _retrieve_bound(RECALL_QUOTAS, recordings, scale)
    calls = {f: stats["calls"].get(f, 0) for f in FAMILIES}
    throttled = sum(stats["throttled"].values())
    return {
        "recordings": recordings,
        "quota windows": f"x {scale:.3f} (retrieve {count} per {window:g} s)",
        "seconds to all persisted": round(seconds, 1),
        "bound the quota sets (s)": bound,
        "x bound": round(seconds / bound, 2) if bound else None,
        "throttled share": round(throttled / max(1, sum(calls.values())), 4),
        "calls per job": {f: round(n / recordings, 2) for f, n in calls.items() if n},
    }


SHARED = "create=5/60,retrieve=4/5,list=60/60,delete=60/60"


def shared_key(workdir: Path, recordings: int, scale: float) -> dict[str, Any]:
    """Recall enforcing less than the settings declare (another application on the key): it
    gives 4 retrieves per 5 s, the fleet declares the documented 300 per minute, windows x
    `scale` on both sides. The share of calls Recall refused while the fleet learned its pace."""
    declared = scaled(RECALL_QUOTAS, scale)
    seconds, stats = _persist_all(workdir, "sk", recordings, scale, SHARED, declared)
    count, window, bound = _retrieve_bound(SHARED, recordings, scale)
    calls = sum(stats["calls"].get(f, 0) for f in FAMILIES)
    retrieves, refused = stats["calls"].get("retrieve", 0), stats["throttled"].get("retrieve", 0)
    return {
        "recordings": recordings,
        "quota windows": f"x {scale:.3f} (Recall: retrieve {count} per {window:.3g} s; "
        f"declared: 300 per {60 * scale:g} s)",
        "seconds to all persisted": round(seconds, 1),
        "bound Recall's quota sets (s)": round(bound, 1),
        "x bound": round(seconds / bound, 2) if bound else None,
        "retrieves": retrieves,
        "retrieves refused (429)": refused,
        "throttled share (retrieve)": round(refused / max(1, retrieves), 4),
        "throttled share (all calls)": round(sum(stats["throttled"].values()) / max(1, calls), 4),
    }


def crash_to_resumed(workdir: Path, runs: int) -> dict[str, Any]:
    """A worker SIGKILLed mid-download, a fresh one started at once: seconds until persisted,
    with the default lease (JOB_STEP_LEASE_S) and sweep interval."""
    times = [_crash_once(workdir / f"crash-{run}", f"crash-{run}") for run in range(runs)]
    return {"runs (s)": times, "worst (s)": max(times), "target (s)": 20}


def _crash_once(workdir: Path, recording_id: str) -> float:
    system = start_system(workdir, quotas="none")
    try:
        system.emulator.recordings([recording_id])
        system.emulator.fault(target="download", action="latency", seconds=300)
        deliver_recordings_done(system.receiver_url, [recording_id])
        in_flight = lambda: system.emulator.stats()["calls"].get("download", 0) >= 1  # noqa: E731
        wait_for(in_flight, 60, what="a download in flight")
        system.processes["worker-w1"].kill()
        killed = time.monotonic()
        system.start_worker("w2", wait=False)  # not waited for: its start-up counts
        wait_for(lambda: system.count("done") >= 1, 120, what="persisted by the fresh worker")
        return round(time.monotonic() - killed, 1)
    finally:
        system.stop()


TIGHT = "create=5/60,retrieve=40/60,list=12/60,delete=12/60"


def faulty_burst(workdir: Path, recordings: int, scale: float) -> dict[str, Any]:
    """The outside review's burst: `recordings` at once on two workers, the quotas known to the
    fleet (a workspace tight enough that Retrieve binds: 40/min, x `scale`), a fifth of the
    transcript webhooks dropped (those jobs poll) and a tenth of the create answers lost. How
    many calls Recall refused (429), by family."""
    system = start_system(
        workdir,
        workers=2,
        quotas=TIGHT,
        quota_scale=scale,
        RECALL_POLL_INITIAL_S=str(max(1.0, 60 * scale / 2)),
        RECALL_POLL_MAX_S=str(max(2.0, 60 * scale)),
    )
    try:
        ids = [f"fb-{index}" for index in range(recordings)]
        system.emulator.recordings(ids)
        system.emulator.fault(target="webhook", action="drop", probability=0.2, times=-1)
        system.emulator.fault(target="create", action="lose_response", probability=0.1, times=-1)
        started = time.monotonic()
        deliver_recordings_done(system.receiver_url, ids)
        wait_for(lambda: system.count("done") >= recordings, 300 + recordings, what="all persisted")
        seconds = time.monotonic() - started
        stats = system.emulator.stats()
    finally:
        system.stop()
    calls = {f: stats["calls"].get(f, 0) for f in FAMILIES}
    throttled = {f: stats["throttled"].get(f, 0) for f in FAMILIES}
    return {
        "recordings": recordings,
        "seconds to all persisted": round(seconds, 1),
        "calls": {f: n for f, n in calls.items() if n},
        "refused (429)": {f: n for f, n in throttled.items() if n},
        "refused share": round(sum(throttled.values()) / max(1, sum(calls.values())), 4),
        "retrieve refused share": round(throttled["retrieve"] / max(1, calls["retrieve"]), 4),
    }


def backlog(workdir: Path, jobs: int) -> dict[str, Any]:
    """Item 6 of issue 13: `jobs` jobs submitted at once on one worker with 2 threads, every
    Recall call taking 250 ms, so the queue waits far longer than a lease (15 s): Recall calls
    and the deepest pipeline queue, per job."""
    from tasks.names import PIPELINE_QUEUE

    system = start_system(workdir, concurrency=2, latency_s=0.25, RECALL_POLL_INITIAL_S="600")
    try:
        ids = [f"bl-{index}" for index in range(jobs)]
        system.emulator.recordings(ids)
        client, deepest = system.redis, 0
        started = time.monotonic()
        for index in range(0, jobs, 50):
            for recording_id in ids[index : index + 50]:
                _submit(system, recording_id)
        while system.count("done") < jobs:
            if time.monotonic() - started > 120 + 5 * jobs:
                raise TimeoutError("the backlog did not drain")
            deepest = max(deepest, int(client.llen(PIPELINE_QUEUE)))
            time.sleep(0.1)
        seconds = time.monotonic() - started
        calls = system.emulator.stats()["calls"]
    finally:
        system.stop()
    return {
        "jobs": jobs,
        "seconds to all persisted": round(seconds, 1),
        "creates per job": round(calls.get("create", 0) / jobs, 3),
        "retrieves per job": round(calls.get("retrieve", 0) / jobs, 3),
        "deepest queue per job": round(deepest / jobs, 3),
    }


def _submit(system: Any, recording_id: str) -> None:
    import requests

    requests.post(
        f"{system.receiver_url}/api/v1/jobs",
        json={"recording_id": recording_id},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=10,
    ).raise_for_status()
