"""The system as real processes over loopback: an emulator, a receiver and workers on a Redis,
started and stopped together, and read as a user would (the jobs API) or as Redis holds it."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from emulator.state import EmulatorState
from harness.processes import Process, free_port, http_ready, recall_transcribe, wait_for
from harness.webhooks import SECRET, WEBHOOK_PATH, deliver_recordings_done, post_webhook
from tasks.jobs import indexes

API_KEY = "test-key"
API_TOKEN = "test-token"


@dataclass
class EmulatorHandle:
    """Drives an emulator through its /_emulator controls; `state` when it runs in-process."""

    url: str
    state: EmulatorState | None = None

    def recording(self, recording_id: str, send_done: bool = False) -> None:
        self._post("recordings", {"id": recording_id, "send_done": send_done})

    def recordings(self, ids: list[str], send_done: bool = False) -> None:
        for start in range(0, len(ids), 1000):
            self._post("recordings", {"ids": ids[start : start + 1000], "send_done": send_done})

    def fault(self, **spec: Any) -> None:
        self._post("faults", spec)

    def configure(self, **changes: Any) -> None:
        requests.patch(f"{self.url}/_emulator/config", json=changes, timeout=10).raise_for_status()

    def seed(
        self, recording_id: str, count: int, status: str = "done", **extra: Any
    ) -> list[dict[str, Any]]:
        body = {"recording_id": recording_id, "count": count, "status": status, **extra}
        result: list[dict[str, Any]] = self._post("transcripts", body).json()
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = requests.get(f"{self.url}/_emulator/stats", timeout=10).json()
        return result

    def transcripts(self, recording_id: str) -> list[dict[str, Any]]:
        url = f"{self.url}/_emulator/recordings/{recording_id}/transcripts"
        result: list[dict[str, Any]] = requests.get(url, timeout=10).json()
        return result

    def data(self, transcript_id: str) -> bytes:
        url = f"{self.url}/_emulator/transcripts/{transcript_id}/data"
        return requests.get(url, timeout=10).content

    def _post(self, control: str, body: dict[str, Any]) -> requests.Response:
        response = requests.post(f"{self.url}/_emulator/{control}", json=body, timeout=60)
        response.raise_for_status()
        return response


@dataclass
class System:
    """Emulator, receiver and workers on one Redis; every process stopped together, by PID."""

    workdir: Path
    env: dict[str, str]
    emulator_url: str
    receiver_url: str
    processes: dict[str, Process] = field(default_factory=dict)
    workers: list[Process] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return self.env["REDIS_URL"]

    @property
    def store(self) -> Path:
        return Path(self.env["TRANSCRIPTS_STORE"])

    @property
    def emulator(self) -> EmulatorHandle:
        return EmulatorHandle(self.emulator_url)

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Process:
        """`recall-transcribe ARGS` as a process of this system (its environment, or `env`),
        logged to NAME.log."""
        process = recall_transcribe(args, env or self.env, self.workdir / f"{name}.log")
        self.processes[name] = process
        return process

    def start_emulator(
        self,
        *args: str,
        workspace: str | None = None,
        api_key: str = API_KEY,
        secret: str = SECRET,
        port: int | None = None,
    ) -> EmulatorHandle:
        """A Recall emulator (with `args`) sending its webhooks, signed with `secret`, to the
        receiver's path for `workspace` (the default workspace's when None)."""
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        path = WEBHOOK_PATH + (f"/{workspace}" if workspace else "")
        argv = ["emulator", "--port", str(port), "--api-key", api_key]
        argv += ["--webhook-url", f"{self.receiver_url}{path}", *args]
        name = f"emulator-{workspace}" if workspace else "emulator"
        self.start(name, argv, {**self.env, "RECALL_WEBHOOK_SECRET": secret})
        wait_for(http_ready(f"{url}/_emulator/stats"), 30, what=f"{name} up")
        return EmulatorHandle(url)

    def start_worker(
        self, name: str = "w1", *extra: str, concurrency: int = 8, wait: bool = True
    ) -> Process:
        """A worker process (node NAME@%h, or NAME when it names its host); with `wait`, once
        its log says it is ready (else see `wait_workers`, for workers logging at WARNING)."""
        args = ["worker", "-n", f"{name}@%h", "--concurrency", str(concurrency)]
        worker = self.start(
            f"worker-{name}", [*args, "--without-mingle", "--without-gossip", *extra]
        )
        self.workers.append(worker)
        if wait:
            wait_for(lambda: "ready" in worker.log() or not worker.alive(), 30, what="worker ready")
            assert worker.alive(), worker.log()
        return worker

    def wait_workers(self, count: int) -> None:
        """Until `count` workers answer a ping over the broker."""
        from tasks.settings import load_settings
        from worker.celery_app import create_celery

        app = create_celery(load_settings(REDIS_URL=self.redis_url))
        wait_for(
            lambda: len(app.control.ping(timeout=0.5) or []) >= count,
            60,
            0.2,
            f"{count} worker(s)",
        )

    def post(
        self, event: dict[str, Any] | bytes, msg_id: str | None = None, secret: str = SECRET
    ) -> requests.Response:
        """A signed webhook delivered to the receiver once; its answer."""
        return post_webhook(self.receiver_url, event, secret, msg_id)

    def persist_all(self, ids: list[str], timeout: float | None = None) -> float:
        """Recordings finished at Recall at once, each `recording.done` delivered: the seconds
        until every one's job is done (a burst's makespan)."""
        self.emulator.recordings(ids)
        done_before = self.count("done")
        started = time.monotonic()
        deliver_recordings_done(self.receiver_url, ids)
        wait_for(
            lambda: self.count("done") - done_before >= len(ids),
            timeout or 120 + len(ids),
            what=f"{len(ids)} jobs done",
        )
        return time.monotonic() - started

    def jobs(self, state: str | None = None, **filters: str) -> list[dict[str, Any]]:
        """Jobs as the jobs API lists them (up to 500)."""
        params = {"limit": "500", **({"state": state} if state else {}), **filters}
        response = requests.get(
            f"{self.receiver_url}/api/v1/jobs",
            params=params,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=10,
        )
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["jobs"]
        return result

    def job_of(self, recording_id: str) -> dict[str, Any]:
        """The one job of a recording, as the jobs API shows it."""
        (job,) = self.jobs(recording_id=recording_id)
        return job

    def count(self, state: str) -> int:
        """How many jobs are in `state`, read from Redis's listing indexes."""
        return indexes.count(self.redis, state)

    def done_in(self, workspace: str) -> int:
        """How many of `workspace`'s jobs are done, read from Redis's listing indexes."""
        return sum(
            int(self.redis.zcard(key)) for key in indexes.written(self.redis, workspace, ["done"])
        )

    def cpu(self) -> dict[str, float]:
        return {name: proc.cpu_seconds() for name, proc in self.processes.items()}

    def stop(self) -> None:
        """Every process asked to stop at once (each ends in its own time, in parallel), then
        waited for; the system's own Redis, if any, last."""
        ours = [proc for name, proc in self.processes.items() if name != "redis"]
        for proc in ours:
            proc.terminate()
        for proc in ours:
            proc.stop()
        if "redis" in self.processes:
            self.processes["redis"].stop()


def system_env(
    redis_url: str,
    workdir: Path,
    emulator_url: str = "http://127.0.0.1:9",
    api_key: str = API_KEY,
    **overrides: str,
) -> dict[str, str]:
    """The environment every process of a system runs with: `overrides` over the defaults."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "RECALL_API_KEY": api_key,
        "RECALL_API_BASE_URL": emulator_url,
        "RECALL_WEBHOOK_SECRET": SECRET,
        "TRANSCRIPTS_STORE": str(workdir / "store"),
        "API_TOKENS": API_TOKEN,
        **overrides,
    }


def start_system(
    redis_url: str,
    workdir: Path,
    *,
    workers: int = 1,
    emulator_args: tuple[str, ...] = (),
    api_key: str = API_KEY,
    redis_process: Process | None = None,
    **env_overrides: str,
) -> System:
    """An emulator (with `emulator_args`), a receiver and `workers` workers on `redis_url`,
    every process's environment `env_overrides` over the defaults; stopped by PID if starting
    fails. `redis_process`, a Redis of the system's own, is stopped with it, last."""
    workdir.mkdir(parents=True, exist_ok=True)
    emulator_port, receiver_port = free_port(), free_port()
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    env = system_env(redis_url, workdir, emulator_url, api_key, **env_overrides)
    system = System(workdir, env, emulator_url, receiver_url)
    if redis_process is not None:
        system.processes["redis"] = redis_process
    try:
        system.start("receiver", ["receiver", "--port", str(receiver_port)])
        system.start_emulator(*emulator_args, api_key=api_key, port=emulator_port)
        wait_for(http_ready(f"{receiver_url}/healthz"), 30, what="receiver up")
        for index in range(workers):
            system.start_worker(f"w{index + 1}")
    except BaseException:
        system.stop()
        raise
    return system


def another_workspace(name: str, port: int, api_key: str, secret: str) -> str:
    """RECALL_WORKSPACES naming one more workspace, whose Recall is an emulator on `port`."""
    base_url = f"http://127.0.0.1:{port}"
    return json.dumps({name: {"api_key": api_key, "base_url": base_url, "webhook_secret": secret}})
