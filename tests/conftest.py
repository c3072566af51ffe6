"""Fixtures: a Redis of the tests' own, the emulator in-process or as a process, and the system."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import requests
from hypothesis import settings as hypothesis_settings
from werkzeug.serving import make_server

from emulator.config import EmulatorConfig
from emulator.quotas import RECALL_QUOTAS, scaled
from emulator.server import KeepAliveHandler, create_emulator
from emulator.state import EmulatorState
from tasks.dispatch import Dispatcher
from tasks.jobs import JobStore, Message
from tasks.messages import step_message
from tasks.names import PIPELINE_QUEUE, STEP_TASKS
from tasks.outcomes import Result
from tasks.pipeline import Pipeline
from tasks.recall.client import RecallClient
from tasks.settings import Settings, load_settings
from tasks.states import Step
from tasks.store.local import LocalStore
from tasks.workspaces import DEFAULT
from tests.helpers import SECRET, Process, command, free_port, http_ready, redis_answers, wait_for

hypothesis_settings.register_profile("full", max_examples=150)
hypothesis_settings.register_profile("fast", max_examples=25)  # `make test-fast`
hypothesis_settings.load_profile("full")

API_KEY = "test-key"
TIERS = ("unit", "redis", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by tier: `system` (real processes: it starts the system, or its module
    says so), `redis` (a real Redis, steps called directly, the emulator in-process), `unit`.
    `make test-fast` runs all but `system`."""
    for item in items:
        marked = {mark.name for mark in item.iter_markers()} & set(TIERS)
        fixtures = set(getattr(item, "fixturenames", ()))
        if marked:
            continue
        if "start_system" in fixtures:
            item.add_marker(pytest.mark.system)
        elif "redis_server" in fixtures:
            item.add_marker(pytest.mark.redis)
        else:
            item.add_marker(pytest.mark.unit)


def pytest_report_header() -> str:
    return f"recall-transcribe under test: {' '.join(command())}"


QUOTA_SCALE = 0.1  # Recall's quotas, every window a tenth as long: a minute becomes 6 s


def start_redis(
    directory: Path, *extra: str, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of the test's own on a free loopback port (or on `port`, to restart one)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = port or free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(directory),
            "--appendonly",
            "no",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(redis_answers(url), 10, what="redis-server to answer")
    return proc, url


@pytest.fixture(scope="session", autouse=True)
def clean_working_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests and the processes they start run in an empty directory, so a developer's `.env`
    (read from the working directory) never changes what they check."""
    before = Path.cwd()
    clean = tmp_path_factory.mktemp("cwd")
    os.chdir(clean)
    yield clean
    os.chdir(before)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture
def rclient(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@dataclass
class EmulatorHandle:
    """Drives an emulator through its /_emulator controls; `state` when it runs in-process."""

    url: str
    state: EmulatorState | None = None

    def recording(self, recording_id: str, send_done: bool = False) -> None:
        requests.post(
            f"{self.url}/_emulator/recordings",
            json={"id": recording_id, "send_done": send_done},
            timeout=5,
        ).raise_for_status()

    def fault(self, **spec: Any) -> None:
        requests.post(f"{self.url}/_emulator/faults", json=spec, timeout=5).raise_for_status()

    def seed(
        self, recording_id: str, count: int, status: str = "done", **extra: Any
    ) -> list[dict[str, Any]]:
        response = requests.post(
            f"{self.url}/_emulator/transcripts",
            json={"recording_id": recording_id, "count": count, "status": status, **extra},
            timeout=5,
        )
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = requests.get(f"{self.url}/_emulator/stats", timeout=5).json()
        return result

    def transcripts(self, recording_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = requests.get(
            f"{self.url}/_emulator/recordings/{recording_id}/transcripts", timeout=5
        ).json()
        return result

    def data(self, transcript_id: str) -> bytes:
        return requests.get(
            f"{self.url}/_emulator/transcripts/{transcript_id}/data", timeout=5
        ).content


@contextmanager
def serving_emulator(**config: Any) -> Iterator[EmulatorHandle]:
    """An emulator served in-process on a free loopback port, `config` over the tests' own."""
    port = free_port()
    settings: dict[str, Any] = {
        "api_key": API_KEY,
        "webhook_secret": SECRET,
        "processing_s": 0.05,
        "retry_scale": 0.01,
        "page_size": 3,
        "quotas": "none",  # this tier injects its 429s one by one
    }
    emulator_config = EmulatorConfig(public_url=f"http://127.0.0.1:{port}", **settings | config)
    app = create_emulator(emulator_config)
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=KeepAliveHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    emulator = app.extensions["emulator"]
    try:
        yield EmulatorHandle(emulator_config.public_url, emulator.state)
    finally:
        server.shutdown()
        emulator.scheduler.stop()


@pytest.fixture
def emulator() -> Iterator[EmulatorHandle]:
    with serving_emulator() as handle:
        yield handle


@pytest.fixture
def settings(redis_url: str, emulator: EmulatorHandle, tmp_path: Path) -> Settings:
    return load_settings(
        REDIS_URL=redis_url,
        RECALL_API_KEY=API_KEY,
        RECALL_API_BASE_URL=emulator.url,
        RECALL_WEBHOOK_SECRET=SECRET,
        TRANSCRIPTS_STORE=str(tmp_path / "store"),
        RECALL_HTTP_TIMEOUT_S=2,
        RECALL_POLL_INITIAL_S=0.2,
        RECALL_POLL_MAX_S=1,
        JOB_STEP_LEASE_S=5,
        RETRY_BACKOFF_BASE_S=0.05,
        RETRY_BACKOFF_MAX_S=0.5,
    )


@dataclass
class Harness:
    """The pipeline with a real dispatcher on the tests' Redis: steps are sent as real messages
    onto the pipeline queue, and run by hand, as a worker would."""

    pipeline: Pipeline
    redis: redis.Redis

    def queued(self) -> list[tuple[Step, str, str]]:
        """The step messages in the queue, oldest first: (step, job id, task id)."""
        raw = cast(list[bytes], self.redis.lrange(PIPELINE_QUEUE, 0, -1))
        return [_parsed(message) for message in reversed(raw)]

    @property
    def enqueued(self) -> list[tuple[Step, str]]:
        return [(step, job_id) for step, job_id, _ in self.queued()]

    def clear(self) -> None:
        """Lose every queued message (a crash, a purge)."""
        self.redis.delete(PIPELINE_QUEUE)

    def drain(self, limit: int = 50) -> list[Result]:
        """Take queued messages in order and run them, as a worker would; their results."""
        results = []
        while limit:
            message = cast(bytes | None, self.redis.rpop(PIPELINE_QUEUE))
            if message is None:
                break
            step, job_id, task_id = _parsed(message)
            results.append(self.pipeline.run_step(step, job_id, task_id))
            limit -= 1
        return results

    def submit(
        self,
        recording_id: str,
        provider: dict[str, Any] | None = None,
        key: str | None = None,
        workspace: str = DEFAULT,
    ) -> str:
        """Start a job (its create is queued); its id."""
        job_id, created = self.pipeline.dispatch.submit(
            recording_id, provider, None, key, workspace=workspace
        )
        assert created
        return job_id

    def run(self, step: Step, job_id: str) -> Result:
        """Send `step` for the job as the sweeper would, and run it at once."""
        body, task_id = step_message(step, job_id, "")
        sent = self.pipeline.jobs.send([Message(job_id, step, task_id, body)], redrive=True)
        self.redis.lrem(PIPELINE_QUEUE, 1, body)
        return self.pipeline.run_step(step, job_id, task_id if sent else "never-sent")


def _parsed(message: bytes) -> tuple[Step, str, str]:
    envelope = json.loads(message)
    args = json.loads(base64.b64decode(envelope["body"]))[0]
    step = next(s for s, name in STEP_TASKS.items() if name == envelope["headers"]["task"])
    return step, args[0], envelope["headers"]["id"]


@pytest.fixture
def harness(settings: Settings) -> Harness:
    client = redis.Redis.from_url(settings.REDIS_URL)
    jobs = JobStore(client, settings.JOB_STEP_LEASE_S, settings.JOB_DEADLINE_S)
    pipeline = Pipeline(
        settings,
        jobs,
        {"default": RecallClient(settings)},
        LocalStore(settings.TRANSCRIPTS_STORE),
        Dispatcher.from_settings(jobs, settings),
    )
    return Harness(pipeline, client)


@dataclass
class System:
    """Real processes over loopback: emulator, receiver and workers on the tests' Redis."""

    env: dict[str, str]
    emulator_url: str
    receiver_url: str
    store: Path
    tmp: Path
    processes: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)

    def start_worker(self, name: str = "w1", *extra: str) -> Process:
        worker = Process(
            [
                "worker",
                "-n",
                f"{name}@%h",
                "--concurrency",
                "8",
                "--without-mingle",
                "--without-gossip",
                *extra,
            ],
            self.env,
            self.tmp / f"worker-{name}.log",
        )
        self.workers.append(worker)
        self.processes.append(worker)
        wait_for(lambda: "ready" in worker.log() or not worker.alive(), 30, what="worker ready")
        assert worker.alive(), worker.log()
        return worker

    @property
    def emulator(self) -> EmulatorHandle:
        return EmulatorHandle(self.emulator_url)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


def emulator_process(
    port: int, api_key: str, webhook_url: str, env: dict[str, str], log: Path, *extra: str
) -> Process:
    """An emulator as its own process: quick transcripts and retries, small pages."""
    return Process(
        [
            "emulator",
            "--port",
            str(port),
            "--api-key",
            api_key,
            "--processing-s",
            "0.2",
            "--retry-scale",
            "0.01",
            "--page-size",
            "4",
            "--webhook-url",
            webhook_url,
            *extra,
        ],
        env,
        log,
    )


@pytest.fixture
def start_system(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., System]]:
    systems: list[System] = []

    def start(
        workers: int = 1,
        emulator_args: tuple[str, ...] = (),
        api_key: str = API_KEY,
        **env_overrides: str,
    ) -> System:
        emulator_port, receiver_port = free_port(), free_port()
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "RECALL_API_KEY": api_key,
            "RECALL_API_BASE_URL": f"http://127.0.0.1:{emulator_port}",
            "RECALL_WEBHOOK_SECRET": SECRET,
            "TRANSCRIPTS_STORE": str(tmp_path / "store"),
            "API_TOKENS": "test-token",
            "RECALL_HTTP_TIMEOUT_S": "3",
            "RECALL_POLL_INITIAL_S": "30",
            "RECALL_POLL_MAX_S": "60",
            "JOB_STEP_LEASE_S": "10",
            "INBOX_RESEND_S": "10",
            "SWEEP_INTERVAL_S": "0.2",
            "RETRY_BACKOFF_BASE_S": "0.1",
            "RETRY_BACKOFF_MAX_S": "2",
            "RECALL_RATE_LIMITS": scaled(RECALL_QUOTAS, QUOTA_SCALE),
            **env_overrides,
        }
        system = System(
            env,
            f"http://127.0.0.1:{emulator_port}",
            f"http://127.0.0.1:{receiver_port}",
            tmp_path / "store",
            tmp_path,
        )
        systems.append(system)
        emulator = emulator_process(
            emulator_port,
            api_key,
            f"{system.receiver_url}/webhooks/recall",
            env,
            tmp_path / "emulator.log",
            "--quota-scale",
            str(QUOTA_SCALE),
            *emulator_args,
        )
        receiver = Process(
            ["receiver", "--port", str(receiver_port)], env, tmp_path / "receiver.log"
        )
        system.processes += [emulator, receiver]
        wait_for(http_ready(f"{system.emulator_url}/_emulator/stats"), 20, what="emulator up")
        wait_for(http_ready(f"{system.receiver_url}/healthz"), 20, what="receiver up")
        for index in range(workers):
            system.start_worker(f"w{index + 1}")
        return system

    yield start
    for system in systems:
        system.stop()
