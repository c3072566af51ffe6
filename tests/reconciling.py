"""What the reconciliation tests share: recordings at the emulator that ended without their
webhook, a reconciliation and a fleet's periodic run over the tests' harness, and reading what
they did (jobs, creates at Recall, metrics)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import requests

from harness import EmulatorHandle, recording_done, wait_for
from tasks import keys
from tasks.events import parse_event
from tasks.jobs.states import State
from tasks.metrics import Metrics, RedisCollector
from tasks.outcomes import Outcome as StepOutcome
from tasks.reconcile import Periodic, Reconciliation, reconciliations
from tests.helpers import Harness

HOURS_AGO = 2


def hours_ago_iso(hours_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours_ago)).isoformat()


def silent_recordings(
    emulator: EmulatorHandle, prefix: str, count: int, **fields: Any
) -> list[str]:
    """`count` recordings at "Recall", created two hours ago, ended without their webhook unless
    the test sends it."""
    response = requests.post(
        f"{emulator.url}/_emulator/recordings",
        json={
            "count": count,
            "id_prefix": prefix,
            "created_from": hours_ago_iso(HOURS_AGO + 0.5),
            "created_to": hours_ago_iso(HOURS_AGO),
            "duration_s": 600,
            "send_done": False,
            **fields,
        },
        timeout=10,
    )
    response.raise_for_status()
    ids: list[str] = response.json()["ids"]
    return ids


def issue_scenario(emulator: EmulatorHandle) -> dict[str, list[str]]:
    """The issue's: 10 announced, 10 finished silently, 2 transcribed at Recall, 2 processing."""
    return {
        "announced": silent_recordings(emulator, "announced-", 10),
        "silent": silent_recordings(emulator, "silent-", 10),
        "transcribed": silent_recordings(emulator, "transcribed-", 2, transcript=True),
        "processing": silent_recordings(emulator, "processing-", 2, status="processing"),
    }


def reconciliation_of(harness: Harness, *, dry_run: bool = False) -> Reconciliation:
    settings = harness.pipeline.settings
    found = reconciliations(
        settings,
        harness.pipeline.dispatch,
        harness.pipeline.recalls,
        Metrics(harness.redis),
        dry_run=dry_run,
    )
    return found["default"]


def periodic_of(harness: Harness, interval_s: float = 3600.0) -> Periodic:
    return Periodic(
        harness.redis,
        {"default": reconciliation_of(harness)},
        interval_s,
        harness.pipeline.settings.RECONCILE_LOOKBACK_S,
        10,
    )


def ingest_done(harness: Harness, recording_id: str) -> StepOutcome:
    return harness.pipeline.ingest(parse_event(recording_done(recording_id))).outcome


def persist_every_job(harness: Harness) -> None:
    """Run every queued step, and the polls they fall due for, until no job is unfinished."""

    def finished() -> bool:
        harness.drain(200)
        due, _ = harness.pipeline.jobs.claim_due()
        harness.pipeline.dispatch.redrive(due)
        harness.drain(200)
        jobs = harness.pipeline.jobs
        return not any(next(jobs.records(state), None) for state in State if state.active)

    wait_for(finished, 30, interval=0.1, what="every job finished")


def jobs_of(harness: Harness, recording_id: str) -> list[str]:
    members = harness.redis.zrange(keys.recording(recording_id), 0, -1)
    return sorted(m.decode() for m in members)  # type: ignore[union-attr]


def creates_of(emulator: EmulatorHandle) -> dict[str, int]:
    created: dict[str, int] = emulator.stats()["created_by_recording"]
    return created


def scrape_metrics(client: redis.Redis) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(RedisCollector(client))
    return generate_latest(registry).decode()
