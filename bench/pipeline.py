"""The pipeline end to end: throughput against a raw Celery chain, cost per job, 10,000 awaiting
jobs, scaling over worker processes, and latency from `transcript.done` to the file on disk."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
from standardwebhooks.webhooks import Webhook

from bench.ingest import SECRET
from bench.procs import Proc, recall_transcribe, start_redis, wait_for
from emulator.quotas import scaled
from tasks import keys
from tests.helpers import free_port, http_ready

API_KEY = "bench-key"
CONCURRENCY = 16  # threads per worker process, as `worker/app.py` sets


@dataclass
class System:
    """Redis, emulator, receiver and workers of one measurement, all stopped together."""

    workdir: Path
    redis_url: str
    env: dict[str, str]
    emulator_url: str
    receiver_url: str
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()

    def cpu(self) -> dict[str, float]:
        return {name: proc.cpu_seconds() for name, proc in self.procs.items()}

    def add_recordings(self, ids: list[str]) -> None:
        for start in range(0, len(ids), 1000):
            requests.post(
                f"{self.emulator_url}/_emulator/recordings",
                json={"ids": ids[start : start + 1000], "send_done": False},
                timeout=60,
            ).raise_for_status()

    def fault(self, spec: dict[str, Any]) -> None:
        requests.post(f"{self.emulator_url}/_emulator/faults", json=spec, timeout=10)

    def start_worker(self, name: str, concurrency: int = CONCURRENCY) -> Proc:
        args = ["worker", "-n", name, "--concurrency", str(concurrency)]
        args += ["--loglevel", "WARNING", "--without-mingle", "--without-gossip"]
        index = len([p for p in self.procs if p.startswith("worker-")]) + 1
        proc = recall_transcribe(args, self.workdir / f"worker-{index}.log", self.env)
        self.procs[f"worker-{index}"] = proc
        return proc

    def configure_emulator(self, **changes: Any) -> None:
        requests.patch(f"{self.emulator_url}/_emulator/config", json=changes, timeout=10)

    def emulator_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = requests.get(
            f"{self.emulator_url}/_emulator/stats", timeout=10
        ).json()
        return stats

    def count(self, state: str) -> int:
        return int(self.redis.zcard(keys.state(state)))


def start_env(
    redis_url: str, workdir: Path, emulator_url: str = "http://127.0.0.1:9"
) -> dict[str, str]:
    """The environment of every process of a measurement."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "RECALL_API_KEY": API_KEY,
        "RECALL_API_BASE_URL": emulator_url,
        "RECALL_WEBHOOK_SECRET": SECRET,
        "TRANSCRIPTS_STORE": str(workdir / "store"),
        "API_TOKENS": "bench-token",
    }


def start_system(
    workdir: Path,
    workers: int = 1,
    latency_s: float = 0.0,
    processing_s: float = 0.0,
    concurrency: int = CONCURRENCY,
    names: list[str] | None = None,
    quotas: str = "none",
    quota_scale: float = 1.0,
    **env_overrides: str,
) -> System:
    """The system on its own Redis; the emulator enforces `quotas` (windows x `quota_scale`)
    and the workers pace themselves to the same."""
    workdir.mkdir(parents=True, exist_ok=True)
    redis_proc, redis_url = start_redis(workdir)
    emulator_port, receiver_port = free_port(), free_port()
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    env = {
        **start_env(redis_url, workdir, emulator_url),
        "RECALL_RATE_LIMITS": scaled(quotas, quota_scale),
        **env_overrides,
    }
    system = System(workdir, redis_url, env, emulator_url, receiver_url, {"redis": redis_proc})
    try:  # stopped by PID if starting fails or is interrupted
        emulator = ["emulator", "--port", str(emulator_port), "--api-key", API_KEY]
        emulator += ["--processing-s", str(processing_s), "--latency-s", str(latency_s)]
        emulator += ["--webhook-url", f"{receiver_url}/webhooks/recall"]
        emulator += ["--quotas", quotas, "--quota-scale", str(quota_scale)]
        system.procs["emulator"] = recall_transcribe(emulator, workdir / "emulator.log", env)
        receiver = ["receiver", "--port", str(receiver_port)]
        system.procs["receiver"] = recall_transcribe(receiver, workdir / "receiver.log", env)
        wait_for(http_ready(f"{emulator_url}/_emulator/stats"), 30, "emulator")
        wait_for(http_ready(f"{receiver_url}/healthz"), 30, "receiver")
        for name in names or [f"w{i + 1}@%h" for i in range(workers)]:
            system.start_worker(name, concurrency)
        _wait_workers(system, len(names or range(workers)))
    except BaseException:
        system.stop()
        raise
    return system


def _wait_workers(system: System, count: int) -> None:
    from tasks.settings import load_settings
    from worker.celery_app import create_celery

    app = create_celery(load_settings(REDIS_URL=system.redis_url))

    def all_up() -> bool:
        replies = app.control.ping(timeout=0.5) or []
        return len(replies) >= count

    wait_for(all_up, 60, f"{count} worker(s)", every=0.2)


def post_recording_done(
    system: System,
    ids: list[str],
    threads: int = 16,
    path: str = "/webhooks/recall",
    secret: str = SECRET,
) -> None:
    """Deliver a signed recording.done for each recording, as Recall would, `threads` at once
    (to another workspace's `path`, signed with its `secret`)."""
    hook = Webhook(secret)
    url = f"{system.receiver_url}{path}"
    sessions: dict[int, requests.Session] = {}

    def deliver(recording_id: str) -> None:
        import threading
        from datetime import UTC, datetime

        session = sessions.setdefault(threading.get_ident(), requests.Session())
        now = datetime.now(UTC)
        body = json.dumps(
            {
                "event": "recording.done",
                "data": {
                    "data": {"code": "done", "sub_code": None, "updated_at": now.isoformat()},
                    "recording": {"id": recording_id, "metadata": {}},
                    "bot": {"id": f"bot-{recording_id}", "metadata": {}},
                },
            }
        )
        msg_id = f"msg_{recording_id}"
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": hook.sign(msg_id, now, body),
        }
        for _ in range(50):
            if session.post(url, data=body, headers=headers, timeout=10).status_code < 300:
                return
            time.sleep(0.1)
        raise RuntimeError(f"recording.done for {recording_id} never accepted")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(deliver, ids))


def run_jobs(system: System, count: int, prefix: str, timeout: float) -> dict[str, Any]:
    """Start `count` jobs and wait until all are done; jobs/s, CPU and cost per job."""
    ids = [f"{prefix}-{i}" for i in range(count)]
    system.add_recordings(ids)
    client = system.redis
    commands_before = _commands(client)
    calls_before = system.emulator_stats()["calls"]
    cpu_before = system.cpu()
    done_before = system.count("done")
    started = time.monotonic()
    post_recording_done(system, ids)
    wait_for(lambda: system.count("done") - done_before >= count, timeout, f"{count} jobs done")
    seconds = time.monotonic() - started
    cpu_after = system.cpu()
    calls_after = system.emulator_stats()["calls"]
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
        self.worker = Proc(argv, workdir / "noop-worker.log", env)
        os.environ["REDIS_URL"] = redis_url  # read by bench.noop as it is imported (once)
        from bench import noop

        self.noop = noop
        wait_for(lambda: bool(noop.app.control.ping(timeout=0.5)), 60, "no-op worker", 0.2)

    def run(self, count: int, timeout: float) -> dict[str, Any]:
        noop = self.noop
        noop.counter.delete(noop.DONE_KEY)
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: noop.send_chain(), range(count)))
        wait_for(lambda: int(noop.counter.get(noop.DONE_KEY) or 0) >= count, timeout, "chains")
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
        system.configure_emulator(processing_s=86400)
        client = system.redis
        memory_before = int(client.info("memory")["used_memory"])
        ids = [f"wait-{i}" for i in range(count)]
        system.add_recordings(ids)
        post_recording_done(system, ids)
        wait_for(lambda: system.count("awaiting") >= count, 120 + count / 20, "jobs awaiting")
        time.sleep(2)  # let the last ingest messages be acknowledged
        memory_after = int(client.info("memory")["used_memory"])
        slots = _active_tasks(system)
        job_key = next(iter(client.scan_iter(f"{keys.JOB_PREFIX}*", count=100)))
        system.configure_emulator(processing_s=0.0)
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
        system.add_recordings([recording_id])
        done_before = system.count("done")
        started = time.monotonic()
        post_recording_done(system, [recording_id], threads=1)
        target = done_before + 1
        wait_for(lambda: system.count("done") >= target, 30, "probe job", every=0.002)  # noqa: B023
        samples.append((time.monotonic() - started) * 1000)
    return round(statistics.median(samples), 1)


def latency(system: System, count: int) -> dict[str, Any]:
    """`transcript.done` answered by the receiver to the transcript's files on disk."""
    ids = [f"lat-{i}" for i in range(count)]
    system.add_recordings(ids)
    for recording_id in ids:  # no backlog: one at a time, spaced out
        post_recording_done(system, [recording_id], threads=1)
        time.sleep(0.05)
    wait_for(lambda: system.count("done") >= count, 60, "latency jobs")
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
        wait_for(lambda d=directory: any(d.glob("*.meta.json")), 30, "files")  # type: ignore[misc]
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

    worker = system.procs["worker-1"]
    return top_functions(
        worker.pid, lambda: run_jobs(system, jobs, "prof", 120 + jobs), system.workdir / "worker"
    )
