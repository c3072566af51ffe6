"""Retries that never create twice, budgets that progress resets, and jobs that always end."""

from __future__ import annotations

import time

import pytest
import redis

from tasks import keys
from tasks.enqueue import RESUME_STEP
from tasks.events import parse_event
from tasks.limiter import DEFAULT_RATES, Family, Limiter, Rate
from tasks.outcomes import ErrorCode, Outcome, Result
from tasks.recall import RecallClient
from tasks.settings import Settings
from tasks.states import State, Step
from tests.conftest import EmulatorHandle, Harness
from tests.helpers import reconfigure, transcript_event, wait_for
from tests.test_steps import (
    job_whose_transcript_fails,
    run,
    start,
    state,
    wait_transcript_done,
)


def created(emulator: EmulatorHandle, recording_id: str = "r1") -> int:
    return int(emulator.stats()["created_by_recording"].get(recording_id, 0))


def retry(harness: Harness, job_id: str) -> None:
    """What the jobs API and `jobs retry` do: the transition, then the step it makes due."""
    new_state = harness.pipeline.jobs.retry(job_id)
    assert new_state is not None
    harness.enqueued.append((RESUME_STEP[new_state], job_id))


def test_retrying_a_job_that_failed_after_a_lost_create_answer_adopts_its_transcript(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id = start(harness, emulator)
    harness.enqueued.clear()
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
    harness.enqueued.clear()
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
            emulator.fault(target="retrieve", action="status", status=503, times=3)
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
    harness.enqueued.clear()
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
    harness.enqueued.clear()
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
    limiter = Limiter(rclient, {**DEFAULT_RATES, Family.LIST: Rate(2, 1.0)})
    harness.pipeline.recall = RecallClient(settings, limiter)
    job_id = start(harness, emulator)
    emulator.seed("r1", 10, "done")  # 4 pages of 3
    assert run(harness, Step.CREATE, job_id) == Outcome.REMEDIATE
    outcomes = []
    for _ in range(10):
        result = harness.pipeline.run_step(Step.REMEDIATE, job_id)
        outcomes.append(result.outcome)
        if result.outcome != Outcome.RETRY:
            break
        assert state(harness, job_id).listing_next is not None
        time.sleep(float(result.detail.split()[-1].rstrip("s")))
    assert outcomes[-1] == Outcome.SLOT_FREED and len(outcomes) >= 2
    assert emulator.stats()["calls"]["list"] == 4
