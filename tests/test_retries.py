"""Retries that never create twice, budgets that progress resets, and jobs that always end."""

from __future__ import annotations

import time
import types
from typing import Any

import pytest
import redis

from harness import EmulatorHandle, transcript_event, wait_for
from tasks import keys
from tasks.events import parse_event
from tasks.jobs.errors import ErrorCode
from tasks.jobs.states import State, Step
from tasks.outcomes import Outcome, Result
from tasks.recall.client import INLINE_WAIT_S
from tasks.recall.limiter import DEFAULT_RATES, Family, Limiter, Rate, Ticket, release_unused
from tasks.recalls import recall_client
from tasks.settings import Settings
from tests.helpers import (
    Harness,
    job_whose_transcript_fails,
    reconfigure,
    run,
    start,
    state,
    wait_transcript_done,
)
from worker.sweeper import redrive_due


def created(emulator: EmulatorHandle, recording_id: str = "r1") -> int:
    return int(emulator.stats()["created_by_recording"].get(recording_id, 0))


def retry(harness: Harness, job_id: str) -> None:
    """What the jobs API and `jobs retry` do: the transition, then the step it makes due."""
    assert harness.pipeline.dispatch.retry(job_id)


def test_retrying_a_job_that_failed_after_a_lost_create_answer_adopts_its_transcript(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id = start(harness, emulator)
    harness.clear()
    emulator.fault(target="create", action="lose_response")  # created, answer lost
    assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    emulator.fault(target="create", action="status", status=401)  # then a definite refusal
    assert run(harness, Step.CREATE, job_id) == Outcome.FAILED
    assert state(harness, job_id).error.code == ErrorCode.RECALL_UNAUTHORIZED  # type: ignore[union-attr]

    retry(harness, job_id)
    results = harness.drain()
    assert results[0] == Result(
        Outcome.CREATED,
        job_id,
        transcript_id=emulator.transcripts("r1")[0]["id"],
        state=State.AWAITING,
    )
    assert created(emulator) == 1 and emulator.stats()["calls"]["list"] == 1


def test_retrying_a_job_that_failed_fetching_fetches_the_same_transcript(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id = start(harness, emulator)
    harness.drain()
    wait_transcript_done(emulator, "r1")
    emulator.fault(target="download", action="status", status=404)
    assert run(harness, Step.AWAIT, job_id) == Outcome.FETCH
    assert outcomes_of(harness.drain()) == [Outcome.FAILED]
    transcript_id = state(harness, job_id).transcript_id

    retry(harness, job_id)
    assert state(harness, job_id).state == State.AWAITING
    assert outcomes_of(harness.drain()) == [Outcome.FETCH, Outcome.PERSISTED]
    assert state(harness, job_id).transcript_id == transcript_id
    assert created(emulator) == 1
    assert state(harness, job_id).attempts == 2


def test_retrying_hours_later_still_reconciles_before_creating(
    harness: Harness, emulator: EmulatorHandle, rclient: redis.Redis
) -> None:
    job_id = start(harness, emulator)
    harness.clear()
    emulator.fault(target="create", action="lose_response")
    run(harness, Step.CREATE, job_id)
    harness.pipeline.jobs.fail(job_id, ErrorCode.RECALL_UNREACHABLE, "gave up")
    rclient.hset(keys.job(job_id), "create_key_at", time.time() - 5 * 3600)
    retry(harness, job_id)
    assert outcomes_of(harness.drain())[0] == Outcome.CREATED
    assert created(emulator) == 1


def test_a_stale_transcript_event_after_a_retry_changes_nothing_the_transcript_does_not_say(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id, transcript_id = job_whose_transcript_fails(harness, emulator)
    event = transcript_event("transcript.failed", "r1", transcript_id, {"job_id": job_id}, "x")
    harness.pipeline.ingest(parse_event(event))
    assert state(harness, job_id).state == State.FAILED
    retry(harness, job_id)
    # An inbox re-send of the old event: it is about the job's one transcript, which did fail.
    harness.pipeline.ingest(parse_event(event))
    harness.drain()
    job = state(harness, job_id)
    assert job.state == State.FAILED and job.transcript_id == transcript_id
    assert created(emulator) == 1


def test_scattered_errors_over_a_long_wait_never_fail_a_job_whose_transcript_lives(
    harness: Harness, emulator: EmulatorHandle, settings: Settings
) -> None:
    harness.pipeline.settings = reconfigure(settings, MAX_STEP_RETRIES=2)
    job_id = start(harness, emulator)
    harness.drain()
    wait_transcript_done(emulator, "r1")
    assert emulator.state is not None
    emulator.state.transcripts[str(state(harness, job_id).transcript_id)].status = "processing"
    for _ in range(5):  # 10 errors in all, more than the budget, each pair after a good poll
        for _ in range(2):
            emulator.fault(target="retrieve", action="status", status=503)
            assert run(harness, Step.AWAIT, job_id) == Outcome.RETRY
        assert run(harness, Step.AWAIT, job_id) == Outcome.PROCESSING
    assert state(harness, job_id).state == State.AWAITING


def test_each_kind_of_error_has_its_own_budget(
    harness: Harness, emulator: EmulatorHandle, settings: Settings
) -> None:
    harness.pipeline.settings = reconfigure(settings, MAX_STEP_RETRIES=1)
    job_id = start(harness, emulator)
    emulator.fault(target="create", action="status", status=503)
    assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    emulator.fault(target="create", action="reset")  # a connection reset: another kind
    assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    assert run(harness, Step.CREATE, job_id) == Outcome.CREATED


def test_rate_limits_never_fail_a_job(
    harness: Harness, emulator: EmulatorHandle, settings: Settings
) -> None:
    harness.pipeline.settings = reconfigure(settings, MAX_STEP_RETRIES=1)
    job_id = start(harness, emulator)
    emulator.fault(target="create", action="status", status=429, retry_after=0.01, times=5)
    for _ in range(5):
        assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    assert run(harness, Step.CREATE, job_id) == Outcome.CREATED


@pytest.mark.parametrize(
    "failure",
    [OSError(28, "No space left on device"), ValueError("odd answer")],
    ids=["disk-full", "odd-answer"],
)
def test_a_step_failing_in_any_other_way_is_retried_then_ends_the_job_internal(
    harness: Harness,
    emulator: EmulatorHandle,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
) -> None:
    harness.pipeline.settings = reconfigure(settings, MAX_STEP_RETRIES=2)
    job_id = start(harness, emulator)
    harness.drain()
    wait_transcript_done(emulator, "r1")

    def broken(*_: object) -> None:
        raise failure

    monkeypatch.setattr(harness.pipeline.store, "save", broken)
    run(harness, Step.AWAIT, job_id)
    harness.clear()
    assert [run(harness, Step.FETCH, job_id) for _ in range(3)] == [
        Outcome.RETRY,
        Outcome.RETRY,
        Outcome.FAILED,
    ]
    job = state(harness, job_id)
    assert job.error is not None and job.error.code == ErrorCode.INTERNAL
    assert type(failure).__name__ in job.error.message


def test_transcript_done_for_a_job_whose_create_answer_was_lost_is_acted_on_at_once(
    harness: Harness, emulator: EmulatorHandle, settings: Settings
) -> None:
    harness.pipeline.settings = reconfigure(settings, RETRY_BACKOFF_BASE_S=300)
    job_id = start(harness, emulator)
    harness.clear()
    emulator.fault(target="create", action="lose_response")
    assert run(harness, Step.CREATE, job_id) == Outcome.RETRY  # next try in minutes
    wait_transcript_done(emulator, "r1")
    (made,) = emulator.transcripts("r1")
    event = transcript_event("transcript.done", "r1", made["id"], {"job_id": job_id})
    result = harness.pipeline.ingest(parse_event(event))
    assert result.outcome == Outcome.KEPT
    assert harness.enqueued == [(Step.CREATE, job_id)]  # at once, not after the backoff
    assert harness.drain()[0] == Result(
        Outcome.CREATED, job_id, transcript_id=made["id"], state=State.FETCHING
    )
    calls = emulator.stats()["calls"]
    assert calls["create"] == 1 and "list" not in calls  # adopted: no second create, no List


def test_remediation_lists_once_when_nothing_changed_since_the_refusal(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id = start(harness, emulator)
    emulator.seed("r1", 10, "done")
    assert run(harness, Step.CREATE, job_id) == Outcome.REMEDIATE
    assert run(harness, Step.REMEDIATE, job_id) == Outcome.SLOT_FREED
    assert run(harness, Step.CREATE, job_id) == Outcome.CREATED
    calls = emulator.stats()["calls"]
    assert (calls["list"], calls["delete"], calls["create"]) == (4, 1, 2)  # 4 pages: one listing


def test_a_slot_freed_by_another_job_before_remediation_lists_lets_the_job_create(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id = start(harness, emulator)
    seeded = emulator.seed("r1", 10, "done")
    assert run(harness, Step.CREATE, job_id) == Outcome.REMEDIATE
    assert emulator.state is not None
    emulator.state.transcripts[seeded[0]["id"]].status = "deleted"  # another job freed a slot
    harness.pipeline.jobs.recording_changed("r1")  # as another job's delete does
    assert run(harness, Step.REMEDIATE, job_id) == Outcome.SLOT_FREE
    assert run(harness, Step.CREATE, job_id) == Outcome.CREATED
    assert emulator.stats()["calls"].get("delete", 0) == 0
    wait_for(lambda: state(harness, job_id).state == State.AWAITING, 5)


def outcomes_of(results: list[Result]) -> list[Outcome]:
    return [result.outcome for result in results]


def test_a_listing_cut_short_by_the_quota_goes_on_from_its_cursor(
    harness: Harness, emulator: EmulatorHandle, settings: Settings, rclient: redis.Redis
) -> None:
    """List at 2 per second: each page after the first waits past a moment, so the job is
    rescheduled with its slot reserved and its listing kept; no page is fetched twice."""
    limiter = Limiter(rclient, {**DEFAULT_RATES, Family.LIST: Rate(2, 1.0)}, INLINE_WAIT_S)
    harness.pipeline.recalls["default"] = recall_client(settings, limiter)
    job_id = start(harness, emulator)
    emulator.seed("r1", 10, "done")  # 4 pages of 3
    assert run(harness, Step.CREATE, job_id) == Outcome.REMEDIATE
    outcomes = []
    for _ in range(10):
        result = harness.run(Step.REMEDIATE, job_id)
        outcomes.append(result.outcome)
        if result.outcome != Outcome.WAIT:  # its quota slot is later
            break
        assert state(harness, job_id).listing_next is not None
        time.sleep(float(result.detail.split()[-1].rstrip("s")))
    assert outcomes[-1] == Outcome.SLOT_FREED and len(outcomes) >= 2
    assert emulator.stats()["calls"]["list"] == 4


def test_jobs_on_a_recording_whose_creates_recall_always_refuses_all_end_after_one_try(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    """A 400 that is not the limit (expired media, say): no job's refusal or wait moves the
    recording's version, so no job sends another back to create."""
    emulator.recording("r1")
    emulator.fault(target="create", action="status", status=400, times=-1, recording_id="r1")
    job_ids = [harness.submit("r1", key=f"job-{index}") for index in range(6)]
    harness.drain(limit=100)
    assert harness.enqueued == []
    for job_id in job_ids:
        job = state(harness, job_id)
        assert job.state == State.FAILED and job.error is not None
        assert job.error.code == ErrorCode.RECALL_REJECTED
    calls = emulator.stats()["calls"]
    assert (calls["create"], calls["list"]) == (6, 6)  # one create and one listing each


def test_remediation_rounds_end_when_every_freed_slot_is_taken(
    harness: Harness, emulator: EmulatorHandle, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another tool takes each slot remediation frees: the rounds count against a budget that
    only a successful create resets, and the job ends `limit_reached`."""
    harness.pipeline.settings = reconfigure(settings, MAX_STEP_RETRIES=2)
    job_id = start(harness, emulator)
    emulator.seed("r1", 10, "done")
    delete = harness.pipeline.recalls["default"].delete_transcript

    def delete_then_refill(*args: Any, **kwargs: Any) -> None:
        delete(*args, **kwargs)
        emulator.seed("r1", 1, "done")

    monkeypatch.setattr(
        harness.pipeline.recalls["default"], "delete_transcript", delete_then_refill
    )
    harness.drain(limit=100)
    job = state(harness, job_id)
    assert job.state == State.FAILED and job.error is not None
    assert job.error.code == ErrorCode.LIMIT_REACHED and "3 rounds" in job.error.message
    assert emulator.stats()["calls"]["delete"] == 2


def test_a_create_held_back_by_the_quota_tells_no_other_job_that_a_slot_freed(
    harness: Harness, emulator: EmulatorHandle, settings: Settings, rclient: redis.Redis
) -> None:
    limiter = Limiter(rclient, {**DEFAULT_RATES, Family.CREATE: Rate(1, 60)}, INLINE_WAIT_S)
    harness.pipeline.recalls["default"] = recall_client(settings, limiter)
    emulator.recording("r1")
    emulator.fault(target="create", action="status", status=400, recording_id="r1")
    first, second = harness.submit("r1", key="first"), harness.submit("r1", key="second")
    harness.clear()
    assert harness.run(Step.CREATE, first).outcome == Outcome.REMEDIATE  # refused: a 400
    assert harness.run(Step.CREATE, second).outcome == Outcome.WAIT  # held back: no call
    assert harness.run(Step.REMEDIATE, first).outcome == Outcome.FAILED
    assert state(harness, first).error.code == ErrorCode.RECALL_REJECTED  # type: ignore[union-attr]
    assert emulator.stats()["calls"] == {"create": 1, "list": 1}


@pytest.mark.parametrize("knows", [False, True], ids=["answer-lost", "transcript-known"])
def test_retrying_a_job_whose_transcript_another_job_archived_finishes_from_the_archive(
    harness: Harness, emulator: EmulatorHandle, knows: bool
) -> None:
    """A failed job's transcript (its create answer lost, or known) is archived and deleted by
    another job's limit remediation; the retry, hours later, is done from the archive: that
    transcript, no create, never `not_found`."""
    job_id = start(harness, emulator)
    harness.clear()
    if knows:
        assert run(harness, Step.CREATE, job_id) == Outcome.CREATED
    else:
        emulator.fault(target="create", action="lose_response")
        assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    harness.pipeline.jobs.fail(job_id, ErrorCode.RECALL_UNREACHABLE, "gave up")
    wait_transcript_done(emulator, "r1")
    (mine,) = emulator.transcripts("r1")
    emulator.seed("r1", 9, "done")  # the limit; this job's transcript is the oldest

    other = harness.submit("r1", key="another job")
    assert outcomes_of(harness.drain()) == [Outcome.REMEDIATE, Outcome.SLOT_FREED, Outcome.CREATED]
    assert harness.pipeline.store.has("r1", mine["id"])
    assert state(harness, other).transcript_id != mine["id"]
    creates = emulator.stats()["calls"]["create"]

    retry(harness, job_id)
    assert harness.drain() == []
    job = state(harness, job_id)
    assert (job.state, job.transcript_id, job.error) == (State.DONE, mine["id"], None)
    assert emulator.stats()["calls"]["create"] == creates


def test_a_transcript_whose_job_is_retried_during_its_archive_is_not_deleted(
    harness: Harness, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = start(harness, emulator)
    harness.clear()
    assert run(harness, Step.CREATE, job_id) == Outcome.CREATED
    harness.pipeline.jobs.fail(job_id, ErrorCode.RECALL_UNREACHABLE, "gave up")
    wait_transcript_done(emulator, "r1")
    (mine,) = emulator.transcripts("r1")
    emulator.seed("r1", 9, "done")
    save = harness.pipeline.store.save

    def save_while_an_operator_retries(*args: Any, **kwargs: Any) -> None:
        save(*args, **kwargs)
        assert harness.pipeline.dispatch.retry(job_id)  # the job is active again

    monkeypatch.setattr(harness.pipeline.store, "save", save_while_an_operator_retries)
    other = harness.submit("r1", key="another job")
    harness.clear()
    assert run(harness, Step.CREATE, other) == Outcome.REMEDIATE
    assert run(harness, Step.REMEDIATE, other) == Outcome.RECORDING_BUSY
    assert {t["id"]: t["status"]["code"] for t in emulator.transcripts("r1")}[mine["id"]] == "done"
    monkeypatch.undo()
    assert run(harness, Step.REMEDIATE, other) == Outcome.SLOT_FREED  # another victim
    assert {t["id"]: t["status"]["code"] for t in emulator.transcripts("r1")}[mine["id"]] == "done"


def test_a_quota_slot_reserved_for_a_call_that_never_happens_is_given_back(
    harness: Harness, emulator: EmulatorHandle, settings: Settings, rclient: redis.Redis
) -> None:
    """The job comes back for its reserved create slot, but the recording is busy (another job
    remediates it): the step ends before the call, and the slot goes back to the window."""
    limiter = Limiter(rclient, {**DEFAULT_RATES, Family.CREATE: Rate(1, 1.0)}, INLINE_WAIT_S)
    harness.pipeline.recalls["default"] = recall_client(settings, limiter)
    first, second = start(harness, emulator), harness.submit("r1", key="second")
    harness.clear()
    assert run(harness, Step.CREATE, first) == Outcome.CREATED
    assert run(harness, Step.CREATE, second) == Outcome.WAIT  # its slot is a second away
    ticket = state(harness, second).quota_ticket
    assert ticket is not None
    member = Ticket.load(ticket).member
    assert rclient.zscore(keys.rate("default", "create", "r1"), member) is not None
    time.sleep(1.1)
    with harness.pipeline.jobs.recording_lease("r1", wait=False) as held:
        assert held
        assert run(harness, Step.CREATE, second) == Outcome.RECORDING_BUSY
    assert rclient.zscore(keys.rate("default", "create", "r1"), member) is None  # given back


def test_a_job_recall_keeps_answering_429_ends_at_its_deadline(
    harness: Harness, emulator: EmulatorHandle, rclient: redis.Redis, settings: Settings
) -> None:
    """429s spend no budget, so only the deadline ends this job: the sweeper fails it, and no
    backoff or pause schedules it past that deadline."""
    harness.pipeline.settings = reconfigure(settings, RETRY_BACKOFF_MAX_S=3600)
    harness.pipeline.jobs.deadline_s = 1.0
    job_id = start(harness, emulator)
    harness.clear()
    emulator.fault(target="create", action="status", status=429, retry_after=3600, times=-1)
    assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    due = rclient.zscore(keys.DUE, job_id)
    job = state(harness, job_id)
    assert due is not None and due <= job.deadline_at  # not an hour away
    time.sleep(1.05)
    assert redrive_due(harness.pipeline.dispatch)[0] == 0
    job = state(harness, job_id)
    assert job.state == State.FAILED and job.error is not None
    assert job.error.code == ErrorCode.DEADLINE_EXCEEDED
    retry(harness, job_id)  # an operator's retry gets a whole deadline again
    assert state(harness, job_id).deadline_at > time.time() + 0.5


def test_the_await_timeout_holds_even_when_the_poll_fails(
    harness: Harness, emulator: EmulatorHandle, settings: Settings
) -> None:
    job_id = start(harness, emulator)
    harness.drain()
    harness.pipeline.settings = reconfigure(settings, RECALL_TRANSCRIPT_TIMEOUT_S=0.001)
    emulator.fault(target="retrieve", action="status", status=503, times=-1)
    time.sleep(0.01)
    assert run(harness, Step.AWAIT, job_id) == Outcome.FAILED
    assert state(harness, job_id).error.code == ErrorCode.TIMEOUT  # type: ignore[union-attr]


def test_a_worker_whose_clock_is_off_judges_every_wait_on_redis_clock(
    harness: Harness,
    emulator: EmulatorHandle,
    rclient: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """62 minutes after a lost create answer (Recall no longer replays its key), the next run
    lands on a worker whose clock is 15 minutes slow: it still lists before creating."""
    job_id = start(harness, emulator)
    harness.clear()
    emulator.fault(target="create", action="lose_response")
    assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    key_at = float(rclient.hget(keys.job(job_id), "create_key_at") or 0)
    rclient.hset(keys.job(job_id), "create_key_at", key_at - 3720)
    assert emulator.state is not None
    for scope, (started, status, body) in list(emulator.state.idempotency.items()):
        emulator.state.idempotency[scope] = (started - 3720, status, body)
    real = time.time

    def worker_clock(skew: float) -> None:  # the pipeline's own clock, not the emulator's
        clock = types.SimpleNamespace(time=lambda: real() + skew, monotonic=time.monotonic)
        monkeypatch.setattr("tasks.pipeline.time", clock)

    worker_clock(-900)
    assert run(harness, Step.CREATE, job_id) == Outcome.CREATED
    assert len(emulator.transcripts("r1")) == 1  # adopted, not made again
    worker_clock(3600)  # a clock an hour ahead
    wait_transcript_done(emulator, "r1")  # the emulator's processing over: it stays processing
    emulator.state.transcripts[str(state(harness, job_id).transcript_id)].status = "processing"
    assert run(harness, Step.AWAIT, job_id) == Outcome.PROCESSING  # not a timeout


def test_a_job_that_ends_while_holding_a_quota_slot_gives_it_back(
    harness: Harness, emulator: EmulatorHandle, settings: Settings, rclient: redis.Redis
) -> None:
    """Its transcript.failed webhook ends the job between two polls, the second one holding a
    reserved slot: the slot goes back, so the next job does not wait an extra window."""
    limiter = Limiter(rclient, {**DEFAULT_RATES, Family.RETRIEVE: Rate(1, 60)}, INLINE_WAIT_S)
    harness.pipeline.recalls["default"] = recall_client(settings, limiter)
    job_id = start(harness, emulator)
    harness.drain()
    assert emulator.state is not None
    transcript_id = str(state(harness, job_id).transcript_id)
    wait_transcript_done(emulator, "r1")  # the emulator's processing over: it stays processing
    emulator.state.transcripts[transcript_id].status = "processing"
    assert run(harness, Step.AWAIT, job_id) == Outcome.PROCESSING
    assert run(harness, Step.AWAIT, job_id) == Outcome.WAIT  # its slot a minute away
    event = transcript_event("transcript.failed", "r1", transcript_id, {"job_id": job_id}, "x")
    harness.pipeline.ingest(parse_event(event))
    assert state(harness, job_id).state == State.FAILED
    assert release_unused(rclient, {"default": limiter}) == 1
    assert limiter.acquire(Family.RETRIEVE).wait < 61  # one window, not two


def test_a_retry_hours_later_waits_a_whole_transcript_timeout_again(
    harness: Harness, emulator: EmulatorHandle, rclient: redis.Redis
) -> None:
    job_id = start(harness, emulator)
    harness.drain()
    harness.pipeline.jobs.fail(job_id, ErrorCode.RECALL_UNAVAILABLE, "gave up")
    rclient.hset(keys.job(job_id), "transcript_created_at", time.time() - 7 * 3600)
    wait_transcript_done(emulator, "r1")
    retry(harness, job_id)
    harness.clear()
    emulator.fault(target="retrieve", action="status", status=503)
    assert run(harness, Step.AWAIT, job_id) == Outcome.RETRY  # a blip, not a timeout
    assert run(harness, Step.AWAIT, job_id) == Outcome.FETCH
