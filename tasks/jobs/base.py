"""What every part of the job store stands on: the Redis client, the jobs script (jobs.lua and its
parts: one atomic command per transition of tasks/jobs/states.py), Redis's clock and the leases
of running steps. The store's parts (transitions, sending, queries, maintenance) are mixins over
this base, composed into one `JobStore` (tasks/jobs/store.py) as redis-py composes `Redis` from
its command mixins."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any, Literal

import redis
from pydantic import BaseModel
from redis.client import Pipeline

from tasks import keys, scripts
from tasks.jobs import history
from tasks.jobs.leases import Leases
from tasks.jobs.states import TRANSITIONS, Transition, sources, target
from tasks.replicas import replicated

LOCK_WAIT_S = 2.0  # a step usually finds its job's lock held only while the previous step ends
Delay = float | Literal["keep", "never"]
# The jobs script, in the order its parts are joined (jobs.lua says what each holds).
SCRIPT = ("parts.lua", "jobs.lua", "transitions.lua", "sending.lua", "maintenance.lua")
# jobs.lua's ARGV[2]: where the state sets, listing indexes and transcript owners are, and the
# flag of a rollout going on
_PREFIXES = " ".join(
    [keys.STATE_PREFIX, keys.INDEX_PREFIX, keys.INDEXES, keys.OWNER_PREFIX, keys.SCHEMA_ROLLOUT]
)


def fields_arg(fields: dict[str, Any]) -> str:
    """Fields for the Lua script: strings, and `false` for a field to delete."""
    return json.dumps({k: False if v is None else _text(v) for k, v in fields.items()})


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _delay(value: Delay) -> str:
    return "" if value == "keep" else str(value)


class JobStoreBase:
    """The Redis client and the script every part of the job store runs its commands through."""

    def __init__(
        self,
        client: redis.Redis,
        lease_s: float,
        deadline_s: float = 24 * 3600.0,
        min_replicas: int = 0,
        history_max: int = 100,
    ) -> None:
        self.redis = client
        self.history_max = history_max
        self.lease_s = lease_s
        self.deadline_s = deadline_s
        self.min_replicas = min_replicas
        self.leases = Leases(client, lease_s)
        self._script = scripts.register(client, __name__, *SCRIPT)

    def _run(
        self,
        command: str,
        job_id: str,
        extra_keys: list[str],
        *args: Any,
        client: redis.Redis | Pipeline | None = None,
    ) -> Any:
        job_key = keys.job(job_id) if job_id else ""
        counters = [keys.METRIC_JOB_DURATION, keys.METRIC_JOB_FAILURES]
        return self._script(
            keys=[keys.DUE, job_key, keys.OUTBOX, keys.UNUSED_TICKETS, *extra_keys, *counters],
            args=[command, _PREFIXES, keys.JOB_PREFIX, job_id, *args],
            client=client,
        )

    def _move(
        self,
        transition: Transition,
        job_id: str,
        *,
        due_in: Delay = "keep",
        replicas: int = 0,
        met: tuple[str, str] | None = None,
        **fields: Any,
    ) -> bool:
        """Apply a transition whose target is one phase (or none), recording it in the job's
        history with the error `met` (code, message); False when refused. With `replicas`,
        only once that many replicas confirmed it (else `NotReplicated`)."""
        targets = TRANSITIONS[transition].target
        if len(targets) > 1:
            raise ValueError(f"{transition} has several targets: it has its own command")
        to = target(transition, next(iter(targets))) if targets else ["", ""]
        event = self._event(transition, *(met or ()))
        args = [sources(transition), *to, _delay(due_in), fields_arg(fields), event]
        return self._confirmed("move", job_id, [], *args, replicas=replicas) is not None

    def _confirmed(
        self, command: str, job_id: str, extra_keys: list[str], *args: Any, replicas: int
    ) -> Any:
        """`_run`, answered only once `replicas` replicas have its write (else `NotReplicated`):
        for the transitions a failover must not forget."""
        return replicated(
            self.redis,
            replicas,
            lambda pipe: self._run(command, job_id, extra_keys, *args, client=pipe),
        )

    def _event(self, event: str, code: str | None = None, message: str = "") -> str:
        """A history argument of jobs.lua: `event` (a transition, or `submitted`) to record."""
        return history.spec(self.history_max, event, code, message)

    def now(self) -> float:
        """Redis's clock: the one every time in the job store is on."""
        seconds, micros = self.redis.time()
        return seconds + micros / 1_000_000

    def running(self, job_id: str) -> AbstractContextManager[bool]:
        """Hold the job's lease while one of its steps runs (waiting up to LOCK_WAIT_S for the
        previous step to end); yields False when another step still holds it."""
        return self.leases.hold(keys.job_lock(job_id), LOCK_WAIT_S)

    def recording_lease(self, recording_id: str, wait: bool) -> AbstractContextManager[bool]:
        """Hold the recording's lease while a job creates on it or remediates its limit."""
        return self.leases.hold(keys.recording_lock(recording_id), LOCK_WAIT_S if wait else None)
