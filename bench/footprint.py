"""Redis bytes per finished job: the growth of `INFO memory`'s used_memory while N jobs go
through the job store's own transitions (submit, create, transcript done, finish; or fail), so
the record, every index entry and the marks a job leaves are counted as they are written."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from harness import start_redis
from tasks import keys
from tasks.jobs.errors import ErrorCode
from tasks.jobs.record import JobRecord
from tasks.jobs.store import JobStore

PROVIDER = {"recallai_async": {"language_code": "en"}}


def measure(workdir: Path, done: int, failed: int) -> dict[str, Any]:
    """Bytes per done job and per failed job, each over its own run on a fresh Redis."""
    redis_proc, redis_url = start_redis(workdir)
    try:
        client = redis.Redis.from_url(redis_url)
        return {
            "done jobs": done,
            "bytes per done job": _per_job(client, done, _done),
            "failed jobs": failed,
            "bytes per failed job": _per_job(client, failed, _failed),
            "outbox (sent on by the sweeper)": "excluded",
        }
    finally:
        redis_proc.stop()


def _per_job(client: redis.Redis, count: int, finish: Any) -> int:
    client.flushdb()
    store = JobStore(client, 30)
    store.upgrade()
    before = int(client.info("memory")["used_memory"])
    for i in range(count):
        job_id, _ = store.submit(f"{i:08d}-7f3a-4c1e-9b2d-recording", PROVIDER)
        finish(store, job_id, i)
    client.delete(keys.OUTBOX)  # its news sent on: the outbox is emptied as callbacks go out
    client.delete(keys.DUE)
    return round((int(client.info("memory")["used_memory"]) - before) / count)


def _done(store: JobStore, job_id: str, i: int) -> None:
    record: JobRecord | None = store.record(job_id)
    assert record is not None
    transcript = f"{i:08d}-5e1b-4d2a-8c3f-transcript00"
    store.start_create(record, time.time())
    store.record_created(job_id, transcript, 60)
    store.transcript_finished(job_id, transcript, "done", None)
    store.finish(job_id)


def _failed(store: JobStore, job_id: str, i: int) -> None:
    store.fail(job_id, ErrorCode.RECALL_REJECTED, "Recall answered 400: recording has no media")
