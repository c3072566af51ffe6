"""Job state in Redis: one hash per job, sorted sets by state, and a due-set that drives every job.

Keys (all under `rt:`):
    rt:job:{id}            hash of the job's fields
    rt:jobs                zset of every job id, by creation time
    rt:state:{state}       zset of job ids in that state, by last update
    rt:recording:{rid}     set of the recording's job ids
    rt:transcript:{tid}    the id of the job that owns a transcript
    rt:due                 zset of unfinished job ids, by when a worker must next look at them
    rt:lock:{id}           lock held while one step of the job runs

A job id is derived from its idempotency key, so submitting the same key twice finds the same job.
Every state change is one Lua script: check the current state, write, and move the job between the
state sets and in the due-set, atomically. The due-set is the safety net: a message lost with a
crashed worker or a restarted Redis is re-driven by the sweeper when its time comes.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel

State = Literal["queued", "creating", "awaiting", "fetching", "done", "failed"]
Step = Literal["create", "remediate", "await", "fetch"]
STATES: tuple[State, ...] = ("queued", "creating", "awaiting", "fetching", "done", "failed")
TERMINAL = ("done", "failed")
ACTIVE = ("queued", "creating", "awaiting", "fetching")

_NAMESPACE = uuid.UUID("6f1d7c2e-6a55-4f0c-9d7b-2f3c1e9a8b40")

_SUBMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = cjson.decode(ARGV[3])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1])
return 1
"""

# KEYS: job, due. ARGV: id, expected ('*' or comma list), new state, now, due (-1 removes),
# json {field: value} to set (false deletes). Returns the previous state, or false if refused.
_TRANSITION = """
local old = redis.call('HGET', KEYS[1], 'state')
if not old then return false end
if ARGV[2] ~= '*' and not string.find(',' .. ARGV[2] .. ',', ',' .. old .. ',', 1, true) then
  return false
end
local fields = cjson.decode(ARGV[6])
for k, v in pairs(fields) do
  if v == false then redis.call('HDEL', KEYS[1], k) else redis.call('HSET', KEYS[1], k, v) end
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'updated_at', ARGV[4])
redis.call('ZREM', 'rt:state:' .. old, ARGV[1])
redis.call('ZADD', 'rt:state:' .. ARGV[3], ARGV[4], ARGV[1])
if tonumber(ARGV[5]) < 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
end
return old
"""

# A transcript webhook. KEYS: job, due. ARGV: id, transcript id, 'done'|'failed', sub_code, now,
# lease. Returns 'fetch', 'failed', 'stored' (kept for the create step to pick up) or 'ignored'.
_ON_TRANSCRIPT_EVENT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'ignored' end
local owned = redis.call('HGET', KEYS[1], 'transcript_id')
if state == 'awaiting' and owned == ARGV[2] then
  local now = tonumber(ARGV[5])
  redis.call('ZREM', 'rt:state:awaiting', ARGV[1])
  if ARGV[3] == 'done' then
    redis.call('HSET', KEYS[1], 'state', 'fetching', 'step', 'fetch', 'retries', 0,
               'updated_at', now)
    redis.call('ZADD', 'rt:state:fetching', now, ARGV[1])
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[1])
    return 'fetch'
  end
  local err = cjson.encode({code = 'transcript_failed',
    message = 'Recall reported the transcript failed (sub_code: ' .. ARGV[4] .. ')',
    sub_code = ARGV[4]})
  redis.call('HSET', KEYS[1], 'state', 'failed', 'error', err, 'updated_at', now)
  redis.call('ZADD', 'rt:state:failed', now, ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'failed'
end
if (state == 'queued' or state == 'creating') and (not owned or owned == ARGV[2]) then
  redis.call('HSET', KEYS[1], 'signal', ARGV[3], 'signal_transcript', ARGV[2],
             'signal_sub_code', ARGV[4])
  return 'stored'
end
return 'ignored'
"""

# The create call answered. KEYS: job, due, transcript owner. ARGV: id, transcript id, now,
# first poll at, lease. Honours a webhook that arrived before the answer. Returns the next step.
_RECORD_CREATED = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'creating' then return 'ignored' end
local now = tonumber(ARGV[3])
redis.call('SET', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'transcript_id', ARGV[2], 'transcript_created_at', now,
           'retries', 0, 'polls', 0, 'updated_at', now)
redis.call('HDEL', KEYS[1], 'create_pending')
redis.call('ZREM', 'rt:state:creating', ARGV[1])
local signal = redis.call('HGET', KEYS[1], 'signal')
if redis.call('HGET', KEYS[1], 'signal_transcript') ~= ARGV[2] then signal = false end
redis.call('HDEL', KEYS[1], 'signal', 'signal_transcript')
if signal == 'done' then
  redis.call('HSET', KEYS[1], 'state', 'fetching', 'step', 'fetch')
  redis.call('ZADD', 'rt:state:fetching', now, ARGV[1])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[1])
  return 'fetch'
end
if signal == 'failed' then
  local sub = redis.call('HGET', KEYS[1], 'signal_sub_code') or ''
  local err = cjson.encode({code = 'transcript_failed',
    message = 'Recall reported the transcript failed (sub_code: ' .. sub .. ')', sub_code = sub})
  redis.call('HSET', KEYS[1], 'state', 'failed', 'error', err)
  redis.call('ZADD', 'rt:state:failed', now, ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'failed'
end
redis.call('HSET', KEYS[1], 'state', 'awaiting', 'step', 'await')
redis.call('ZADD', 'rt:state:awaiting', now, ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 'await'
"""

# KEYS: due. ARGV: now, lease, limit. Claims due jobs (pushing them one lease ahead) and returns
# [id, step, id, step, ...]; finished or vanished jobs leave the due-set.
_SWEEP = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local fields = redis.call('HMGET', 'rt:job:' .. id, 'state', 'step')
  if not fields[1] or fields[1] == 'done' or fields[1] == 'failed' then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, fields[2])
  end
end
return out
"""


def job_key(job_id: str) -> str:
    return f"rt:job:{job_id}"


def job_id_for(idempotency_key: str) -> str:
    """The job id is a function of the idempotency key: one key, one job."""
    return str(uuid.uuid5(_NAMESPACE, idempotency_key))


LOCK_WAIT_S = 2.0  # a step usually finds its job's lock held only while the previous step ends


def default_idempotency_key(recording_id: str, provider: dict[str, Any]) -> str:
    """Recording id plus a digest of the provider configuration."""
    canonical = json.dumps(provider, sort_keys=True, separators=(",", ":"))
    return f"{recording_id}:{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def _iso(value: str | None) -> str | None:
    if not value:
        return None
    return datetime.fromtimestamp(float(value), UTC).isoformat().replace("+00:00", "Z")


class JobError(BaseModel):
    code: str
    message: str
    sub_code: str | None = None


class Job(BaseModel):
    """A job as users see it (the jobs API and CLI)."""

    id: str
    recording_id: str
    state: State
    transcript_id: str | None = None
    attempts: int
    error: JobError | None = None
    idempotency_key: str
    provider: dict[str, Any]
    metadata: dict[str, Any]
    created_at: str | None
    updated_at: str | None

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> Job:
        return cls(
            id=fields["id"],
            recording_id=fields["recording_id"],
            state=cast(State, fields["state"]),
            transcript_id=fields.get("transcript_id") or None,
            attempts=int(fields.get("attempts", "1")),
            error=JobError.model_validate_json(fields["error"]) if fields.get("error") else None,
            idempotency_key=fields["idempotency_key"],
            provider=json.loads(fields.get("provider", "{}")),
            metadata=json.loads(fields.get("metadata", "{}")),
            created_at=_iso(fields.get("created_at")),
            updated_at=_iso(fields.get("updated_at")),
        )


class JobStore:
    """Reads and changes job state atomically."""

    def __init__(self, client: redis.Redis, lease_s: float) -> None:
        self.redis = client
        self.lease_s = lease_s
        self._submit = client.register_script(_SUBMIT)
        self._transition = client.register_script(_TRANSITION)
        self._on_event = client.register_script(_ON_TRANSCRIPT_EVENT)
        self._record_created = client.register_script(_RECORD_CREATED)
        self._sweep = client.register_script(_SWEEP)

    def submit(
        self,
        recording_id: str,
        provider: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[str, bool]:
        """Create the job for this key unless it exists; returns (job id, created)."""
        key = idempotency_key or default_idempotency_key(recording_id, provider)
        job_id = job_id_for(key)
        now = time.time()
        fields = {
            "id": job_id,
            "recording_id": recording_id,
            "idempotency_key": key,
            "provider": json.dumps(provider),
            "metadata": json.dumps(metadata or {}),
            "state": "queued",
            "step": "create",
            "attempts": 1,
            "retries": 0,
            "create_seq": 0,
            "created_at": now,
            "updated_at": now,
        }
        created = self._submit(
            keys=[
                job_key(job_id),
                "rt:jobs",
                "rt:state:queued",
                f"rt:recording:{recording_id}",
                "rt:due",
            ],
            args=[job_id, now, json.dumps(fields), now + self.lease_s],
        )
        return job_id, bool(created)

    def fields(self, job_id: str) -> dict[str, str]:
        """The raw hash of a job (empty when there is no such job)."""
        raw = cast(dict[bytes, bytes], self.redis.hgetall(job_key(job_id)))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def get(self, job_id: str) -> Job | None:
        fields = self.fields(job_id)
        return Job.from_hash(fields) if fields else None

    def transition(
        self,
        job_id: str,
        expected: Iterable[str] | str,
        state: State,
        *,
        due_in: float | None = None,
        **fields: Any,
    ) -> str | None:
        """Move the job to `state` if it is in one of `expected`; None when refused.

        `due_in` schedules the next look (None leaves the due-set, for finished jobs); a field set
        to None is deleted.
        """
        now = time.time()
        allowed = expected if isinstance(expected, str) else ",".join(expected)
        due = -1.0 if due_in is None else now + due_in
        values = {k: (False if v is None else v) for k, v in fields.items()}
        old = self._transition(
            keys=[job_key(job_id), "rt:due"],
            args=[job_id, allowed, state, now, due, json.dumps(values)],
        )
        return old.decode() if old else None

    def fail(self, job_id: str, code: str, message: str, **extra: Any) -> bool:
        """Fail an unfinished job with a readable error."""
        error = json.dumps({"code": code, "message": message, **extra})
        return self.transition(job_id, ACTIVE, "failed", error=error) is not None

    def schedule(self, job_id: str, delay_s: float, **fields: Any) -> None:
        """Look at the job again after `delay_s` (a retry or the next poll), keeping its state."""
        pipe = self.redis.pipeline()
        if fields:
            pipe.hset(job_key(job_id), mapping={k: str(v) for k, v in fields.items()})
        pipe.zadd("rt:due", {job_id: time.time() + delay_s}, xx=True)
        pipe.execute()

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields of a job without changing its state; a field set to None is deleted."""
        pipe = self.redis.pipeline()
        if any(v is not None for v in fields.values()):
            pipe.hset(
                job_key(job_id), mapping={k: str(v) for k, v in fields.items() if v is not None}
            )
        absent = [k for k, v in fields.items() if v is None]
        if absent:
            pipe.hdel(job_key(job_id), *absent)
        pipe.execute()

    def record_created(self, job_id: str, transcript_id: str, first_poll_s: float) -> str:
        """Store the created transcript; returns the next step ('await', 'fetch', 'failed')."""
        now = time.time()
        result = self._record_created(
            keys=[job_key(job_id), "rt:due", f"rt:transcript:{transcript_id}"],
            args=[job_id, transcript_id, now, now + first_poll_s, self.lease_s],
        )
        return cast(bytes, result).decode()

    def on_transcript_event(
        self, job_id: str, transcript_id: str, outcome: str, sub_code: str | None
    ) -> str:
        """Apply a transcript webhook to its job; returns what should happen next."""
        result = self._on_event(
            keys=[job_key(job_id), "rt:due"],
            args=[job_id, transcript_id, outcome, sub_code or "unknown", time.time(), self.lease_s],
        )
        return cast(bytes, result).decode()

    def owner_of(self, transcript_id: str) -> str | None:
        """The job that owns a transcript, if one of ours does."""
        owner = self.redis.get(f"rt:transcript:{transcript_id}")
        return cast(bytes, owner).decode() if owner else None

    def claim_due(self, limit: int = 200) -> list[tuple[str, str]]:
        """Jobs whose time has come, each pushed one lease ahead so one sweeper takes it."""
        flat = cast(
            list[bytes], self._sweep(keys=["rt:due"], args=[time.time(), self.lease_s, limit])
        )
        return [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]

    def lock(self, job_id: str) -> Any:
        """A lock so one copy of a job's step runs at a time; waits up to LOCK_WAIT_S for it."""
        return self.redis.lock(
            f"rt:lock:{job_id}", timeout=self.lease_s, blocking_timeout=LOCK_WAIT_S
        )

    def nudge(self, job_id: str, delay_s: float) -> None:
        """Make the job due within `delay_s` (never later than it already is)."""
        self.redis.zadd("rt:due", {job_id: time.time() + delay_s}, xx=True, lt=True)

    def retry(self, job_id: str) -> bool:
        """Re-run a failed job from the start with a fresh create key."""
        fields = self.fields(job_id)
        if fields.get("state") != "failed":
            return False
        done = self.transition(
            job_id,
            "failed",
            "queued",
            due_in=self.lease_s,
            step="create",
            attempts=int(fields.get("attempts", "1")) + 1,
            retries=0,
            polls=0,
            error=None,
            transcript_id=None,
            create_pending=None,
            create_seq=int(fields.get("create_seq", "0")) + 1,
            signal=None,
            signal_transcript=None,
        )
        return done is not None

    def page(
        self,
        *,
        recording_id: str | None = None,
        state: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[Job]:
        """A page of jobs, newest first, filtered by recording and/or state."""
        if recording_id:
            members = cast(set[bytes], self.redis.smembers(f"rt:recording:{recording_id}"))
            ids = [m.decode() for m in members]
        else:
            key = f"rt:state:{state}" if state else "rt:jobs"
            window = cast(list[bytes], self.redis.zrevrange(key, offset, offset + limit - 1))
            ids, offset = [m.decode() for m in window], 0
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hgetall(job_key(job_id))
        jobs = [
            Job.from_hash({k.decode(): v.decode() for k, v in raw.items()})
            for raw in cast(list[dict[bytes, bytes]], pipe.execute())
            if raw
        ]
        jobs = [job for job in jobs if state is None or job.state == state]
        jobs.sort(key=lambda job: job.created_at or "", reverse=True)
        return jobs[offset : offset + limit]
