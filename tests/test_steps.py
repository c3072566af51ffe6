"""Each step called directly (no broker), against the emulator and a real Redis."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from harness import EmulatorHandle, recording_done, transcript_event
from tasks import keys
from tasks.events import parse_event
from tasks.formats import Format, render
from tasks.jobs.errors import ErrorCode
from tasks.jobs.states import State, Step
from tasks.names import PIPELINE_QUEUE
from tasks.outcomes import Outcome, Result
from tasks.settings import Settings
from tests.helpers import (
    Harness,
    job_whose_transcript_fails,
    outcomes,
    reconfigure,
    run,
    start,
    state,
    wait_transcript_done,
)
from worker.sweeper import redrive_due


def test_second_recording_done_for_a_recording_creates_nothing(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    emulator.recording("r1")
    first = harness.pipeline.ingest(parse_event(recording_done("r1")))
    second = harness.pipeline.ingest(parse_event(recording_done("r1")))
    assert (first.outcome, second.outcome) == (Outcome.JOB_CREATED, Outcome.JOB_EXISTS)
    assert first.job_id == second.job_id
    assert len(harness.enqueued) == 1


def test_each_step_the_events_make_due_is_its_own_task(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    emulator.recording("r1")
    created = harness.pipeline.ingest(parse_event(recording_done("r1")))
    job_id = created.job_id
    assert created.outcome == Outcome.JOB_CREATED
    assert harness.enqueued == [(Step.CREATE, job_id)]
    assert outcomes(harness.drain()) == [Outcome.CREATED]
    wait_transcript_done(emulator, "r1")
    transcript_id = state(harness, job_id).transcript_id
    assert transcript_id is not None
    event = transcript_event("transcript.done", "r1", transcript_id, {"job_id": job_id})
    fetched = harness.pipeline.ingest(parse_event(event))
    assert fetched == Result(Outcome.FETCH, job_id, transcript_id=transcript_id)
    assert harness.drain() == [Result(Outcome.PERSISTED, job_id, transcript_id=transcript_id)]
    assert state(harness, job_id).state == State.DONE


def test_create_run_twice_creates_one_transcript(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id = start(harness, emulator)
    assert run(harness, Step.CREATE, job_id) == Outcome.CREATED
    assert run(harness, Step.CREATE, job_id) == Outcome.STALE
    assert emulator.stats()["created_by_recording"] == {"r1": 1}
    assert state(harness, job_id).state == State.AWAITING


def test_create_whose_answer_was_lost_is_reconciled_by_replaying_its_key_within_the_hour(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id = start(harness, emulator)
    emulator.fault(target="create", action="lose_response")
    assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    assert state(harness, job_id).create_pending
    harness.run(Step.CREATE, job_id)
    (transcript,) = emulator.transcripts("r1")
    assert state(harness, job_id).transcript_id == transcript["id"]
    assert emulator.stats()["calls"] == {"create": 2}  # the second one replayed; no List


def test_create_whose_answer_was_lost_over_an_hour_ago_is_reconciled_by_listing(
    harness: Harness, emulator: EmulatorHandle, rclient: redis.Redis
) -> None:
    job_id = start(harness, emulator)
    emulator.fault(target="create", action="lose_response")
    assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    rclient.hset(keys.job(job_id), "create_key_at", time.time() - 3700)  # past Recall's replay
    harness.run(Step.CREATE, job_id)
    (transcript,) = emulator.transcripts("r1")
    assert state(harness, job_id).transcript_id == transcript["id"]
    assert emulator.stats()["calls"] == {"create": 1, "list": 1}


def test_transcript_done_before_create_returned_is_kept_and_honoured(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id = start(harness, emulator)
    harness.clear()
    (made,) = emulator.seed("r1", 1, "done", metadata={"job_id": job_id})
    event = transcript_event("transcript.done", "r1", made["id"], {"job_id": job_id})
    assert harness.pipeline.ingest(parse_event(event)) == Result(
        Outcome.KEPT, job_id, transcript_id=made["id"]
    )
    assert harness.enqueued == [(Step.CREATE, job_id)]  # acted on at once, not after a backoff
    assert harness.drain() == [
        Result(Outcome.CREATED, job_id, transcript_id=made["id"], state=State.FETCHING),
        Result(Outcome.PERSISTED, job_id, transcript_id=made["id"]),
    ]
    assert emulator.stats()["calls"].get("create", 0) == 0


def test_webhook_drives_await_to_fetch_and_fetch_twice_is_harmless(
    harness: Harness, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = start(harness, emulator)
    harness.drain()
    wait_transcript_done(emulator, "r1")
    transcript_id = state(harness, job_id).transcript_id
    assert transcript_id is not None
    event = transcript_event("transcript.done", "r1", transcript_id, {"job_id": job_id})
    assert harness.pipeline.ingest(parse_event(event)) == Result(
        Outcome.FETCH, job_id, transcript_id=transcript_id
    )
    assert harness.pipeline.ingest(parse_event(event)) == Result(Outcome.IGNORED, job_id)
    path = harness.pipeline.store.data_path("r1", transcript_id)
    # A crash after the write but before the job is marked done: running the fetch again is
    # harmless.
    jobs = harness.pipeline.jobs
    monkeypatch.setattr(jobs, "finish", lambda job_id: (_ for _ in ()).throw(SystemExit))
    with pytest.raises(SystemExit):
        harness.drain()
    assert path.read_bytes() == emulator.data(transcript_id)
    monkeypatch.undo()
    persisted = Result(Outcome.PERSISTED, job_id, transcript_id=transcript_id)
    assert harness.run(Step.FETCH, job_id) == persisted
    assert path.read_bytes() == emulator.data(transcript_id)
    assert harness.run(Step.FETCH, job_id).outcome == Outcome.STALE


def test_await_polls_until_done_without_a_webhook(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id = start(harness, emulator)
    harness.drain()
    assert run(harness, Step.AWAIT, job_id) in (Outcome.PROCESSING, Outcome.FETCH)
    wait_transcript_done(emulator, "r1")
    if state(harness, job_id).state == State.AWAITING:
        assert run(harness, Step.AWAIT, job_id) == Outcome.FETCH
    assert outcomes(harness.drain()) == [Outcome.PERSISTED]


def test_transcript_failed_webhook_fails_the_job_with_its_sub_code(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id, transcript_id = job_whose_transcript_fails(harness, emulator)
    event = transcript_event(
        "transcript.failed", "r1", transcript_id, sub_code="provider_connection_failed"
    )
    assert harness.pipeline.ingest(parse_event(event)) == Result(
        Outcome.FAILED, job_id, detail=ErrorCode.TRANSCRIPT_FAILED
    )
    job = harness.pipeline.jobs.record(job_id)
    assert job is not None and job.state == "failed" and job.error is not None
    assert (job.error.code, job.error.sub_code) == (
        "transcript_failed",
        "provider_connection_failed",
    )


def test_transcript_events_for_transcripts_not_ours_are_ignored(harness: Harness) -> None:
    event = transcript_event("transcript.done", "r1", "someone-elses")
    assert harness.pipeline.ingest(parse_event(event)) == Result(
        Outcome.IGNORED, detail="transcript not ours"
    )


def test_processing_past_the_timeout_fails_the_job(
    harness: Harness, emulator: EmulatorHandle, settings: Settings
) -> None:
    job_id = start(harness, emulator)
    harness.drain()
    harness.pipeline.settings = reconfigure(settings, RECALL_TRANSCRIPT_TIMEOUT_S=0.001)
    # the emulator's processing ends first (else it would end after this, and the await step
    # would find the transcript done): then the transcript is made to look still processing
    wait_transcript_done(emulator, "r1")
    emulator.state.transcripts[str(state(harness, job_id).transcript_id)].status = "processing"
    time.sleep(0.01)
    assert harness.run(Step.AWAIT, job_id) == Result(
        Outcome.FAILED, job_id, detail=ErrorCode.TIMEOUT
    )
    job = harness.pipeline.jobs.record(job_id)
    assert job is not None and job.error is not None and job.error.code == "timeout"


def test_rate_limited_create_waits_at_least_retry_after(
    harness: Harness, emulator: EmulatorHandle, rclient: redis.Redis
) -> None:
    job_id = start(harness, emulator)
    emulator.fault(target="create", action="status", status=429, retry_after=0.4)
    before = time.time()
    assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    due = rclient.zscore(keys.DUE, job_id)
    assert due is not None and due >= before + 0.4
    assert state(harness, job_id).failures == {ErrorCode.RATE_LIMITED: 1}


def test_retryable_errors_give_up_after_the_limit(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id = start(harness, emulator)
    emulator.fault(target="create", action="status", status=503, times=-1)
    limit = harness.pipeline.settings.MAX_STEP_RETRIES
    for _ in range(limit):
        assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    assert harness.run(Step.CREATE, job_id) == Result(
        Outcome.FAILED, job_id, detail=ErrorCode.RECALL_UNAVAILABLE
    )


def test_sweeper_redrives_a_job_whose_message_was_lost(
    harness: Harness, emulator: EmulatorHandle, rclient: redis.Redis
) -> None:
    job_id = start(harness, emulator)
    harness.clear()  # the create message is lost
    dispatch = harness.pipeline.dispatch
    assert redrive_due(dispatch)[0] == 0  # not due yet: a lease has to pass
    rclient.zadd(keys.DUE, {job_id: time.time() - 1})
    assert redrive_due(dispatch)[0] == 1  # the queue is empty: the message is provably lost
    assert harness.enqueued == [(Step.CREATE, job_id)]
    assert redrive_due(dispatch)[0] == 0  # claimed: pushed one lease ahead


def test_a_step_waits_for_the_previous_step_to_release_the_job(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id = start(harness, emulator)
    held = threading.Event()

    def previous_step() -> None:  # holds the job's lease briefly, as a step that is ending does
        with harness.pipeline.jobs.running(job_id) as holding:
            assert holding
            held.set()
            time.sleep(0.3)

    threading.Thread(target=previous_step).start()
    assert held.wait(5)
    assert run(harness, Step.CREATE, job_id) == Outcome.CREATED


def test_a_step_whose_job_stays_busy_is_looked_at_again_within_a_second(
    harness: Harness, emulator: EmulatorHandle, rclient: redis.Redis
) -> None:
    job_id = start(harness, emulator)
    with harness.pipeline.jobs.running(job_id) as holding:
        assert holding
        assert run(harness, Step.CREATE, job_id) == Outcome.BUSY
        due = rclient.zscore(keys.DUE, job_id)
        assert due is not None and due <= time.time() + 1  # not a whole lease away


@pytest.mark.parametrize("policy", ["delete-failed", "archive-oldest"])
def test_limit_remediation_deletes_a_failed_transcript_first(
    harness: Harness, emulator: EmulatorHandle, settings: Settings, policy: str
) -> None:
    harness.pipeline.settings = reconfigure(settings, LIMIT_POLICY=policy)
    job_id = start(harness, emulator)
    emulator.seed("r1", 9, "done")
    (failed,) = emulator.seed("r1", 1, "failed")
    assert run(harness, Step.CREATE, job_id) == Outcome.REMEDIATE
    assert harness.run(Step.REMEDIATE, job_id) == Result(
        Outcome.SLOT_FREED, job_id, transcript_id=failed["id"], detail="failed"
    )
    assert run(harness, Step.REMEDIATE, job_id) == Outcome.STALE
    assert harness.enqueued[-1] == (Step.CREATE, job_id)
    assert run(harness, Step.CREATE, job_id) == Outcome.CREATED
    assert sum(t["status"]["code"] == "deleted" for t in emulator.transcripts("r1")) == 1


def test_archive_oldest_never_deletes_a_transcript_an_active_job_waits_on(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    emulator.recording("r1")
    busy_job = harness.submit("r1", {"assembly_ai_async": {}})
    (oldest,) = emulator.seed("r1", 1, "done", metadata={"job_id": busy_job})
    emulator.seed("r1", 9, "done")
    job_id = harness.submit("r1")
    assert run(harness, Step.CREATE, job_id) == Outcome.REMEDIATE
    result = harness.run(Step.REMEDIATE, job_id)
    assert (result.outcome, result.detail) == (Outcome.SLOT_FREED, "done")
    assert result.transcript_id != oldest["id"]
    assert harness.pipeline.store.has("r1", result.transcript_id)


@pytest.mark.parametrize(("policy", "status"), [("fail", "done"), ("delete-failed", "done")])
def test_limit_without_an_allowed_victim_fails_with_limit_reached(
    harness: Harness, emulator: EmulatorHandle, settings: Settings, policy: str, status: str
) -> None:
    harness.pipeline.settings = reconfigure(settings, LIMIT_POLICY=policy)
    job_id = start(harness, emulator)
    emulator.seed("r1", 10, status)
    harness.drain(limit=3)
    job = harness.pipeline.jobs.record(job_id)
    assert job is not None and job.state == "failed" and job.error is not None
    assert job.error.code == ErrorCode.LIMIT_REACHED
    assert all(t["status"]["code"] == "done" for t in emulator.transcripts("r1"))


def test_retry_reruns_a_failed_job_with_a_new_create(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    job_id = start(harness, emulator)
    emulator.fault(target="create", action="status", status=400)
    harness.drain()
    job = state(harness, job_id)
    assert job.state == State.FAILED and job.error is not None
    assert job.error.code == ErrorCode.RECALL_REJECTED and "injected 400" in job.error.message
    assert emulator.stats()["calls"] == {"create": 1, "list": 1}  # below the limit: not it
    assert harness.pipeline.dispatch.retry(job_id)
    assert not harness.pipeline.dispatch.retry(job_id)
    assert outcomes(harness.drain()) == [Outcome.CREATED]
    job = harness.pipeline.jobs.record(job_id)
    assert job is not None and job.attempts == 2 and job.error is None


def test_copies_of_an_await_message_call_recall_once(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    """A message redelivered (kombu's visibility timeout) or re-sent while the first waited in
    a backlog: only the job's current message runs; a copy neither polls nor counts a poll."""
    job_id = start(harness, emulator)
    harness.drain()
    assert emulator.state is not None
    wait_transcript_done(emulator, "r1")  # the emulator's processing over: it stays processing
    emulator.state.transcripts[str(state(harness, job_id).transcript_id)].status = "processing"
    harness.pipeline.dispatch(Step.AWAIT, job_id, "r1")
    (message,) = harness.redis.lrange(PIPELINE_QUEUE, 0, -1)
    harness.redis.lpush(PIPELINE_QUEUE, message, message)  # two copies behind it
    assert outcomes(harness.drain()) == [Outcome.PROCESSING, Outcome.STALE, Outcome.STALE]
    assert emulator.stats()["calls"]["retrieve"] == 1
    assert state(harness, job_id).polls == 1


def test_the_chosen_formats_are_written_beside_the_data_when_it_is_persisted(
    harness: Harness, emulator: EmulatorHandle, settings: Settings
) -> None:
    harness.pipeline.settings = reconfigure(settings, TRANSCRIPT_FORMATS="json,text,srt,vtt")
    job_id = start(harness, emulator)
    harness.drain()
    wait_transcript_done(emulator, "r1")
    run(harness, Step.AWAIT, job_id)
    assert outcomes(harness.drain()) == [Outcome.PERSISTED]
    transcript_id = str(state(harness, job_id).transcript_id)
    folder = harness.pipeline.store.data_path("r1", transcript_id).parent  # type: ignore[attr-defined]
    data = emulator.data(transcript_id)
    for fmt in (Format.TEXT, Format.SRT, Format.VTT):
        assert (folder / f"{transcript_id}{fmt.suffix}").read_bytes() == render(data, fmt)
    names = sorted(path.name for path in folder.iterdir())
    assert names == sorted(
        f"{transcript_id}{s}" for s in (".json", ".meta.json", ".txt", ".srt", ".vtt")
    )
