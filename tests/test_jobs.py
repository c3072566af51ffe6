"""The job state machine walked against its table: every transition from every phase, on Redis."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import pytest
import redis

from tasks import keys
from tasks.dispatch import Dispatcher
from tasks.jobs import indexes
from tasks.jobs.errors import ErrorCode
from tasks.jobs.record import JobRecord
from tasks.jobs.sending import Due
from tasks.jobs.states import (
    AWAITING,
    CREATING,
    DONE,
    FAILED,
    FETCHING,
    PHASES,
    QUEUED,
    REMEDIATING,
    TRANSITIONS,
    Phase,
    State,
    Step,
    Transition,
    target,
)
from tasks.jobs.store import JobStore
from tasks.names import PIPELINE_QUEUE

T1, T_OTHER = "t-1", "t-other"
PROVIDER = {"recallai_async": {"language_code": "en"}}


@pytest.fixture
def jobs(rclient: redis.Redis) -> JobStore:
    return JobStore(rclient, lease_s=30)


def claimed(jobs: JobStore) -> list[Due]:
    return jobs.claim_due()[0]


def record(jobs: JobStore, job_id: str) -> JobRecord:
    found = jobs.record(job_id)
    assert found is not None
    return found


# How to bring a fresh job to each phase, by transitions of the table only.
SETUP: dict[Phase, Callable[[JobStore, str], object]] = {
    QUEUED: lambda jobs, job_id: None,
    CREATING: lambda jobs, job_id: jobs.start_create(record(jobs, job_id), time.time()),
    REMEDIATING: lambda jobs, job_id: (
        jobs.start_create(record(jobs, job_id), time.time()),
        jobs.start_remediation(record(jobs, job_id), "HTTP 400", 0),
    ),
    AWAITING: lambda jobs, job_id: (
        jobs.start_create(record(jobs, job_id), time.time()),
        jobs.record_created(job_id, T1, 60),
    ),
    FETCHING: lambda jobs, job_id: (
        SETUP[AWAITING](jobs, job_id),
        jobs.transcript_finished(job_id, T1, "done", None),
    ),
    DONE: lambda jobs, job_id: (SETUP[FETCHING](jobs, job_id), jobs.finish(job_id)),
    FAILED: lambda jobs, job_id: jobs.fail(job_id, ErrorCode.INTERNAL, "set up"),
}

TRANSCRIPT_NEWS = {
    "fetching": Transition.TRANSCRIPT_DONE,
    "failed": Transition.TRANSCRIPT_FAILED,
    "kept": Transition.KEEP_EARLY_EVENT,
    "ignored": None,
}


def _if(applied: object, transition: Transition) -> Transition | None:
    return transition if applied else None


# Each transition through its JobStore method; returns the transition that happened, if any.
APPLY: dict[Transition, Callable[[JobStore, str], Transition | None]] = {
    Transition.START_CREATE: lambda jobs, j: _if(
        jobs.start_create(record(jobs, j), time.time()), Transition.START_CREATE
    ),
    Transition.CREATE_REFUSED: lambda jobs, j: _if(
        jobs.create_refused(record(jobs, j)), Transition.CREATE_REFUSED
    ),
    Transition.START_REMEDIATION: lambda jobs, j: _if(
        jobs.start_remediation(record(jobs, j), "HTTP 400", 0),
        Transition.START_REMEDIATION,
    ),
    Transition.END_REMEDIATION: lambda jobs, j: _if(
        jobs.end_remediation(j), Transition.END_REMEDIATION
    ),
    Transition.RECORD_CREATED: lambda jobs, j: _if(
        jobs.record_created(j, T1, 60), Transition.RECORD_CREATED
    ),
    Transition.KEEP_EARLY_EVENT: lambda jobs, j: TRANSCRIPT_NEWS[
        jobs.transcript_finished(j, T_OTHER, "done", None)
    ],
    Transition.TRANSCRIPT_DONE: lambda jobs, j: TRANSCRIPT_NEWS[
        jobs.transcript_finished(j, T1, "done", None)
    ],
    Transition.TRANSCRIPT_FAILED: lambda jobs, j: TRANSCRIPT_NEWS[
        jobs.transcript_finished(j, T1, "failed", "provider_connection_failed")
    ],
    Transition.POLL_LATER: lambda jobs, j: _if(
        jobs.poll_later(record(jobs, j), 10), Transition.POLL_LATER
    ),
    Transition.FINISH: lambda jobs, j: _if(jobs.finish(j), Transition.FINISH),
    Transition.RETRY_LATER: lambda jobs, j: _if(
        jobs.retry_later(record(jobs, j), 5, ErrorCode.RECALL_UNAVAILABLE, "HTTP 503"),
        Transition.RETRY_LATER,
    ),
    Transition.FAIL: lambda jobs, j: _if(
        jobs.fail(j, ErrorCode.RECALL_REJECTED, "HTTP 400"), Transition.FAIL
    ),
    Transition.RECORD_ARCHIVE: lambda jobs, j: _if(
        jobs.record_archive(j, T1), Transition.RECORD_ARCHIVE
    ),
    Transition.RETRY: lambda jobs, j: _if(jobs.retry(j), Transition.RETRY),
}


def expected(transition: Transition, phase: Phase) -> Transition | None:
    """What the table says happens when `transition` is asked for in `phase`."""
    if phase in TRANSITIONS[transition].source:
        return transition
    # Transcript news for a job still creating is kept for the create step instead.
    news = (Transition.TRANSCRIPT_DONE, Transition.TRANSCRIPT_FAILED)
    if transition in news and phase in TRANSITIONS[Transition.KEEP_EARLY_EVENT].source:
        return Transition.KEEP_EARLY_EVENT
    return None


def snapshot(client: redis.Redis, job_id: str) -> tuple[object, ...]:
    due = client.zscore(keys.DUE, job_id)
    sets = tuple(client.zscore(keys.state(s), job_id) is not None for s in State)
    return client.hgetall(keys.job(job_id)), due, sets


def assert_consistent(jobs: JobStore, job: JobRecord) -> None:
    """The job is in the state set of its state while active and in no other, in exactly one
    listing index (its workspace's, state's and error code's: an error only while failed), in
    the due-set while active; a finished job's hash is compact (Redis's listpack) and no owner key
    names it; its history's last event left it where it is."""
    client = jobs.redis
    members = [s for s in State if client.zscore(keys.state(s), job.id) is not None]
    assert members == ([job.state] if job.state.active else [])
    indexed = {
        key.decode(): client.zscore(key, job.id)
        for key in client.keys(f"{keys.INDEX_PREFIX}*")
        if client.zscore(key, job.id) is not None
    }
    code = job.error.code if job.error else None
    assert indexed == {keys.index(job.workspace, job.state, code): job.created_at}
    assert keys.index(job.workspace, job.state, code).encode() in client.smembers(keys.INDEXES)
    assert not job.error or job.state == State.FAILED
    assert (client.zscore(keys.DUE, job.id) is not None) == job.state.active
    owners = {k for k in client.keys(f"{keys.OWNER_PREFIX}*") if client.get(k) == job.id.encode()}
    assert not owners or job.state.active
    if not job.state.active:
        assert client.object("encoding", keys.job(job.id)) == b"listpack"
    history = jobs.history(job.id)
    assert history is not None
    assert (history.events[-1].state, history.events[-1].step) == (job.state, job.step)


def test_the_table_names_every_phase_and_every_transition_once() -> None:
    assert set(APPLY) == set(Transition) == set(TRANSITIONS)
    for rule in TRANSITIONS.values():
        assert rule.source <= set(PHASES) and rule.target <= set(PHASES)


@pytest.mark.parametrize("phase", PHASES, ids=str)
@pytest.mark.parametrize("transition", list(Transition), ids=str)
def test_each_transition_from_each_phase_does_what_the_table_says(
    jobs: JobStore, rclient: redis.Redis, transition: Transition, phase: Phase
) -> None:
    job_id, created = jobs.submit("rec-1", PROVIDER)
    assert created
    SETUP[phase](jobs, job_id)
    before = record(jobs, job_id)
    assert before.phase == phase
    untouched = snapshot(rclient, job_id)

    happened = APPLY[transition](jobs, job_id)

    assert happened == expected(transition, phase)
    after = record(jobs, job_id)
    assert_consistent(jobs, after)
    if happened is None:
        assert snapshot(rclient, job_id) == untouched, "a refused transition wrote something"
        return
    history = jobs.history(job_id)
    assert history is not None and history.events[-1].event == happened
    target = TRANSITIONS[happened].target
    assert after.phase in target if target else after.phase == phase

    # The same call again, late or duplicated: the table decides from the new phase.
    assert APPLY[transition](jobs, job_id) == expected(transition, after.phase)
    assert_consistent(jobs, record(jobs, job_id))


def test_submitting_the_same_key_twice_finds_the_same_job(jobs: JobStore) -> None:
    first = jobs.submit("rec-1", PROVIDER, idempotency_key="k")
    again = jobs.submit("rec-1", PROVIDER, idempotency_key="k")
    assert first == (first[0], True) and again == (first[0], False)


@pytest.mark.parametrize(
    ("news", "sub_code", "phase"),
    [("done", None, FETCHING), ("failed", "provider_connection_failed", FAILED)],
)
def test_transcript_news_before_the_create_answer_is_honoured_once_created(
    jobs: JobStore, news: str, sub_code: str | None, phase: Phase
) -> None:
    job_id, _ = jobs.submit("rec-1", PROVIDER)
    jobs.start_create(record(jobs, job_id), time.time())
    assert jobs.transcript_finished(job_id, T1, news, sub_code) == "kept"  # type: ignore[arg-type]
    jobs.record_created(job_id, T1, 60)
    job = record(jobs, job_id)
    assert job.phase == phase and job.transcript_id == T1
    assert (job.early_event, job.early_transcript_id, job.early_sub_code) == (None, None, None)
    if phase == FAILED:
        assert job.error is not None
        assert (job.error.code, job.error.sub_code) == (ErrorCode.TRANSCRIPT_FAILED, sub_code)
    # a finished job has no owner key: the transcript's metadata names it
    assert jobs.owner_of(T1) == (job_id if job.state.active else None)


def test_news_of_another_transcript_is_not_honoured(jobs: JobStore) -> None:
    job_id, _ = jobs.submit("rec-1", PROVIDER)
    jobs.start_create(record(jobs, job_id), time.time())
    jobs.transcript_finished(job_id, T_OTHER, "done", None)
    jobs.record_created(job_id, T1, 60)
    assert record(jobs, job_id).phase == AWAITING


def test_the_sweeper_claims_each_due_job_once_and_drops_finished_ones(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    waiting, _ = jobs.submit("rec-1", PROVIDER)
    finished, _ = jobs.submit("rec-2", PROVIDER)
    jobs.fail(finished, ErrorCode.INTERNAL, "x")
    rclient.zadd(keys.DUE, {waiting: 0, finished: 0})
    assert claimed(jobs) == [Due(waiting, Step.CREATE, "rec-1")]
    assert claimed(jobs) == []
    assert rclient.zscore(keys.DUE, finished) is None


def test_a_running_step_keeps_its_lease_however_long_it_runs_and_is_never_claimed(
    rclient: redis.Redis,
) -> None:
    jobs = JobStore(rclient, lease_s=0.6)  # heartbeat every 0.2 s
    job_id, _ = jobs.submit("rec-1", PROVIDER)
    rclient.zadd(keys.DUE, {job_id: 0})
    with jobs.running(job_id) as held:
        assert held
        for _ in range(4):  # three leases in all
            time.sleep(0.45)
            assert claimed(jobs) == []
            with jobs.leases.hold(keys.job_lock(job_id), None) as second:
                assert not second
    assert rclient.exists(keys.job_lock(job_id)) == 0
    rclient.zadd(keys.DUE, {job_id: 0})
    assert claimed(jobs) == [Due(job_id, Step.CREATE, "rec-1")]


def test_a_dead_steps_lease_expires_and_the_sweeper_then_claims_the_job(
    rclient: redis.Redis,
) -> None:
    jobs = JobStore(rclient, lease_s=0.5)
    job_id, _ = jobs.submit("rec-1", PROVIDER)
    rclient.set(keys.job_lock(job_id), "a dead worker's token", px=500)
    rclient.zadd(keys.DUE, {job_id: 0})
    assert claimed(jobs) == []
    due = rclient.zscore(keys.DUE, job_id)
    assert due is not None and due <= time.time() + 0.6  # when that lock expires, not later
    time.sleep(0.6)
    assert claimed(jobs) == [Due(job_id, Step.CREATE, "rec-1")]


def test_finished_jobs_past_their_retention_leave_redis_with_their_index_entries(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    done_id, _ = jobs.submit("rec-1", PROVIDER)
    SETUP[DONE](jobs, done_id)
    failed_id, _ = jobs.submit("rec-2", PROVIDER)
    jobs.fail(failed_id, ErrorCode.INTERNAL, "x")
    active_id, _ = jobs.submit("rec-3", PROVIDER)
    assert jobs.prune_finished(retention_s=3600) == 0  # not old enough yet
    assert jobs.prune_finished(retention_s=0) == 2
    assert jobs.record(done_id) is None and jobs.record(failed_id) is None
    assert jobs.owner_of(T1) is None
    assert indexes.count(rclient) == 1 and indexes.count(rclient, "queued") == 1
    assert rclient.exists(keys.recording("rec-1"), keys.recording("rec-2")) == 0
    assert record(jobs, active_id).state == State.QUEUED


def test_a_step_waiting_in_the_queue_is_not_sent_again_until_provably_lost(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    """The sweeper looks at a due job whose step message is still on its way: in the queue, or
    held by a worker (kombu's unacked hash), it is left alone; once the queue is empty or a
    message sent after it was taken, and no worker holds it, it is lost and sent again."""
    dispatch = Dispatcher(jobs, {"default": PROVIDER})
    job_id, _ = dispatch.submit("rec-1")
    ((_, _, task_id),) = queued(rclient)
    rclient.zadd(keys.DUE, {job_id: 0})
    assert claimed(jobs) == []  # in the queue
    raw = rclient.rpop(PIPELINE_QUEUE)  # a worker took it and holds it, unacknowledged
    rclient.hset(keys.KOMBU_UNACKED, task_id, raw)  # type: ignore[arg-type]
    rclient.zadd(keys.DUE, {job_id: 0})
    assert claimed(jobs) == []  # held by a worker
    rclient.hdel(keys.KOMBU_UNACKED, task_id)  # the worker died between its pop and its record
    rclient.zadd(keys.DUE, {job_id: 0})
    assert claimed(jobs) == [Due(job_id, Step.CREATE, "rec-1")]  # the queue is empty: lost

    # Lost behind a busy queue: a message sent after it has been taken.
    dispatch.redrive([Due(job_id, Step.CREATE, "rec-1")])
    later_id, _ = dispatch.submit("rec-2")
    dispatch.submit("rec-3")  # keeps the queue from being empty
    later = queued(rclient)[1][2]
    rclient.zadd(keys.DUE, {job_id: 0})
    assert claimed(jobs) == []  # still in the queue
    rclient.lrem(PIPELINE_QUEUE, 1, rclient.lindex(PIPELINE_QUEUE, -1))  # ours vanishes ...
    assert jobs.consume(later_id, later)  # ... and a message sent after it is taken
    rclient.zadd(keys.DUE, {job_id: 0})
    assert claimed(jobs) == [Due(job_id, Step.CREATE, "rec-1")]


def test_a_copy_of_a_step_message_is_recognised_and_the_step_is_sent_once(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    dispatch = Dispatcher(jobs, {"default": PROVIDER})
    job_id, _ = dispatch.submit("rec-1")
    dispatch(Step.CREATE, job_id, "rec-1")  # already on its way: not sent again
    ((_, _, task_id),) = queued(rclient)
    assert not jobs.consume(job_id, "a-copy-the-sweeper-sent-before")
    assert jobs.consume(job_id, task_id)
    assert not jobs.consume(job_id, task_id)  # a redelivered copy of the same message


def queued(client: redis.Redis) -> list[tuple[str, str, str]]:
    """The pipeline queue, newest first: (task name, job id, task id)."""
    out = []
    for raw in client.lrange(PIPELINE_QUEUE, 0, -1):
        envelope = json.loads(raw)
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        out.append((envelope["headers"]["task"], args[0], envelope["headers"]["id"]))
    return out


def test_a_transition_with_several_targets_cannot_be_applied_as_a_plain_move(
    jobs: JobStore,
) -> None:
    job_id, _ = jobs.submit("rec-1", PROVIDER)
    with pytest.raises(ValueError, match="several targets"):
        jobs._move(Transition.RECORD_CREATED, job_id)
    with pytest.raises(ValueError, match="never leads"):
        target(Transition.FINISH, FAILED)


def test_jobs_written_by_the_previous_release_are_upgraded_and_never_stop_the_sweeper(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    """The release before phases wrote `state` and `step`; such a job must neither break the
    sweeper's claim for the others nor be dropped: the worker upgrades it at start."""
    rclient.hset(
        keys.job("old"),
        mapping={
            "id": "old",
            "recording_id": "rec-old",
            "idempotency_key": "k",
            "provider": "{}",
            "state": "queued",
            "step": "create",
            "attempts": "1",
            "created_at": time.time(),
            "updated_at": time.time(),
        },
    )
    rclient.zadd("rt:jobs", {"old": time.time()})  # every job, as releases before 5 kept them
    rclient.zadd(keys.state("queued"), {"old": time.time()})
    new_id, _ = jobs.submit("rec-new", PROVIDER)
    rclient.zadd(keys.DUE, {"old": 0, new_id: 0})
    assert claimed(jobs) == [Due(new_id, Step.CREATE, "rec-new")]  # the old one waits
    assert rclient.zscore(keys.DUE, "old") is not None  # ... still due, not dropped
    assert jobs.upgrade() == 1 and jobs.upgrade() == 0
    old = record(jobs, "old")
    assert old.phase == QUEUED and old.deadline_at > time.time()
    rclient.zadd(keys.DUE, {"old": 0})
    assert claimed(jobs) == [Due("old", Step.CREATE, "rec-old")]
