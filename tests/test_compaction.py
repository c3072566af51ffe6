"""A finished job is compacted (jobs.lua `compact`): its hash rewritten with only what a finished
job reads, each value over 64 bytes in parts, so Redis keeps it as a listpack; its transcript's
owner key gone; its one listing index entry and its recording's the only entries it leaves.
Nothing a retry, the archive rule or the callbacks read is lost, and what users see is the same."""

from __future__ import annotations

import json
import time

import pytest
import redis

from tasks import keys
from tasks.jobs.errors import ErrorCode
from tasks.jobs.record import JobRecord, fields
from tasks.jobs.states import AWAITING, DONE, QUEUED, State
from tasks.jobs.store import JobStore
from tasks.jobs.views import JobError

PROVIDER = {"assembly_ai_async": {"language_code": "en", "speaker_labels": True, "punctuate": 1}}
T1, T2 = "7f3a9c1e-5e1b-4d2a-8c3f-0123456789ab", "8f3a9c1e-5e1b-4d2a-8c3f-0123456789ab"
# Over 64 bytes, with multibyte characters across the 64-byte boundaries of its parts.
MESSAGE = "Recall answered 400: " + "é" * 30 + " la réunion n'a pas de média " + "ü" * 40
URL = "https://hooks.example.com/recall-transcribe/callbacks/" + "x" * 60


@pytest.fixture
def jobs(rclient: redis.Redis) -> JobStore:
    return JobStore(rclient, lease_s=30)


def record(jobs: JobStore, job_id: str) -> JobRecord:
    found = jobs.record(job_id)
    assert found is not None
    return found


def compact(client: redis.Redis, job_id: str) -> bool:
    """Redis keeps the job's hash as a listpack, every value at most 64 bytes."""
    raw = client.hgetall(keys.job(job_id))
    short = all(len(value) <= 64 for value in raw.values())
    return client.object("encoding", keys.job(job_id)) == b"listpack" and short


def awaiting(jobs: JobStore, transcript: str = T1, **submit: object) -> str:
    metadata = {"meeting": "m" * 80, "team": "ü" * 30}
    job_id, _ = jobs.submit("rec-1", PROVIDER, metadata, **submit)  # type: ignore[arg-type]
    jobs.start_create(record(jobs, job_id), time.time())
    jobs.record_created(job_id, transcript, 60)
    return job_id


def test_a_done_job_reads_back_as_it_was_and_leaves_one_index_entry_and_its_recordings(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    job_id = awaiting(jobs, callback_url=URL)
    jobs.transcript_finished(job_id, T1, "done", None)
    before = record(jobs, job_id)
    assert not compact(rclient, job_id)  # long values: a hash table while unfinished
    jobs.finish(job_id)
    after = record(jobs, job_id)
    assert compact(rclient, job_id)
    assert after.view().model_dump(exclude={"state", "updated_at"}) == before.view().model_dump(
        exclude={"state", "updated_at"}
    )
    assert after.destinations == before.destinations and after.provider == PROVIDER
    assert after.idempotency_key == before.idempotency_key  # derived again, not stored
    assert jobs.owner_of(T1) is None  # Recall's metadata on the transcript names the job
    left = {key.decode() for key in rclient.keys("rt:*") if rclient.type(key) == b"zset"}
    holding = {key for key in left if rclient.zscore(key, job_id) is not None}
    assert holding == {keys.index("default", "done"), keys.recording("rec-1")}
    assert rclient.zrange(keys.OUTBOX, 0, -1) == [f"{job_id}:1".encode()]  # until sent on
    assert (
        not {key.decode() for key in rclient.keys("rt:*")}
        - left
        - {
            keys.job(job_id),
            keys.INDEXES,
            keys.METRIC_JOB_DURATION,
        }
    )


def test_a_failed_jobs_long_error_and_its_history_read_back_whole(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    job_id = awaiting(jobs)
    jobs.retry_later(record(jobs, job_id), 1, ErrorCode.RECALL_UNAVAILABLE, "Recall answered 503")
    jobs.fail(job_id, ErrorCode.RECALL_REJECTED, MESSAGE)
    assert compact(rclient, job_id)
    job = record(jobs, job_id)
    assert job.error is not None and (job.error.code, job.error.message) == (
        ErrorCode.RECALL_REJECTED,
        MESSAGE,
    )
    history = jobs.history(job_id)
    assert history is not None
    met = [(e.event, e.error.code, e.error.message) for e in history.events if e.error]
    assert met == [
        ("retry_later", "recall_unavailable", "Recall answered 503"),
        ("fail", "recall_rejected", MESSAGE),
    ]
    stored = fields(rclient.hgetall(keys.job(job_id)))
    assert MESSAGE not in stored["history"]  # kept once, in the error
    assert json.loads(stored["error"])["message"] == MESSAGE


def test_a_failed_transcripts_error_says_its_sub_code_in_the_view_and_the_history(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    job_id = awaiting(jobs)
    jobs.transcript_finished(job_id, T1, "failed", "provider_connection_failed")
    assert compact(rclient, job_id)
    error = record(jobs, job_id).view().error
    assert error is not None and error.sub_code == "provider_connection_failed"
    assert (
        error.message
        == "Recall reported the transcript failed (sub_code: provider_connection_failed)"
    )
    history = jobs.history(job_id)
    assert history is not None and history.events[-1].error is not None
    assert history.events[-1].error.message == "provider_connection_failed"


def test_a_retry_of_a_compacted_job_has_everything_it_reads(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    job_id = awaiting(jobs)
    job = record(jobs, job_id)
    jobs.fail(job_id, ErrorCode.TIMEOUT, MESSAGE)
    assert compact(rclient, job_id) and jobs.owner_of(T1) is None
    assert jobs.retry(job_id) == AWAITING
    again = record(jobs, job_id)
    assert again.error is None and again.transcript_id == T1 and again.attempts == 2
    assert (again.create_seq, again.provider, again.metadata) == (
        job.create_seq,
        job.provider,
        job.metadata,
    )
    assert again.deadline_at is not None and again.deadline_at > time.time()
    assert not any(b"." in name for name in rclient.hkeys(keys.job(job_id)))  # whole again
    assert jobs.owner_of(T1) == job_id  # awaited again: the webhook finds it by its key too
    history = jobs.history(job_id)
    assert history is not None
    failed = next(e for e in history.events if e.event == "fail")
    assert failed.error is not None and failed.error.message == MESSAGE  # spelled out
    jobs.fail(job_id, ErrorCode.DEADLINE_EXCEEDED, "still unfinished")
    history = jobs.history(job_id)
    assert history is not None
    met = [e.error.code for e in history.events if e.error]
    assert met == ["timeout", "deadline_exceeded"]


def test_a_retry_before_any_transcript_keeps_the_create_key_and_its_pending_mark(
    jobs: JobStore,
) -> None:
    job_id, _ = jobs.submit("rec-1", PROVIDER)
    jobs.start_create(record(jobs, job_id), time.time())
    jobs.create_refused(record(jobs, job_id))
    jobs.start_create(record(jobs, job_id), time.time())
    pending = record(jobs, job_id)
    jobs.fail(job_id, ErrorCode.RECALL_UNREACHABLE, MESSAGE)
    assert jobs.retry(job_id) == QUEUED
    again = record(jobs, job_id)
    assert (again.create_key, again.create_pending, again.create_key_at) == (
        pending.create_key,
        True,
        pending.create_key_at,
    )


def test_the_archive_rule_and_a_retry_from_the_archive_on_compacted_jobs(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    job_id = awaiting(jobs)
    jobs.transcript_finished(job_id, T1, "failed", "provider_connection_failed")
    assert jobs.record_archive(job_id, T1)
    assert compact(rclient, job_id) and record(jobs, job_id).archived_transcript_id == T1
    assert jobs.retry(job_id) == DONE  # finished from the archive: no create, no wait
    assert compact(rclient, job_id) and record(jobs, job_id).transcript_id == T1


def test_a_callback_url_added_to_a_compacted_job_is_kept_whole_and_its_news_sent(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    job_id = awaiting(jobs, callback_url=URL)
    jobs.transcript_finished(job_id, T1, "done", None)
    jobs.finish(job_id)
    rclient.delete(keys.OUTBOX)  # its news sent on
    assert jobs.add_callback(job_id, URL + "/second", "token-1") == "added"
    assert jobs.add_callback(job_id, URL, "token-1") == "known"
    assert compact(rclient, job_id)
    assert [d.url for d in record(jobs, job_id).destinations] == [URL, URL + "/second"]
    assert rclient.zcard(keys.OUTBOX) == 1


def test_an_old_automatic_job_with_its_metadata_in_parts_still_stands_for_its_recording(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    """A job from before `source` was kept names its source in its metadata, which compaction
    may split: the submit's check reads it whole."""
    job_id, _ = jobs.submit("rec-1", PROVIDER, {"source": "recording.done", "note": "n" * 90})
    rclient.hdel(keys.job(job_id), "source")
    jobs.fail(job_id, ErrorCode.TIMEOUT, "t")
    assert b"metadata.1" in rclient.hkeys(keys.job(job_id))
    from tasks.jobs.views import Source

    other = {"recallai_async": {}}
    assert jobs.submit("rec-1", other, source=Source.WEBHOOK) == (job_id, False)


def test_prune_goes_past_jobs_created_long_ago_but_finished_lately(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    """Walked from the oldest created, jobs whose finish is within the retention are passed
    over, never stalling the pruning of those behind them."""
    lately = []
    for i in range(30):
        job_id, _ = jobs.submit(f"rec-{i}", PROVIDER)
        jobs.fail(job_id, ErrorCode.TIMEOUT, "t")
        if i < 20:
            lately.append(job_id)
    assert jobs.prune_finished(3600) == 0
    for job_id in lately:  # retried and failed again: their last change is now
        rclient.hset(keys.job(job_id), "updated_at", time.time() + 1000)
    assert jobs.prune_finished(0, limit=5) == 5
    assert jobs.prune_finished(0, limit=100) == 5
    assert sorted(j for j in lately if jobs.record(j)) == sorted(lately)
    assert {
        m.decode() for m in rclient.zrange(keys.index("default", "failed", "timeout"), 0, -1)
    } == set(lately)


def test_a_finished_job_from_before_schema_5_is_compacted_by_the_upgrade(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    job_id = awaiting(jobs)
    jobs.fail(job_id, ErrorCode.RECALL_REJECTED, MESSAGE)
    whole = record(jobs, job_id)
    rclient.delete(keys.job(job_id))
    old = {**json.loads(whole.model_dump_json(exclude_none=True)), "state": "failed"}
    old = {k: v if isinstance(v, str) else json.dumps(v) for k, v in old.items()}
    old.update(phase="failed", attempts="1", created_at=repr(whole.created_at))
    old.update(updated_at=repr(whole.updated_at), deadline_at="1")
    rclient.hset(keys.job(job_id), mapping=old)  # as schema 4 wrote it: whole, a hash table
    fields_before = old.keys()
    rclient.set(keys.transcript_owner(T1), job_id)
    rclient.zadd("rt:jobs", {job_id: whole.created_at})
    rclient.zadd("rt:state:failed", {job_id: whole.updated_at})
    rclient.delete(keys.index("default", "failed", "recall_rejected"))
    rclient.set(keys.SCHEMA, "4")
    rclient.set(keys.SCHEMA_REPAIRED, "1")  # schema 4's own repair, long done
    assert jobs.upgrade() == 1
    assert jobs.owner_of(T1) is None
    assert rclient.exists("rt:jobs", "rt:state:failed") == 2  # the old workers' only record
    assert not compact(rclient, job_id)  # the earlier release's workers may still read it
    assert fields(rclient.hgetall(keys.job(job_id))).keys() == fields_before
    assert jobs.repair_after_rollout(grace_s=3600) is None
    rclient.set(keys.SCHEMA_AT, jobs.now() - 3601)
    assert jobs.repair_after_rollout(grace_s=3600) == 0  # the rollout is over: this one's repair
    assert not rclient.exists("rt:jobs", "rt:state:failed", keys.SCHEMA_ROLLOUT)
    assert compact(rclient, job_id)
    assert record(jobs, job_id).view() == whole.view()
    assert record(jobs, job_id).state == State.FAILED


def test_a_recordings_version_is_kept_only_once_something_compares_with_it(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    """Every create moves its recording's version, but only a listing or a refusal compares
    with it later: a recording nothing compares keeps no version key."""
    jobs.recording_changed("rec-1")  # a create reached Recall; nothing to compare with
    assert not rclient.exists(keys.recording_version("rec-1"))
    base = jobs.recording_version("rec-1")  # a remediation's listing begins
    jobs.recording_changed("rec-1")  # ... and another job's create or delete lands meanwhile
    assert jobs.recording_version("rec-1") == base + 1
    assert 0 < rclient.ttl(keys.recording_version("rec-1")) <= 86400


def test_during_a_rollout_finished_jobs_stay_as_the_earlier_release_reads_them(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    """Upgraded from schema 4 (even without a job): until the repair, no compaction, a failed
    transcript's error keeps its message and a history its error: the earlier release's
    workers, still running, read jobs whole."""
    rclient.set(keys.SCHEMA, "4")
    jobs.upgrade()
    job_id = awaiting(jobs)
    jobs.transcript_finished(job_id, T1, "failed", "provider_connection_failed")
    raw = {k.decode(): v.decode() for k, v in rclient.hgetall(keys.job(job_id)).items()}
    assert {"id", "deadline_at", "idempotency_key", "error", "provider"} <= raw.keys()
    assert json.loads(raw["error"])["message"] == (
        "Recall reported the transcript failed (sub_code: provider_connection_failed)"
    )
    assert not raw["history"].endswith(" !")
    refused, _ = jobs.submit("rec-2", PROVIDER)
    jobs.fail(refused, ErrorCode.RECALL_REJECTED, "Recall answered 400")
    line = rclient.hget(keys.job(refused), "history") or b""
    assert line.endswith(b" recall_rejected Recall answered 400")  # whole, not `!`
    jobs.reindex()
    assert compact(rclient, job_id)
    assert record(jobs, job_id).view().error == JobError(
        code="transcript_failed",
        sub_code="provider_connection_failed",
        message="Recall reported the transcript failed (sub_code: provider_connection_failed)",
    )


def test_a_retry_spells_out_only_the_line_that_met_the_error(
    jobs: JobStore, rclient: redis.Redis
) -> None:
    job_id = awaiting(jobs)
    jobs.retry_later(record(jobs, job_id), 1, ErrorCode.RECALL_UNAVAILABLE, "Indisponible !")
    jobs.retry_later(record(jobs, job_id), 1, ErrorCode.RECALL_UNAVAILABLE, "!")
    long = "Recall answered 400:\nthe meeting " + "x" * 300
    jobs.fail(job_id, ErrorCode.RECALL_REJECTED, long)
    failed = jobs.history(job_id)
    jobs.retry(job_id)
    retried = jobs.history(job_id)
    assert failed is not None and retried is not None
    met = [(e.event, e.error) for e in failed.events if e.error]
    assert met == [(e.event, e.error) for e in retried.events if e.error]  # the same, both times
    messages = [e.error.message for e in failed.events if e.error]
    assert messages[:2] == ["Indisponible !", "!"]
    assert messages[2] == "Recall answered 400: the meeting " + "x" * 167  # as a history keeps it


def test_prune_is_not_stalled_by_an_index_headed_by_jobs_finished_lately(
    jobs: JobStore, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many jobs created long ago and retried lately head one index; the next calls go on past
    them, to this index's later jobs and to the other indexes' (each read a bounded share)."""
    from tasks.jobs import maintenance

    monkeypatch.setattr(maintenance, "PRUNE_READS", 1)
    lately = []
    for i in range(250):
        job_id, _ = jobs.submit(f"rec-a{i}", PROVIDER, workspace="a", idempotency_key=f"a{i}")
        jobs.fail(job_id, ErrorCode.TIMEOUT, "t")
        lately.append(job_id)
    old = []
    for i in range(20):
        ws = "a" if i % 2 else "b"
        job_id, _ = jobs.submit(f"rec-o{i}", PROVIDER, workspace=ws, idempotency_key=f"o{i}")
        jobs.fail(job_id, ErrorCode.TIMEOUT, "t")
        old.append(job_id)
    for job_id in lately:
        rclient.hset(keys.job(job_id), "updated_at", time.time() + 1000)
    pruned = sum(jobs.prune_finished(0, limit=5) for _ in range(20))
    assert pruned == len(old) and all(jobs.record(j) is None for j in old)
    assert all(jobs.record(j) is not None for j in lately)
