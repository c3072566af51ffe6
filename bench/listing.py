"""Listings at volume: a 50-job page of `GET /api/v1/jobs` over HTTP, for every combination of
its filters, with N retained jobs written straight into Redis (pipelined, cloned from records the
job store itself wrote, with every index entry its Lua writes), so a million jobs fill in minutes.
A page costs its index walk, so 5,000 jobs should cost about what 500 do."""

from __future__ import annotations

import itertools
import statistics
import time
import uuid
from pathlib import Path
from typing import Any, cast

import redis
import requests

from harness import API_TOKEN, recall_transcribe, start_redis, system_env, wait_for
from harness.processes import Process, free_port, http_ready
from tasks import keys
from tasks.jobs.errors import ErrorCode
from tasks.jobs.store import JobStore

WORKSPACES = 4
CODES = (ErrorCode.TIMEOUT, ErrorCode.LIMIT_REACHED, ErrorCode.RECALL_REJECTED, ErrorCode.INTERNAL)
KINDS = ("done",) * 7 + ("failed",) * 2 + ("awaiting",)  # what a retained population looks like
FILTERS = ("state", "workspace", "recording_id", "error_code", "created_after", "created_before")
BATCH = 2_000


def measure(workdir: Path, sizes: list[int], requests_per_combination: int) -> dict[str, Any]:
    """p50/p99 (ms) of a page per filter combination at each size, on one Redis and receiver."""
    redis_proc, redis_url = start_redis(workdir)
    port = free_port()
    env = system_env(redis_url, workdir)
    receiver: Process | None = None
    try:
        receiver = recall_transcribe(["receiver", "--port", str(port)], env, workdir / "rx.log")
        wait_for(http_ready(f"http://127.0.0.1:{port}/healthz"), 30, what="receiver up")
        client = redis.Redis.from_url(redis_url)
        results: dict[str, Any] = {}
        first: dict[str, dict[str, float]] | None = None
        for size in sizes:
            client.flushdb()
            started = time.monotonic()
            values = fill(client, size)
            fill_s = time.monotonic() - started
            memory = int(client.info("memory")["used_memory"])
            url = f"http://127.0.0.1:{port}"
            pages = _pages(url, values, requests_per_combination, first)
            first = first or pages
            results[f"{size} jobs"] = {
                "fill (s)": round(fill_s, 1),
                "used_memory (MB)": round(memory / 1e6),
                "pages": pages,
            }
        return results
    finally:
        if receiver is not None:
            receiver.stop()
        redis_proc.stop()


def fill(client: redis.Redis, count: int) -> dict[str, str]:
    """`count` retained jobs, as the job store would have left them; the filter values to ask."""
    templates = _templates(client)
    base = time.time() - count * 0.01
    values: dict[str, str] = {}
    for start in range(0, count, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + BATCH, count)):
            created = base + i * 0.01 + (i % 7) * 1e-6
            kind = KINDS[i % len(KINDS)]
            job_id, recording = str(uuid.UUID(int=i + 1)), str(uuid.UUID(int=(i // 2) << 64))
            workspace, code = f"ws-{i % WORKSPACES}", CODES[(i // len(KINDS)) % len(CODES)]
            fields: dict[Any, str] = {
                **templates[kind],
                "id": job_id,
                "recording_id": recording,
                "workspace": workspace,
                "idempotency_key": f"{recording}:0123456789abcdef",
                "created_at": repr(created),
                "updated_at": repr(created + 60),
                "deadline_at": repr(created + 86400),
            }
            index = keys.index(workspace, kind, code if kind == "failed" else None)
            if "transcript_id" in fields:
                fields["transcript_id"] = str(uuid.UUID(int=i + 1 << 32))
                if kind not in ("done", "failed"):
                    pipe.set(keys.transcript_owner(fields["transcript_id"]), job_id)
            if kind == "failed":
                fields["error"] = f'{{"code": "{code}", "message": "failed in the benchmark"}}'
            elif kind == "awaiting":
                pipe.zadd(keys.DUE, {job_id: created + 60})
            pipe.hset(keys.job(job_id), mapping=fields)
            pipe.zadd(index, {job_id: created})
            pipe.sadd(keys.INDEXES, index)
            pipe.zadd(keys.recording(recording), {job_id: created})
            if kind not in ("done", "failed"):
                pipe.zadd(keys.state(kind), {job_id: created + 60})
            if i == count // 2 // len(KINDS) * len(KINDS) + KINDS.index("failed"):
                values = {
                    "state": "failed",
                    "workspace": workspace,
                    "recording_id": recording,
                    "error_code": str(CODES[0]),
                    "created_after": _iso(base + count * 0.0025),
                    "created_before": _iso(base + count * 0.0075),
                }
        pipe.execute()
    client.set(keys.SCHEMA, "5")
    return values


def _templates(client: redis.Redis) -> dict[str, dict[str, str]]:
    """One job's hash per kind, as the store's own transitions wrote it."""
    store, made = JobStore(client, 30), {}
    for kind in set(KINDS):
        job_id, _ = store.submit(f"template-{kind}", {"recallai_async": {"language_code": "en"}})
        record = store.record(job_id)
        assert record is not None
        if kind in ("done", "awaiting"):
            store.start_create(record, time.time())
            store.record_created(job_id, f"t-{kind}", 60)
        if kind == "done":
            store.transcript_finished(job_id, f"t-{kind}", "done", None)
            store.finish(job_id)
        if kind == "failed":
            store.fail(job_id, CODES[0], "failed in the benchmark")
        raw = cast(dict[bytes, bytes], client.hgetall(keys.job(job_id)))
        made[kind] = {k.decode(): v.decode() for k, v in raw.items()}
    client.flushdb()
    return made


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}Z"


def _pages(
    url: str, values: dict[str, str], count: int, first: dict[str, dict[str, float]] | None
) -> dict[str, dict[str, float]]:
    """Per combination, 50-job pages; and where the first size's pages held fewer jobs, pages
    of that many too ("same page"), so that sizes compare the walk, not the jobs rendered."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_TOKEN}"
    rows: dict[str, dict[str, float]] = {}
    for width in range(len(FILTERS) + 1):
        for chosen in itertools.combinations(FILTERS, width):
            name = "+".join(chosen) or "(none)"
            params = {name: values[name] for name in chosen}
            row = _timed(session, f"{url}/api/v1/jobs", {**params, "limit": "50"}, count)
            held = max(1, int(first[name]["jobs on a page"])) if first else 50
            if row["jobs on a page"] > held:
                again = _timed(session, f"{url}/api/v1/jobs", {**params, "limit": str(held)}, count)
                row["same page p50 ms"] = again["p50 ms"]
            rows[name] = row
    return rows


def _timed(session: requests.Session, url: str, params: dict[str, str], count: int) -> Any:
    """The first page, then the next ones while there are some, `count` requests in all."""
    took, cursor, jobs = [], None, 0
    for _ in range(count):
        started = time.perf_counter()
        answer = session.get(url, params={**params, **({"cursor": cursor} if cursor else {})})
        took.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
        body = answer.json()
        jobs, cursor = max(jobs, len(body["jobs"])), body["next_cursor"]
    took.sort()
    return {
        "p50 ms": round(statistics.median(took), 1),
        "p99 ms": round(took[min(len(took) - 1, int(len(took) * 0.99))], 1),
        "jobs on a page": jobs,
    }
