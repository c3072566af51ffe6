"""Reconciliation with Recall's List Recordings (issue 21): the recordings whose `recording.done`
never reached us get exactly the job it would have started, once, and nothing else does."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import requests

from harness import EmulatorHandle, System, recording_done, signed, wait_for
from receiver.app import create_app
from tasks import keys
from tasks.jobs.states import State
from tasks.outcomes import Outcome as StepOutcome
from tasks.recall.client import INLINE_WAIT_S
from tasks.recall.limiter import DEFAULT_RATES, Family, Limiter, Rate, parse_rates
from tasks.recalls import recall_client
from tasks.reconcile import OVERLAP_S, Outcome, Reconciliation, Walk
from tasks.reconcile.walk import PHASES
from tasks.settings import Settings
from tests.cluster import cluster, wait_until_promoted
from tests.helpers import Harness, reconfigure
from tests.reconciling import (
    HOURS_AGO,
    creates_of,
    hours_ago_iso,
    ingest_done,
    issue_scenario,
    jobs_of,
    periodic_of,
    persist_every_job,
    reconciliation_of,
    scrape_metrics,
    silent_recordings,
)


def test_missed_webhooks_found_and_each_transcribed_once(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    ids = issue_scenario(emulator)
    for recording_id in ids["announced"]:
        assert ingest_done(harness, recording_id) == StepOutcome.JOB_CREATED

    assert periodic_of(harness).run("default")
    persist_every_job(harness)

    creates = creates_of(emulator)
    for recording_id in ids["announced"] + ids["silent"]:
        assert creates.get(recording_id) == 1, recording_id
        [job_id] = jobs_of(harness, recording_id)
        job = harness.pipeline.jobs.record(job_id)
        assert job is not None and job.state == State.DONE
        assert any((Path(harness.pipeline.settings.TRANSCRIPTS_STORE) / recording_id).iterdir())
    for recording_id in ids["silent"]:
        [job_id] = jobs_of(harness, recording_id)
        job = harness.pipeline.jobs.record(job_id)
        assert job is not None and job.metadata["source"] == "reconcile"
        assert set(job.metadata) == {"source", "walk"}  # the walk that submitted it
        assert job.view().source == "reconcile"
    for recording_id in ids["transcribed"]:  # only the transcript someone else had made
        assert creates.get(recording_id) == 1 and jobs_of(harness, recording_id) == []
    for recording_id in ids["processing"]:
        assert recording_id not in creates and jobs_of(harness, recording_id) == []

    # The ten missed webhooks arrive late (Svix's last retry, a replay): nothing new.
    harness.clear()
    for recording_id in ids["silent"]:
        assert ingest_done(harness, recording_id) == StepOutcome.JOB_EXISTS
    assert harness.queued() == []
    assert creates_of(emulator) == creates
    for recording_id in ids["silent"]:  # the first source stays
        [job_id] = jobs_of(harness, recording_id)
        job = harness.pipeline.jobs.record(job_id)
        assert job is not None and job.view().source == "reconcile"

    text = scrape_metrics(harness.redis)
    assert (
        'recall_transcribe_reconciled_total{outcome="submitted",workspace="default"} 10.0' in text
    )
    assert 'recall_transcribe_reconciled_total{outcome="known",workspace="default"} 10.0' in text
    assert 'outcome="transcribed",workspace="default"} 2.0' in text


def test_second_reconciliation_adds_nothing(harness: Harness, emulator: EmulatorHandle) -> None:
    ids = issue_scenario(emulator)
    reconciliation = reconciliation_of(harness)
    window = {"after": time.time() - 86400, "before": time.time()}
    first = reconciliation.walk(Walk(**window))
    assert (first.count(Outcome.SUBMITTED), first.count(Outcome.KNOWN)) == (20, 0)
    queued = harness.queued()

    second = reconciliation.walk(Walk(**window))
    assert second.counts == {"known": 20, "transcribed": 2}
    assert harness.queued() == queued  # no step sent again
    assert sum(len(jobs_of(harness, r)) for group in ids.values() for r in group) == 20


def test_dry_run_creates_nothing(harness: Harness, emulator: EmulatorHandle) -> None:
    ids = issue_scenario(emulator)
    walk = reconciliation_of(harness, dry_run=True).walk(
        Walk(after=time.time() - 86400, before=time.time())
    )
    assert walk.counts == {"submitted": 20, "transcribed": 2}
    assert harness.queued() == []
    assert all(jobs_of(harness, r) == [] for group in ids.values() for r in group)
    assert harness.redis.hgetall(keys.METRIC_RECONCILED) == {}  # nothing done, nothing counted


def test_recently_finished_left_to_their_webhook(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    recent = silent_recordings(
        emulator,
        "recent-",
        3,
        created_from=hours_ago_iso(0.2),
        created_to=hours_ago_iso(0.1),
        duration_s=300,
    )
    walk = reconciliation_of(harness).walk(Walk(after=time.time() - 86400, before=time.time()))
    assert walk.counts == {"unfinished": 3}
    assert all(jobs_of(harness, r) == [] for r in recent)
    assert walk.oldest_pending is not None  # the next periodic run looks at them again


def test_transcribed_ones_submitted_when_not_skipped(
    harness: Harness, emulator: EmulatorHandle, settings: Settings
) -> None:
    ids = silent_recordings(emulator, "transcribed-", 2, transcript=True)
    reconciliation = reconciliation_of(harness)
    reconciliation.skip_transcribed = False
    walk = reconciliation.walk(Walk(after=time.time() - 86400, before=time.time()))
    assert walk.counts == {"submitted": 2}
    assert all(len(jobs_of(harness, r)) == 1 for r in ids)


def test_walk_resumes_after_a_crash_mid_walk(
    harness: Harness, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = silent_recordings(emulator, "silent-", 10)  # pages of 3: 4 pages
    periodic = periodic_of(harness)
    real_page = Reconciliation._page
    handled = []

    def crashing(self: Reconciliation, walk: Walk, recordings: list[Any]) -> Any:
        if PHASES[walk.phase] == "done":
            if len(handled) == 2:
                raise RuntimeError("the worker died here")
            handled.append(walk.pages)
        return real_page(self, walk, recordings)

    monkeypatch.setattr(Reconciliation, "_page", crashing)
    assert periodic.run_due() == 0  # the run failed on its third page of finished recordings
    saved = Walk.load(harness.redis.hget(keys.reconcile("default"), "walk"))
    pending_pages = len(PHASES) - 1  # the processing and paused recordings (one page each)
    assert saved is not None and saved.pages == pending_pages + 2 and saved.cursor is not None
    assert periodic.due("default")

    monkeypatch.setattr(Reconciliation, "_page", real_page)
    calls_before = emulator.stats()["calls"]["recordings"]
    assert periodic.run("default")  # another worker, or this one later: goes on at page 3
    # pages 3 and 4 of the finished ones, the last phase
    assert emulator.stats()["calls"]["recordings"] - calls_before == 2
    assert all(len(jobs_of(harness, r)) == 1 for r in silent)
    state = harness.redis.hgetall(keys.reconcile("default"))
    assert b"walk" not in state and b"mark" in state
    assert not periodic.due("default")


def test_jobs_submitted_before_redis_cut_a_page_short_are_still_counted_and_logged(
    harness: Harness,
    emulator: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    silent = silent_recordings(emulator, "silent-", 10)  # pages of 3
    periodic = periodic_of(harness)
    real_submit = Reconciliation._submit
    submitted: list[str] = []

    def failing(self: Reconciliation, recording: Any, walk_id: str | None) -> bool:
        if len(submitted) == 4:  # the second job of the second page
            raise redis.ConnectionError("Redis is failing over")
        submitted.append(recording.id)
        return real_submit(self, recording, walk_id)

    with caplog.at_level(logging.WARNING, logger="tasks.reconcile.walk"):
        monkeypatch.setattr(Reconciliation, "_submit", failing)
        assert periodic.run_due() == 0
        monkeypatch.setattr(Reconciliation, "_submit", real_submit)
        assert periodic.run("default")
    logged = " ".join(r.getMessage() for r in caplog.records if "recording.done" in r.getMessage())
    assert all(r in logged for r in silent)
    assert 'outcome="submitted",workspace="default"} 10.0' in scrape_metrics(harness.redis)
    assert 'outcome="known",workspace="default"} 0.0' in scrape_metrics(harness.redis)


def test_one_worker_at_a_time_and_the_high_water_mark(
    harness: Harness, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent_recordings(emulator, "processing-", 1, status="processing")
    one, other = periodic_of(harness), periodic_of(harness)
    lease = harness.redis.lock(keys.reconcile_lease("default"), timeout=10)
    assert lease.acquire(blocking=False)
    assert not other.run("default")  # the lease is held: no second walk
    lease.release()

    assert one.run("default")
    mark = float(harness.redis.hget(keys.reconcile("default"), "mark") or 0)
    # Held back to the recording still processing (created two hours ago and a half).
    assert time.time() - (HOURS_AGO + 0.5) * 3600 - 60 < mark < time.time() - HOURS_AGO * 3600

    # The next run starts an hour before the mark.
    harness.redis.hset(keys.reconcile("default"), "ended_at", 0)
    started: list[Walk] = []
    real_walk = Reconciliation.walk

    def spy(self: Reconciliation, walk: Walk, **kwargs: Any) -> Walk:
        started.append(Walk(**json.loads(walk.dump())))
        return real_walk(self, walk, **kwargs)

    monkeypatch.setattr(Reconciliation, "walk", spy)
    assert other.run("default")
    assert started[0].after == pytest.approx(mark - OVERLAP_S)


def test_backfill_waits_for_its_own_quota_and_recalls_429s(
    harness: Harness, emulator: EmulatorHandle, settings: Settings
) -> None:
    silent = silent_recordings(emulator, "silent-", 12)  # 4 pages of 3
    emulator.fault(target="recordings", action="status", status=429, retry_after=1, times=1)
    paced = reconfigure(settings, RECALL_RATE_LIMITS="recordings=2/1")
    limiter = Limiter(harness.redis, paced.rate_limits, INLINE_WAIT_S)
    recall = recall_client(paced, limiter)
    reconciliation = Reconciliation(
        harness.pipeline.dispatch, recall, "default", paced.RECONCILE_GRACE_S, True
    )
    started = time.monotonic()
    walk = reconciliation.walk(Walk(after=time.time() - 86400, before=time.time()))
    assert walk.count(Outcome.SUBMITTED) == 12
    assert time.monotonic() - started >= 1.0  # waited, never failed
    assert all(len(jobs_of(harness, r)) == 1 for r in silent)
    assert harness.redis.zcard(keys.rate("default", Family.RECORDINGS)) > 0
    assert harness.redis.zcard(keys.rate("default", Family.LIST)) == 0  # not the pipeline's


def test_recordings_is_a_family_of_its_own() -> None:
    assert DEFAULT_RATES[Family.RECORDINGS] == Rate(60, 60)
    rates = parse_rates("recordings=30/60")
    assert rates is not None and rates[Family.RECORDINGS] == Rate(30, 60)
    assert rates[Family.LIST] == Rate(60, 60)
    with pytest.raises(ValueError, match="recordings"):
        parse_rates("records=1/1")


def test_last_verified_webhook_time_is_a_metric(settings: Settings, rclient: redis.Redis) -> None:
    client = create_app(settings).test_client()
    before = time.time()
    body, headers = signed(recording_done("rec-1"))
    assert client.post("/webhooks/recall", data=body, headers=headers).status_code == 200
    at = float(rclient.hget(keys.METRIC_LAST_WEBHOOK, "default") or 0)
    assert before - 1 <= at <= time.time()
    assert "recall_transcribe_last_webhook_timestamp_seconds" in scrape_metrics(rclient)


def test_alert_rules_name_metrics_we_serve_and_prometheus_loads_them(rclient: redis.Redis) -> None:
    import re

    import yaml

    root = Path(__file__).resolve().parent.parent
    served = scrape_metrics(rclient)
    [group] = yaml.safe_load((root / "deploy/alerts.yml").read_text())["groups"]
    rules = {rule["alert"]: rule["expr"] for rule in group["rules"]}
    assert set(rules) == {"NoWebhooksWhileRecordingsFinish", "ReconciliationSubmittedJobs"}
    for expr in rules.values():
        for name in re.findall(r"recall_transcribe_[a-z_]+", expr):
            assert f"\n{name}{{" in served, name
    prometheus = yaml.safe_load((root / "deploy/prometheus.yml").read_text())
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    [rule_file] = prometheus["rule_files"]
    assert f"./deploy/alerts.yml:{rule_file}:ro" in compose["services"]["prometheus"]["volumes"]


def test_cli_reconcile_dry_run_then_for_real(
    settings: Settings, emulator: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    from recall_transcribe.cli import main

    silent = silent_recordings(emulator, "silent-", 4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_URL", settings.REDIS_URL)
        patch.setenv("RECALL_API_BASE_URL", settings.RECALL_API_BASE_URL)
        patch.setenv("RECALL_API_KEY", "test-key")
        patch.setenv("TRANSCRIPTS_STORE", settings.TRANSCRIPTS_STORE)
        assert main(["reconcile", "--since", "1d", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "submitted 4, known 0" in out and "dry run" in out
        assert all(f"would submit {r}" in out for r in silent)
        assert main(["reconcile", "--since", "1d"]) == 0
        out = capsys.readouterr().out
        assert "default: submitted 4, known 0, transcribed 0, unfinished 0" in out
        assert main(["reconcile", "--since", "1d", "--until", datetime.now(UTC).isoformat()]) == 0
        assert "submitted 0, known 4" in capsys.readouterr().out
        assert main(["reconcile", "--since", "yesterday"]) == 2
        assert main(["reconcile", "--workspace", "nowhere"]) == 2


def test_reconcile_logs_the_recordings_it_submitted(
    harness: Harness, emulator: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    silent = silent_recordings(emulator, "silent-", 2)
    with caplog.at_level(logging.WARNING, logger="tasks.reconcile.walk"):
        reconciliation_of(harness).walk(Walk(after=time.time() - 86400, before=time.time()))
    [line] = [r.getMessage() for r in caplog.records if "recording.done" in r.getMessage()]
    assert all(r in line for r in silent)


# The fleet's periodic reconciliation, as real processes: quick runs, a short lease, and a walk
# of many small pages paced at one a second, so that a test can break into the middle of one.
QUICK_RECONCILE = {
    "RECONCILE_INTERVAL_S": "2",
    "RECONCILE_GRACE_S": "60",
    "RECALL_POLL_INITIAL_S": "1",
}
SLOW_WALK = {
    **QUICK_RECONCILE,
    "RECONCILE_LEASE_S": "3",
    "RECALL_RATE_LIMITS": "recordings=1/1",
    "JOB_STEP_LEASE_S": "3",
    "INBOX_RESEND_S": "3",
    "CELERY_VISIBILITY_TIMEOUT_S": "5",
}
SMALL_PAGES = ("--page-size", "3")  # the 22 finished recordings: 8 pages, ~10 s with the rest


def _fleet_scenario(emulator: EmulatorHandle) -> dict[str, list[str]]:
    """What Recall holds when the fleet starts (its first run looks back RECONCILE_LOOKBACK_S):
    the issue's scenario, the announced ten sent to the receiver."""
    return {
        "announced": silent_recordings(emulator, "announced-", 10, send_done=True),
        "silent": silent_recordings(emulator, "silent-", 10),
        "transcribed": silent_recordings(emulator, "transcribed-", 2, transcript=True),
        "processing": silent_recordings(emulator, "processing-", 2, status="processing"),
    }


def _each_transcribed_once(system: System, ids: dict[str, list[str]]) -> None:
    """The 20 finished recordings persisted with one create each, none for the other 4, and the
    10 missed webhooks arriving late add nothing."""
    emulator = system.emulator
    done = ids["announced"] + ids["silent"]

    def all_persisted() -> bool:
        return all((system.store / r).is_dir() and any((system.store / r).iterdir()) for r in done)

    wait_for(all_persisted, 120, interval=0.5, what="the 20 finished recordings persisted")
    creates = creates_of(emulator)
    assert all(creates.get(r) == 1 for r in done), creates
    assert all(creates.get(r) == 1 for r in ids["transcribed"])  # the one seeded
    assert not any(r in creates for r in ids["processing"])

    # The ten missed webhooks arrive late (new message ids: as Svix's last retry or a replay).
    for recording_id in ids["silent"]:
        assert system.post(recording_done(recording_id)).json() == {"status": "enqueued"}
    time.sleep(3)  # the workers apply them (and a periodic run passes again)
    assert creates_of(emulator) == creates
    jobs = system.jobs()
    assert len(jobs) == 20 and all(job["state"] == "done" for job in jobs)
    sources = {job["recording_id"]: job["source"] for job in jobs}
    assert all(sources[r] == "reconcile" for r in ids["silent"]), sources
    assert all(sources[r] == "webhook" for r in ids["announced"]), sources
    metrics = requests.get(f"{system.receiver_url}/metrics", timeout=5).text
    assert 'recall_transcribe_reconciled_total{outcome="submitted",workspace="default"} 10.0' in (
        metrics
    )


def _walked(client: redis.Redis) -> int:
    """How many pages the walk in progress has handled (0: none in progress)."""
    walk = Walk.load(cast(bytes | None, client.hget(keys.reconcile("default"), "walk")))
    return walk.pages if walk is not None else 0


@pytest.mark.system
def test_fleet_reconciles_missed_webhooks_once(start_system: Any) -> None:
    system: System = start_system(workers=0, **QUICK_RECONCILE)
    emulator = system.emulator
    ids = _fleet_scenario(emulator)
    system.start_worker("w1")
    system.start_worker("w2")
    _each_transcribed_once(system, ids)

    # The two long meetings end later, silently: the mark was held back for them.
    for recording_id in ids["processing"]:
        requests.post(
            f"{emulator.url}/_emulator/recordings/{recording_id}/finish",
            json={"send_done": False, "completed_at": hours_ago_iso(0.1)},
            timeout=5,
        ).raise_for_status()
    wait_for(
        lambda: all(creates_of(emulator).get(r) == 1 for r in ids["processing"]),
        30,
        interval=0.5,
        what="the long meetings found once they ended",
    )


@pytest.mark.system
def test_a_worker_killed_mid_walk_leaves_it_to_another(start_system: Any) -> None:
    """SIGKILLed in the middle of a periodic reconciliation: its lease runs out
    (RECONCILE_LEASE_S) and the next worker goes on from the page saved."""
    system: System = start_system(workers=0, emulator_args=SMALL_PAGES, **SLOW_WALK)
    ids = _fleet_scenario(system.emulator)
    client = redis.Redis.from_url(system.redis_url)
    first = system.start_worker("w1")
    wait_for(lambda: _walked(client) >= 3, 60, interval=0.1, what="a walk under way")
    first.kill()
    assert client.exists(keys.reconcile_lease("default"))  # held by the dead worker, for now
    assert 3 <= _walked(client) < 10
    second = system.start_worker("w2")
    _each_transcribed_once(system, ids)
    assert "resuming a walk at page" in second.log()


@pytest.mark.system
def test_a_redis_failover_mid_walk_loses_and_repeats_nothing(
    start_system: Any, tmp_path: Path
) -> None:
    """The primary SIGKILLed in the middle of a periodic reconciliation; Sentinel promotes its
    replica and the fleet goes on from what the replica holds."""
    nodes = cluster(tmp_path / "cluster")
    old = nodes.primary_port
    try:
        system: System = start_system(
            workers=0,
            emulator_args=SMALL_PAGES,
            REDIS_URL=f"redis://127.0.0.1:{old}/0",  # through Sentinel, only its database counts
            REDIS_SENTINELS=nodes.sentinels,
            REDIS_MIN_REPLICAS="1",
            **SLOW_WALK,
        )
        ids = _fleet_scenario(system.emulator)
        system.start_worker("w1")
        system.start_worker("w2")
        primary = redis.Redis(port=old)
        wait_for(lambda: _walked(primary) >= 3, 60, 0.1, what="a walk under way")
        nodes.kill(old)
        wait_until_promoted(nodes, old)
        nodes.start_server(old)  # back, as the new primary's replica
        _each_transcribed_once(system, ids)
    finally:
        nodes.stop()
