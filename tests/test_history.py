"""A job's history: every transition with the state and step after it and the error it met,
written by the command that makes the transition, trimmed, pruned with its job, served over HTTP
and printed by the CLI; and the time-to-transcript metric counted once per job."""

from __future__ import annotations

import io
import json
import subprocess
from typing import Any

import redis
import requests
from prometheus_client.core import Metric

from harness import API_TOKEN, EmulatorHandle, System, command, transcript_event, wait_for
from recall_transcribe.show import show
from tasks.callbacks.views import job_view
from tasks.events import parse_event
from tasks.jobs.errors import ErrorCode
from tasks.jobs.history import SHORT_PHASES, Event
from tasks.jobs.states import PHASES, State, Step
from tasks.jobs.store import JobStore
from tasks.metrics import RedisCollector
from tasks.outcomes import Outcome
from tests.helpers import (
    Harness,
    job_whose_transcript_fails,
    run,
    start,
    state,
    wait_transcript_done,
)

PROVIDER = {"recallai_async": {"language_code": "en"}}


def events(jobs: JobStore, job_id: str) -> list[Event]:
    history = jobs.history(job_id)
    assert history is not None
    return history.events


def timeline(jobs: JobStore, job_id: str) -> list[tuple[str, State, Step | None]]:
    return [(e.event, e.state, e.step) for e in events(jobs, job_id)]


def test_a_job_that_met_a_503_and_a_429_shows_both_retries_then_done(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id = start(harness, emulator)
    emulator.fault(target="create", action="status", status=503)
    assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    emulator.fault(target="create", action="status", status=429, retry_after=0.01)
    assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    assert run(harness, Step.CREATE, job_id) == Outcome.CREATED
    wait_transcript_done(emulator, "r1")
    assert run(harness, Step.AWAIT, job_id) == Outcome.FETCH
    harness.drain()
    jobs = harness.pipeline.jobs
    assert state(harness, job_id).state == State.DONE
    shown = events(jobs, job_id)
    assert [e.event for e in shown][:5] == [
        "submitted",
        "start_create",
        "retry_later",
        "start_create",
        "retry_later",
    ]
    assert shown[2].error and shown[2].error.code == ErrorCode.RECALL_UNAVAILABLE
    assert shown[4].error and shown[4].error.code == ErrorCode.RATE_LIMITED
    assert (shown[-1].event, shown[-1].state, shown[-1].step) == ("finish", State.DONE, None)
    assert "record_created" in [e.event for e in shown]
    assert [e.at for e in shown] == sorted(e.at for e in shown)


def test_a_failed_job_shows_the_error_it_failed_with(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id, transcript_id = job_whose_transcript_fails(harness, emulator)
    event = transcript_event(
        "transcript.failed", "r1", transcript_id, {"job_id": job_id}, "provider_connection_failed"
    )
    harness.pipeline.ingest(parse_event(event))
    last = events(harness.pipeline.jobs, job_id)[-1]
    assert (last.event, last.state, last.step) == ("transcript_failed", State.FAILED, None)
    assert last.error is not None and last.error.code == ErrorCode.TRANSCRIPT_FAILED
    assert "provider_connection_failed" in last.error.message


def test_after_every_transition_the_last_event_is_the_jobs_state(rclient: redis.Redis) -> None:
    jobs = JobStore(rclient, lease_s=30)
    job_id, _ = jobs.submit("r1", PROVIDER)

    def agrees() -> None:
        job = jobs.record(job_id)
        assert job is not None
        last = events(jobs, job_id)[-1]
        assert (last.state, last.step) == (job.state, job.step)

    agrees()
    assert jobs.start_create(_job(jobs, job_id), jobs.now())
    agrees()
    assert jobs.retry_later(_job(jobs, job_id), 0, ErrorCode.RECALL_UNAVAILABLE, "503")
    agrees()
    assert jobs.record_created(job_id, "t-1", 60) == State.AWAITING
    agrees()
    assert jobs.poll_later(_job(jobs, job_id), 60)
    agrees()
    assert jobs.fail(job_id, ErrorCode.TIMEOUT, "still processing")
    agrees()
    assert jobs.record_archive(job_id, "t-1")
    agrees()
    assert jobs.retry(job_id) is not None
    agrees()
    assert not jobs.finish(job_id)  # refused: nothing recorded
    agrees()
    assert timeline(jobs, job_id)[-3:] == [
        ("fail", State.FAILED, None),
        ("record_archive", State.FAILED, None),
        ("retry", State.DONE, None),
    ]


def test_every_phase_has_its_own_short_form_in_the_history() -> None:
    assert sorted(SHORT_PHASES.values()) == sorted(PHASES)


def test_a_quota_wait_is_an_event_without_an_error(rclient: redis.Redis) -> None:
    jobs = JobStore(rclient, lease_s=30)
    job_id, _ = jobs.submit("r1", PROVIDER)
    jobs.retry_later(_job(jobs, job_id), 1, ErrorCode.RATE_LIMITED, "quota", count=False)
    last = events(jobs, job_id)[-1]
    assert last.event == "retry_later" and last.error is None


def test_the_history_keeps_the_newest_job_history_max_events(rclient: redis.Redis) -> None:
    jobs = JobStore(rclient, lease_s=30, history_max=5)
    job_id, _ = jobs.submit("r1", PROVIDER)
    for n in range(8):
        jobs.retry_later(_job(jobs, job_id), 0, ErrorCode.RECALL_UNAVAILABLE, f"try\n{n}")
    kept = events(jobs, job_id)
    assert len(kept) == 5
    assert [e.error.message for e in kept if e.error] == [f"try {n}" for n in range(3, 8)]


def test_prune_deletes_the_history_with_its_job(rclient: redis.Redis) -> None:
    jobs = JobStore(rclient, lease_s=30)
    job_id, _ = jobs.submit("r1", PROVIDER)
    assert jobs.fail(job_id, ErrorCode.INTERNAL, "boom")
    assert jobs.prune_finished(retention_s=0.0) == 1
    assert jobs.history(job_id) is None and not rclient.keys(f"*{job_id}*")


def test_a_job_past_its_deadline_shows_why_it_failed(rclient: redis.Redis) -> None:
    jobs = JobStore(rclient, lease_s=30, deadline_s=0.01)
    job_id, _ = jobs.submit("r1", PROVIDER)
    wait_for(lambda: jobs.claim_due()[0] == [] and not jobs.is_active(job_id), 5, what="failed")
    last = events(jobs, job_id)[-1]
    assert (last.event, last.state) == ("fail", State.FAILED)
    assert last.error is not None and last.error.code == ErrorCode.DEADLINE_EXCEEDED


HOSTILE = [
    "a\nb",
    "c\rd",
    "e\u2028f",
    "x 100 rl qc internal y",  # the compact line's own shape
    "",
    "\u00e9\U0001f600" * 300,
    "\x1b[2J\x1b]0;pwned\x07",
    "z" * 5000,
    "q\x85r",
]


def test_hostile_error_messages_never_break_another_event(rclient: redis.Redis) -> None:
    jobs = JobStore(rclient, 30, history_max=5)
    job_id, _ = jobs.submit("rec-h", PROVIDER)
    for message in HOSTILE:
        assert jobs.retry_later(_job(jobs, job_id), 0.0, ErrorCode.INTERNAL, message)
    kept = events(jobs, job_id)
    assert len(kept) == 5
    assert all(e.event == "retry_later" and e.error and e.error.code == "internal" for e in kept)


def test_recalls_sub_code_is_kept_cut_in_the_history(rclient: redis.Redis) -> None:
    """A transcript's sub_code is Recall's text: a hostile or broken one is cut, on one line."""
    jobs = JobStore(rclient, 30)
    job_id, _ = jobs.submit("rec-s", PROVIDER)
    jobs.start_create(_job(jobs, job_id), 0.0)
    jobs.record_created(job_id, "t1", 60)
    sub_code = "s\r\n x\u2028\x1b[31m" + "\u00e9" * 100_000
    assert jobs.transcript_finished(job_id, "t1", "failed", sub_code) == "failed"
    last = events(jobs, job_id)[-1]
    assert last.error and last.error.code == "transcript_failed"
    assert len(last.error.message.encode()) <= 300 and "\ufffd" not in last.error.message
    failed = _job(jobs, job_id).error
    assert failed is not None and len(failed.message.encode()) <= 300  # the job's error too


def test_jobs_show_prints_no_control_character_of_an_error(rclient: redis.Redis) -> None:
    jobs = JobStore(rclient, 30)
    job_id, _ = jobs.submit("rec-c", PROVIDER)
    jobs.fail(job_id, ErrorCode.RECALL_REJECTED, "HTTP 400: \x1b]0;owned\x07\x1b[2J\x1b[1;1Hok")
    out = io.StringIO()
    view = job_view(jobs, job_id)
    history = jobs.history(job_id)
    assert view is not None and history is not None
    show(view, history, False, out)
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()


def test_job_duration_counts_each_job_once_at_its_first_finish(rclient: redis.Redis) -> None:
    jobs = JobStore(rclient, lease_s=30)
    done, _ = jobs.submit("r-done", PROVIDER)
    failed, _ = jobs.submit("r-failed", PROVIDER)
    jobs.start_create(_job(jobs, done), jobs.now())
    jobs.record_created(done, "t-1", 60)
    jobs.transcript_finished(done, "t-1", "done", None)
    assert jobs.finish(done)
    assert jobs.fail(failed, ErrorCode.RECALL_REJECTED, "no")
    assert jobs.retry(failed) is not None
    assert jobs.fail(failed, ErrorCode.RECALL_REJECTED, "no, again")  # not a first finish
    scraped = {m.name: m for m in RedisCollector(rclient).collect()}
    counts = _samples(scraped["recall_transcribe_job_duration_seconds"], "_count")
    assert counts == {("default", "done"): 1.0, ("default", "failed"): 1.0}
    one_second = _samples(scraped["recall_transcribe_job_duration_seconds"], "_bucket", le="1.0")
    assert one_second == {("default", "done"): 1.0, ("default", "failed"): 1.0}
    failures = _samples(scraped["recall_transcribe_job_failures"], "_total")
    assert failures == {("recall_rejected", "default"): 2.0}


def test_history_is_served_over_http_and_printed_by_the_cli(start_system: Any) -> None:
    system: System = start_system()
    system.emulator.recording("hist-rec")
    system.emulator.fault(target="create", action="status", status=503)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    created = requests.post(
        f"{system.receiver_url}/api/v1/jobs",
        json={"recording_id": "hist-rec"},
        headers=auth,
        timeout=10,
    )
    job_id = created.json()["id"]
    url = f"{system.receiver_url}/api/v1/jobs/{job_id}/history"
    wait_for(
        lambda: requests.get(url, headers=auth, timeout=10).json()["events"][-1]["state"] == "done",
        60,
        what="job done",
    )
    body = requests.get(url, headers=auth, timeout=10).json()
    assert body["job_id"] == job_id and body["events"][0]["event"] == "submitted"
    retried = [e for e in body["events"] if e["event"] == "retry_later"]
    assert retried and retried[0]["error"]["code"] == "recall_unavailable"
    assert set(body["events"][0]) == {"at", "event", "state", "step", "error"}
    assert requests.get(url, timeout=10).status_code == 401
    unknown = f"{system.receiver_url}/api/v1/jobs/00000000-0000-0000-0000-000000000000/history"
    assert requests.get(unknown, headers=auth, timeout=10).status_code == 404

    shown = _cli(["jobs", "show", job_id], system.env)
    assert shown.returncode == 0, shown.stderr
    rows = shown.stdout.splitlines()
    assert "(started by api)" in shown.stdout
    assert any("retry_later" in row and "recall_unavailable" in row for row in rows)
    assert rows[-1].split()[1:3] == ["finish", "done"]
    as_json = json.loads(_cli(["jobs", "show", job_id, "--json"], system.env).stdout)
    assert as_json["state"] == "done" and as_json["history"] == body["events"]


def _job(jobs: JobStore, job_id: str) -> Any:
    found = jobs.record(job_id)
    assert found is not None
    return found


def _samples(metric: Metric, suffix: str, **match: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(v for k, v in s.labels.items() if k != "le"): s.value
        for s in metric.samples
        if s.name == metric.name + suffix
        and all(s.labels.get(k) == v for k, v in match.items())
        and s.value
    }


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command(), *args], env=env, capture_output=True, text=True, timeout=60)
