"""Workspaces cannot starve each other: a healthy workspace's burst while another workspace's
Recall hangs every call, against the same burst alone; and the burst alone with one workspace
configured (never capped, as before shares) against two configured, the other idle (a lone
workspace borrows every thread but one)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.pipeline import start_system
from harness import OTHER_SECRET, another_workspace, deliver_recordings_done, free_port, wait_for

WORKERS, THREADS = 2, 8
LATENCY_S = 0.2  # each Recall call, as Recall answers from afar
PROCESSING_S = 2.0  # Recall's transcription of one recording (minutes in life)
TIMEOUT_S = 5  # RECALL_HTTP_TIMEOUT_S: how long each hung call holds its thread
HUNG_TARGETS = ("create", "retrieve", "list", "delete")


def burst(workdir: Path, recordings: int, hung_recordings: int) -> dict[str, Any]:
    """`recordings` of the default workspace at once, in three setups, on `WORKERS` workers of
    `THREADS` threads; with another workspace whose Recall hangs, `hung_recordings` of it
    arrive just after the burst."""
    alone_one = _run(workdir / "one", recordings, 0, eu=False)
    alone = _run(workdir / "alone", recordings, 0, eu=True)
    hung = _run(workdir / "hung", recordings, hung_recordings, eu=True)
    return {
        "setup": (
            f"{WORKERS} workers x {THREADS} threads, {LATENCY_S:g} s per Recall call, "
            f"transcripts ready {PROCESSING_S:g} s after creation, RECALL_HTTP_TIMEOUT_S "
            f"{TIMEOUT_S}; {recordings} recordings in `default`, {hung_recordings} in `eu`"
        ),
        "alone, 1 workspace configured (never capped: as before shares) (s)": alone_one["seconds"],
        "alone, 2 configured, eu idle (s)": alone["seconds"],
        "with eu hung (s)": hung["seconds"],
        "with eu hung / alone": round(hung["seconds"] / alone["seconds"], 2),
        "alone, 2 configured / 1 configured": round(alone["seconds"] / alone_one["seconds"], 2),
        "eu's peak calls in flight (its shares: per worker x workers)": (
            f"{hung['eu peak in flight']} ({THREADS // 2} x {WORKERS})"
        ),
        "eu's calls (all hung)": hung["eu calls"],
    }


def _run(workdir: Path, recordings: int, hung_recordings: int, eu: bool) -> dict[str, Any]:
    port = free_port()
    system = start_system(
        workdir,
        workers=WORKERS,
        concurrency=THREADS,
        latency_s=LATENCY_S,
        processing_s=PROCESSING_S,
        RECALL_POLL_INITIAL_S="600",
        RECALL_HTTP_TIMEOUT_S=str(TIMEOUT_S),
        RECONCILE_INTERVAL_S="0",
        RECALL_WORKSPACES=another_workspace("eu", port, "eu-key", OTHER_SECRET) if eu else "{}",
    )
    try:
        hung = None
        if eu:
            args = ("--latency-s", str(LATENCY_S), "--quotas", "none")
            hung = system.start_emulator(
                *args, workspace="eu", api_key="eu-key", secret=OTHER_SECRET, port=port
            )
            for target in HUNG_TARGETS:
                hung.fault(target=target, action="hang", times=-1)
        ids = [f"us-{index}" for index in range(recordings)]
        hung_ids = [f"eu-{index}" for index in range(hung_recordings)]
        system.emulator.recordings(ids)
        if hung is not None:
            hung.recordings(hung_ids)
        started = time.monotonic()
        deliver_recordings_done(system.receiver_url, ids, threads=8)
        if hung_ids:
            path, secret = "/webhooks/recall/eu", OTHER_SECRET
            deliver_recordings_done(system.receiver_url, hung_ids, 8, secret, path)
        wait_for(
            lambda: system.done_in("default") >= recordings,
            120 + recordings,
            0.1,
            f"{recordings} jobs done",
        )
        seconds = time.monotonic() - started
        stats = hung.stats() if hung is not None else {}
    finally:
        system.stop()
    return {
        "seconds": round(seconds, 1),
        "eu peak in flight": stats.get("peak_in_flight", 0),
        "eu calls": sum(stats.get("calls", {}).values()),
    }
