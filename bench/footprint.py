"""Redis bytes per finished job: the growth of `INFO memory`'s used_memory while N jobs go
through the job store's own transitions (submit, create, transcript done, finish; or fail), so
the record, every index entry and the marks a job leaves are counted as they are written. The
marks that expire (the webhooks' dedupe marks, kept WEBHOOK_DEDUPE_TTL_S) are measured on their
own: a job's webhooks leave them for days, not for its retention."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from harness import start_redis
from tasks import keys
from tasks.inbox import event_id_for
from tasks.jobs.errors import ErrorCode
from tasks.jobs.record import JobRecord
from tasks.jobs.store import JobStore

PROVIDER = {"recallai_async": {"language_code": "en"}}
DEDUPE_TTL_S = 7 * 24 * 3600  # WEBHOOK_DEDUPE_TTL_S's default
Leave = Callable[[JobStore, int], None]  # what the i-th job leaves, written


def measure(workdir: Path, done: int, failed: int) -> dict[str, Any]:
    """Bytes per done job and per failed job (Recall refused the create; Recall reported the
    transcript failed), each over its own run on a fresh Redis; then the expiring marks."""
    redis_proc, redis_url = start_redis(workdir)
    try:
        client = redis.Redis.from_url(redis_url)
        return {
            "done jobs": done,
            "bytes per done job": _per_job(client, done, _done),
            "failed jobs (each kind)": failed,
            "bytes per failed job (Recall refused the create)": _per_job(client, failed, _refused),
            "bytes per failed job (the transcript failed)": _per_job(client, failed, _failed),
            "encoding of a finished job's hash": _encoding(client),
            "expiring marks per job (its 2 webhooks' dedupe marks, kept 7 days)": _per_job(
                client, done, _marks, fresh=False
            ),
            "outbox (sent on by the sweeper)": "excluded",
        }
    finally:
        redis_proc.stop()


def _per_job(client: redis.Redis, count: int, leave: Leave, fresh: bool = True) -> int:
    if fresh:
        client.flushdb()
    store = JobStore(client, 30)
    store.upgrade()
    before = int(client.info("memory")["used_memory"])
    for i in range(count):
        leave(store, i)
    client.delete(keys.OUTBOX)  # its news sent on: the outbox is emptied as callbacks go out
    client.delete(keys.DUE)
    return round((int(client.info("memory")["used_memory"]) - before) / count)


def _encoding(client: redis.Redis) -> str:
    """How Redis keeps the finished jobs' hashes (listpack: compact)."""
    found = {
        client.object("encoding", key).decode() for key in client.scan_iter(keys.job("*"), 100)
    }
    return ", ".join(sorted(found))


def _recording(i: int) -> str:
    return f"{i:08d}-7f3a-4c1e-9b2d-recording"


def _transcript(i: int) -> str:
    return f"{i:08d}-5e1b-4d2a-8c3f-transcript00"


def _created(store: JobStore, i: int) -> str:
    """The i-th job, submitted and its transcript created."""
    job_id, _ = store.submit(_recording(i), PROVIDER)
    record: JobRecord | None = store.record(job_id)
    assert record is not None
    store.start_create(record, time.time())
    store.record_created(job_id, _transcript(i), 60)
    return job_id


def _done(store: JobStore, i: int) -> None:
    job_id = _created(store, i)
    store.transcript_finished(job_id, _transcript(i), "done", None)
    store.finish(job_id)


def _refused(store: JobStore, i: int) -> None:
    job_id, _ = store.submit(_recording(i), PROVIDER)
    store.fail(job_id, ErrorCode.RECALL_REJECTED, "Recall answered 400: recording has no media")


def _failed(store: JobStore, i: int) -> None:
    job_id = _created(store, i)
    store.transcript_finished(job_id, _transcript(i), "failed", "provider_connection_failed")


def _marks(store: JobStore, i: int) -> None:
    """What a job's webhooks and create leave that expires, as the inbox and the pipeline write
    it (a recording's version only once a remediation compares with it: none here)."""
    for event in ("recording.done", "transcript.done"):
        seen = keys.webhook_seen(event_id_for(f"msg_{event}_{i:012d}_2mYHxKQv3"))
        store.redis.set(seen, "1", nx=True, ex=DEDUPE_TTL_S)
    store.recording_changed(_recording(i))
