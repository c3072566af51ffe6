"""Fixtures: a Redis of the tests' own, the emulator in-process or as a process, and the system."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import settings as hypothesis_settings

from emulator.quotas import RECALL_QUOTAS, scaled
from harness import API_KEY, SECRET, EmulatorHandle, System, command, start_redis
from harness import start_system as start_whole_system
from tasks.dispatch import Dispatcher
from tasks.jobs.store import JobStore
from tasks.pipeline import Pipeline
from tasks.recalls import recall_client
from tasks.settings import Settings, load_settings
from tasks.store.local import LocalStore
from tests.helpers import QUICK_EMULATOR, Harness, serving_emulator

hypothesis_settings.register_profile("full", max_examples=150)
hypothesis_settings.register_profile("fast", max_examples=25)  # `make test-fast`
hypothesis_settings.load_profile("full")

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
SYSTEM_ENV = {  # quick to recover and to retry; polls left to the webhooks
    "RECALL_HTTP_TIMEOUT_S": "3",
    "RECALL_POLL_INITIAL_S": "30",
    "RECALL_POLL_MAX_S": "60",
    "JOB_STEP_LEASE_S": "10",
    "INBOX_RESEND_S": "10",
    "SWEEP_INTERVAL_S": "0.2",
    "RETRY_BACKOFF_BASE_S": "0.1",
    "RETRY_BACKOFF_MAX_S": "2",
    "RECALL_RATE_LIMITS": scaled(RECALL_QUOTAS, QUOTA_SCALE),
}
SYSTEM_EMULATOR_ARGS = (*QUICK_EMULATOR, "--quota-scale", str(QUOTA_SCALE))


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
    proc.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture
def rclient(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


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


@pytest.fixture
def harness(settings: Settings) -> Harness:
    client = redis.Redis.from_url(settings.REDIS_URL)
    jobs = JobStore(client, settings.JOB_STEP_LEASE_S, settings.JOB_DEADLINE_S)
    pipeline = Pipeline(
        settings,
        jobs,
        {"default": recall_client(settings)},
        LocalStore(settings.TRANSCRIPTS_STORE),
        Dispatcher.from_settings(jobs, settings),
    )
    return Harness(pipeline, client)


@pytest.fixture
def start_system(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., System]]:
    """Start the system (any number of times) on the test's Redis, quick to recover and to
    retry, Recall's quotas a tenth as long as Recall's; every process stopped at the end."""
    systems: list[System] = []

    def start(
        workers: int = 1, emulator_args: tuple[str, ...] = (), **env_overrides: str
    ) -> System:
        system = start_whole_system(
            redis_url,
            tmp_path,
            workers=workers,
            emulator_args=(*SYSTEM_EMULATOR_ARGS, *emulator_args),
            **{**SYSTEM_ENV, **env_overrides},
        )
        systems.append(system)
        return system

    yield start
    for system in systems:
        system.stop()
