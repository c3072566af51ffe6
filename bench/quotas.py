"""Recall's quotas as the ceiling: a burst of recordings against the bound the quotas imply, and
how long a job whose worker died takes to resume."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.pipeline import post_recording_done, start_system
from bench.procs import wait_for
from emulator.quotas import RECALL_QUOTAS, parse_quotas

FAMILIES = ("create", "retrieve", "list", "delete")


def burst(workdir: Path, recordings: int, scale: float) -> dict[str, Any]:
    """`recordings` finished at once, two worker processes, Recall's quotas with every window x
    `scale` on both sides. The bound: each job needs one retrieve (its fetch), and Retrieve's
    sliding window lets the k-th call go no earlier than floor(k / count) windows in."""
    system = start_system(
        workdir, workers=2, quotas=RECALL_QUOTAS, quota_scale=scale, RECALL_POLL_INITIAL_S="600"
    )
    try:
        ids = [f"q-{index}" for index in range(recordings)]
        system.add_recordings(ids)
        started = time.monotonic()
        post_recording_done(system, ids)
        wait_for(lambda: system.count("done") >= recordings, 120 + recordings, "all persisted")
        seconds = time.monotonic() - started
        stats = system.emulator_stats()
    finally:
        system.stop()
    count, window = parse_quotas(RECALL_QUOTAS)["retrieve"]
    window *= scale
    bound = ((recordings - 1) // count) * window
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


def crash_to_resumed(workdir: Path, runs: int) -> dict[str, Any]:
    """A worker SIGKILLed mid-download, a fresh one started at once: seconds until persisted,
    with the default lease (JOB_STEP_LEASE_S) and sweep interval."""
    times = [_crash_once(workdir / f"crash-{run}", f"crash-{run}") for run in range(runs)]
    return {"runs (s)": times, "worst (s)": max(times), "target (s)": 20}


def _crash_once(workdir: Path, recording_id: str) -> float:
    system = start_system(workdir, quotas="none")
    try:
        system.add_recordings([recording_id])
        system.fault({"target": "download", "action": "latency", "seconds": 300})
        post_recording_done(system, [recording_id])
        in_flight = lambda: system.emulator_stats()["calls"].get("download", 0) >= 1  # noqa: E731
        wait_for(in_flight, 60, "a download in flight")
        system.procs["worker-1"].kill()
        killed = time.monotonic()
        system.start_worker("w2@%h")  # not waited for: its start-up counts
        wait_for(lambda: system.count("done") >= 1, 120, "persisted by the fresh worker")
        return round(time.monotonic() - killed, 1)
    finally:
        system.stop()
