"""`python -m bench [--smoke] [--only NAME,...] [--out FILE]`: run the benchmarks, write the report.

A full run writes its tables into BENCHMARKS.md (between the bench markers); `--smoke` runs every
benchmark briefly to keep them working and writes nowhere unless `--out` says so.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import (
    callbacks,
    failover,
    footprint,
    ingest,
    limiter,
    listing,
    pipeline,
    quotas,
    reconcile,
    shares,
    workspaces,
)
from bench.report import render, write_section
from harness import start_redis, system_env

SIZES = {
    "full": {
        "ingest_s": 4,
        "jobs": 2000,
        "jobs_slow": 400,
        "awaiting": 10000,
        "probes": 20,
        "latency": 100,
        "limiter_calls": 600,
        "quota_recordings": 1000,
        "shared_key": 300,
        "crash_runs": 3,
        "faulty_burst": 102,
        "backlog": 150,
        "callback_latency": 100,
        "callback_deliveries": 2000,
        "callback_down": (1000, 30.0),
        "workspaces": (600, 1.0, 4),
        "shares": (100, 20),
        "failover_runs": 3,
        "backfill": (10000, 600, 2, 1 / 6),  # recordings, burst, bursts, quota windows x
        "listings": ([500, 5000], 100),
        "footprint": (100_000, 20_000),
    },
    "smoke": {
        "ingest_s": 1,
        "jobs": 40,
        "jobs_slow": 20,
        "awaiting": 100,
        "probes": 2,
        "latency": 5,
        "limiter_calls": 80,
        "quota_recordings": 30,
        "shared_key": 20,
        "crash_runs": 1,
        "faulty_burst": 20,
        "backlog": 20,
        "callback_latency": 5,
        "callback_deliveries": 50,
        "callback_down": (20, 2.0),
        "workspaces": (20, 0.05, 2),
        "shares": (10, 4),
        "failover_runs": 1,
        "backfill": (200, 20, 1, 1 / 60),
        "listings": ([50, 500], 3),
        "footprint": (200, 50),
    },
}
BENCHES = (
    "ingest",
    "throughput",
    "awaiting",
    "scaling",
    "latency",
    "limiter",
    "quotas",
    "faulty_burst",
    "backlog",
    "callbacks",
    "workspaces",
    "shares",
    "failover",
    "reconcile",
    "listings",
    "footprint",
)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; checks the benches run")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"some of {','.join(BENCHES)}")
    parser.add_argument(
        "--out", type=Path, default=None, help="report file (default BENCHMARKS.md)"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the receiver and a worker")
    parser.add_argument(
        "--listing-jobs", default=None, help="listings: job counts instead, e.g. 1000000"
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every process a benchmark started is stopped by its PID.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    size = SIZES["smoke" if args.smoke else "full"]
    if args.listing_jobs:
        counts = [int(count) for count in args.listing_jobs.split(",")]
        size = {**size, "listings": (counts, 30)}
    chosen = [name for name in args.only.split(",") if name]
    unknown = set(chosen) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    out = args.out or (None if args.smoke else Path("BENCHMARKS.md"))
    results: dict[str, Any] = {"size": "smoke" if args.smoke else "full"}
    with tempfile.TemporaryDirectory(prefix="recall-bench-") as tmp:
        work = Path(tmp)
        for name in chosen:
            started = time.monotonic()
            print(f"bench: {name} ...", flush=True)
            results[name] = RUNNERS[name](work / name, size, args.profile)
            print(f"bench: {name} done in {time.monotonic() - started:.0f}s", flush=True)
            print(json.dumps(results[name], indent=1), flush=True)
    text = render(results)
    if out is not None:
        write_section(out, text)
        print(f"bench: wrote {out}")
    return 0


def _ingest(work: Path, size: dict[str, Any], profile: bool) -> Any:
    work.mkdir(parents=True)
    redis_proc, redis_url = start_redis(work)
    try:
        env = system_env(redis_url, work)
        return ingest.measure(redis_url, work, env, size["ingest_s"], profile)
    finally:
        redis_proc.stop()


def _throughput(work: Path, size: dict[str, Any], profile: bool) -> Any:
    """Ours and the raw chain, alternating over two rounds on systems started once."""
    jobs = size["jobs"]
    reference = pipeline.RawChain(work / "chain")
    system = pipeline.start_system(work / "ours")
    chains, ours = [], []
    try:
        for round_ in range(2):
            chains.append(reference.run(jobs, 120 + jobs))
            ours.append(pipeline.run_jobs(system, jobs, f"tp{round_}", 120 + jobs))
        if profile:
            ours[-1]["profile"] = pipeline.profile_worker(system, jobs)
    finally:
        system.stop()
        reference.stop()
    slow: dict[str, Any] = {}
    for threads in (16, 64):
        system = pipeline.start_system(work / f"slow-{threads}", latency_s=0.2, concurrency=threads)
        try:
            slow[f"{threads} threads"] = pipeline.run_jobs(
                system, size["jobs_slow"], "slow", 120 + size["jobs_slow"]
            )
        finally:
            system.stop()
    chain_rate = round(statistics.median(c["jobs/s"] for c in chains), 1)
    our_rate = round(statistics.median(o["jobs/s"] for o in ours), 1)
    return {
        "raw chain": {"rounds": chains, "jobs/s": chain_rate},
        "ours": {**ours[-1], "rounds": [o["jobs/s"] for o in ours], "jobs/s": our_rate},
        "ratio": round(our_rate / chain_rate, 2),
        "200 ms latency, 1 process": slow,
    }


def _awaiting(work: Path, size: dict[str, Any], profile: bool) -> Any:
    return pipeline.awaiting(work, size["awaiting"], size["probes"])


def _scaling(work: Path, size: dict[str, Any], profile: bool) -> Any:
    rows: dict[str, Any] = {}
    layouts = {
        "1 process": ["w1@%h"],
        "2 processes": ["w1@%h", "w2@%h"],
        "4 processes": ["w1@%h", "w2@%h", "w3@%h", "w4@%h"],
        "2 hosts": ["w1@host-a", "w2@host-b"],
    }
    for label, names in layouts.items():
        system = pipeline.start_system(work / label.replace(" ", "-"), names=names)
        try:
            rows[label] = pipeline.run_jobs(system, size["jobs"], "sc", 120 + size["jobs"])
        finally:
            system.stop()
    one = rows["1 process"]["jobs/s"]
    for label, row in rows.items():
        processes = len(layouts[label])
        row["speedup"] = round(row["jobs/s"] / one, 2)
        row["of linear"] = round(row["jobs/s"] / (one * processes), 2)
    return rows


def _latency(work: Path, size: dict[str, Any], profile: bool) -> Any:
    system = pipeline.start_system(work)
    try:
        return pipeline.latency(system, size["latency"])
    finally:
        system.stop()


def _limiter(work: Path, size: dict[str, Any], profile: bool) -> Any:
    return limiter.compare(work, size["limiter_calls"])


def _quotas(work: Path, size: dict[str, Any], profile: bool) -> Any:
    return {
        "burst": quotas.burst(work / "burst", size["quota_recordings"], 1 / 6),
        "shared key": quotas.shared_key(work / "shared", size["shared_key"], 1 / 6),
        "crash": quotas.crash_to_resumed(work, size["crash_runs"]),
    }


def _faulty_burst(work: Path, size: dict[str, Any], profile: bool) -> Any:
    return quotas.faulty_burst(work, size["faulty_burst"], 1 / 10)


def _backlog(work: Path, size: dict[str, Any], profile: bool) -> Any:
    return quotas.backlog(work, size["backlog"])


def _workspaces(work: Path, size: dict[str, Any], profile: bool) -> Any:
    return workspaces.burst(work, *size["workspaces"])


def _shares(work: Path, size: dict[str, Any], profile: bool) -> Any:
    return shares.burst(work, *size["shares"])


def _failover(work: Path, size: dict[str, Any], profile: bool) -> Any:
    return failover.measure(work, size["failover_runs"])


def _callbacks(work: Path, size: dict[str, Any], profile: bool) -> Any:
    jobs, down_s = size["callback_down"]
    return {
        "latency": callbacks.latency(work / "latency", size["callback_latency"]),
        "throughput": callbacks.throughput(work / "throughput", size["callback_deliveries"]),
        "receiver down": callbacks.receiver_down(work / "down", jobs, down_s),
    }


def _reconcile(work: Path, size: dict[str, Any], profile: bool) -> Any:
    return reconcile.backfill(work, *size["backfill"])


def _listings(work: Path, size: dict[str, Any], profile: bool) -> Any:
    return listing.measure(work, *size["listings"])


def _footprint(work: Path, size: dict[str, Any], profile: bool) -> Any:
    return footprint.measure(work, *size["footprint"])


RUNNERS = {
    "ingest": _ingest,
    "throughput": _throughput,
    "awaiting": _awaiting,
    "scaling": _scaling,
    "latency": _latency,
    "limiter": _limiter,
    "quotas": _quotas,
    "faulty_burst": _faulty_burst,
    "backlog": _backlog,
    "callbacks": _callbacks,
    "workspaces": _workspaces,
    "shares": _shares,
    "failover": _failover,
    "reconcile": _reconcile,
    "listings": _listings,
    "footprint": _footprint,
}

if __name__ == "__main__":
    raise SystemExit(main())
