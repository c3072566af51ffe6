"""The pipeline end to end: throughput against a raw Celery chain, cost per job, 10,000 awaiting
jobs, scaling over worker processes, and latency from `transcript.done` to the file on disk."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
import requests

import harness
from emulator.quotas import scaled
from harness import Process, System, deliver_recordings_done, start_redis, wait_for
from tasks import keys

API_KEY = "bench-key"
CONCURRENCY = 16  # threads per worker process, as `worker/app.py` sets


def start_system(
    workdir: Path,
    workers: int = 1,
    latency_s: float = 0.0,
    processing_s: float = 0.0,
    concurrency: int = CONCURRENCY,
    names: list[str] | None = None,
    quotas: str = "none",
    quota_scale: float = 1.0,
    before_workers: Callable[[System], None] | None = None,
    **env_overrides: str,
) -> System:
    """The system on its own Redis; the emulator enforces `quotas` (windows x `quota_scale`)
    and the workers, logging at WARNING, pace themselves to the same. `before_workers` sets
    the scene (what Recall holds) before any worker starts."""
    redis_proc, redis_url = start_redis(workdir / "redis")
    emulator = ["--processing-s", str(processing_s), "--latency-s", str(latency_s)]
    emulator += ["--quotas", quotas, "--quota-scale", str(quota_scale)]
    system = harness.start_system(
        redis_url,
        workdir,
        workers=0,
        emulator_args=tuple(emulator),
        redis_process=redis_proc,
        **{"RECALL_RATE_LIMITS": scaled(quotas, quota_scale), **env_overrides},
    )
    try:  # stopped by PID if starting fails or is interrupted
        if before_workers is not None:
            before_workers(system)
        nodes = names or [f"w{i + 1}" for i in range(workers)]
        for node in nodes:
            system.start_worker(node, "--loglevel", "WARNING", concurrency=concurrency, wait=False)
        system.wait_workers(len(nodes))
    except BaseException:
        system.stop()
        raise
    return system


def run_jobs(system: System, count: int, prefix: str, timeout: float) -> dict[str, Any]:
    """Start `count` jobs and wait until all are done; jobs/s, CPU and cost per job."""
    client = system.redis
    commands_before = _commands(client)
    calls_before = system.emulator.stats()["calls"]
    cpu_before = system.cpu()
    seconds = system.persist_all([f"{prefix}-{i}" for i in range(count)], timeout)
    cpu_after = system.cpu()
    calls_after = system.emulator.stats()["calls"]
    commands = {k: v - commands_before.get(k, 0) for k, v in _commands(client).items()}
    calls = {k: v - calls_before.get(k, 0) for k, v in calls_after.items()}
    cpu = {k: round(cpu_after[k] - cpu_before.get(k, 0), 1) for k in cpu_after}
    return {
        "jobs": count,
        "seconds": round(seconds, 2),
        "jobs/s": round(count / seconds, 1),
        "recall calls/job": {k: round(v / count, 2) for k, v in sorted(calls.items()) if v},
        "redis commands/job": round(sum(commands.values()) / count, 1),
        "top redis commands/job": {
            k: round(v / count, 2) for k, v in sorted(commands.items(), key=lambda kv: -kv[1])[:8]
        },
        "cpu seconds": cpu,
        "cores busy": round(sum(cpu.values()) / seconds, 2),
    }


def _commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


class RawChain:
    """The reference: chains of 4 no-op tasks through one worker with our Celery settings."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.redis_proc, redis_url = start_redis(workdir)
        env = {**os.environ, "REDIS_URL": redis_url}
        argv = [sys.executable, "-m", "celery", "-A", "bench.noop", "worker"]
        argv += ["-Q", "recall.pipeline", "--concurrency", str(CONCURRENCY)]
        argv += ["--loglevel", "WARNING", "--without-mingle", "--without-gossip"]
        self.worker = Process(argv, workdir / "noop-worker.log", env)
        os.environ["REDIS_URL"] = redis_url  # read by bench.noop as it is imported (once)
        from bench import noop

        self.noop = noop
        wait_for(
            lambda: bool(noop.app.control.ping(timeout=0.5)), 60, what="no-op worker", interval=0.2
        )

    def run(self, count: int, timeout: float) -> dict[str, Any]:
        noop = self.noop
        noop.counter.delete(noop.DONE_KEY)
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: noop.send_chain(), range(count)))
        wait_for(lambda: int(noop.counter.get(noop.DONE_KEY) or 0) >= count, timeout, what="chains")
        seconds = time.monotonic() - started
        return {"jobs": count, "seconds": round(seconds, 2), "jobs/s": round(count / seconds, 1)}

    def stop(self) -> None:
        self.worker.stop()
        self.redis_proc.stop()


def awaiting(workdir: Path, count: int, probes: int) -> dict[str, Any]:
    """`count` jobs waiting on day-long transcripts: memory, slots held, new jobs' latency."""
    system = start_system(workdir, RECALL_POLL_INITIAL_S="86400", RECALL_POLL_MAX_S="86400")
    try:
        baseline = _probe_latency(system, probes, "before")
        system.emulator.configure(processing_s=86400)
        client = system.redis
        memory_before = int(client.info("memory")["used_memory"])
        ids = [f"wait-{i}" for i in range(count)]
        system.emulator.recordings(ids)
        deliver_recordings_done(system.receiver_url, ids)
        wait_for(lambda: system.count("awaiting") >= count, 120 + count / 20, what="jobs awaiting")
        time.sleep(2)  # let the last ingest messages be acknowledged
        memory_after = int(client.info("memory")["used_memory"])
        slots = _active_tasks(system)
        job_key = next(iter(client.scan_iter(f"{keys.JOB_PREFIX}*", count=100)))
        system.emulator.configure(processing_s=0.0)
        with_backlog = _probe_latency(system, probes, "after")
        return {
            "awaiting jobs": system.count("awaiting"),
            "redis bytes/awaiting job": round((memory_after - memory_before) / count),
            "of which the job hash": client.memory_usage(job_key),
            "worker slots held": slots,
            "messages queued or unacked": sum(
                int(client.llen(q)) for q in ("recall.events", "recall.pipeline")
            )
            + int(client.hlen("unacked")),
            "new job latency p50 ms, no backlog": baseline,
            "new job latency p50 ms, with backlog": with_backlog,
        }
    finally:
        system.stop()


def _active_tasks(system: System) -> int:
    from tasks.settings import load_settings
    from worker.celery_app import create_celery

    app = create_celery(load_settings(REDIS_URL=system.redis_url))
    active = app.control.inspect(timeout=2).active() or {}
    return sum(len(tasks) for tasks in active.values())


def _probe_latency(system: System, probes: int, prefix: str) -> float:
    """One job at a time: recording.done accepted to job done, p50 in ms."""
    samples = []
    for index in range(probes):
        recording_id = f"probe-{prefix}-{index}"
        system.emulator.recordings([recording_id])
        done_before = system.count("done")
        started = time.monotonic()
        deliver_recordings_done(system.receiver_url, [recording_id], threads=1)
        target = done_before + 1
        wait_for(lambda: system.count("done") >= target, 30, what="probe job", interval=0.002)  # noqa: B023
        samples.append((time.monotonic() - started) * 1000)
    return round(statistics.median(samples), 1)


def latency(system: System, count: int) -> dict[str, Any]:
    """`transcript.done` answered by the receiver to the transcript's files on disk."""
    ids = [f"lat-{i}" for i in range(count)]
    system.emulator.recordings(ids)
    for recording_id in ids:  # no backlog: one at a time, spaced out
        deliver_recordings_done(system.receiver_url, [recording_id], threads=1)
        time.sleep(0.05)
    wait_for(lambda: system.count("done") >= count, 60, what="latency jobs")
    deliveries = requests.get(
        f"{system.emulator_url}/_emulator/webhooks", params={"limit": 100000}, timeout=30
    ).json()
    answered = {
        d["subject"]: d["at"]
        for d in deliveries
        if d.get("event") == "transcript.done" and d["status"] and d["status"] < 300
    }
    samples = []
    for recording_id in ids:
        directory = system.workdir / "store" / recording_id
        wait_for(lambda d=directory: any(d.glob("*.meta.json")), 30, what="files")  # type: ignore[misc]
        for meta in directory.glob("*.meta.json"):
            transcript_id = meta.name.removesuffix(".meta.json")
            if transcript_id in answered:
                samples.append((meta.stat().st_mtime - answered[transcript_id]) * 1000)
    samples.sort()
    return {
        "jobs": len(samples),
        "p50 ms": round(statistics.median(samples), 1),
        "p99 ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 1),
        "max ms": round(samples[-1], 1),
    }


def profile_worker(system: System, jobs: int) -> list[tuple[str, float]]:
    """py-spy on the first worker while `jobs` more jobs run through it."""
    from bench.profiling import top_functions

    worker = system.processes["worker-w1"]
    return top_functions(
        worker.pid, lambda: run_jobs(system, jobs, "prof", 120 + jobs), system.workdir / "worker"
    )
