"""Job state in Redis: one hash per job, sorted sets by state, and a due-set that drives every job.

A job id is derived from its idempotency key, so submitting the same key twice finds the same job.
Every transition of the table in tasks/states.py is one method here and one atomic Lua command
(tasks/lua/jobs.lua): check the job's phase, write, move the job between the state sets and in
the due-set. The due-set is the safety net: a message lost with a crashed worker or a restarted
Redis is re-driven by the sweeper when its time comes. Each step message sent is recorded on its
job (`send`), so it is sent again only once taken by a worker or provably lost, and a stale copy
is recognised (`consume`). Times are Redis's clock. Key names: tasks/keys.py.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel, Field, field_validator
from redis.client import Pipeline

from tasks import keys, limits
from tasks.callbacks.deliveries import views
from tasks.callbacks.model import ANONYMOUS, Callback, redact
from tasks.connection import replicated
from tasks.leases import Leases
from tasks.names import PIPELINE_QUEUE
from tasks.outcomes import ErrorCode
from tasks.settings import Settings
from tasks.states import (
    ACTIVE,
    AWAITING,
    DONE,
    FAILED,
    FETCHING,
    QUEUED,
    TRANSITIONS,
    Phase,
    State,
    Step,
    Transition,
    sources,
    target,
)
from tasks.workspaces import DEFAULT

_DERIVED = uuid.UUID("6f1d7c2e-6a55-4f0c-9d7b-2f3c1e9a8b40")  # keys the webhook path derives
_GIVEN = uuid.UUID("0c3f9a8e-52d1-4b7e-8e9f-4a6d2b1c7e55")  # keys clients give (API, CLI, Celery)
SCHEMA = "3"  # jobs with a phase, a deadline and a workspace (1: state and step)
LOCK_WAIT_S = 2.0  # a step usually finds its job's lock held only while the previous step ends
# callback_url destinations one caller (API token) may give a job. No total per job: a total
# would let callers fill it for one another, and callers are the operator's API_TOKENS, so
# a job holds at most this many per token.
MAX_CALLBACKS_PER_CALLER = 3
EarlyEvent = Literal["done", "failed"]
Added = Literal["added", "known", "full"]
Delay = float | Literal["keep", "never"]


def job_id_for(idempotency_key: str, *, given: bool, workspace: str = DEFAULT) -> str:
    """One key, one job. Keys clients give and keys the webhook path derives are in different
    namespaces (no key a client gives names a recording's job), and each workspace has its own
    pair (the same key in two workspaces names two jobs, whatever characters it holds)."""
    namespace = _GIVEN if given else _DERIVED
    if workspace != DEFAULT:
        namespace = uuid.uuid5(namespace, f"workspace {workspace}")
    return str(uuid.uuid5(namespace, idempotency_key))


def default_idempotency_key(recording_id: str, provider: dict[str, Any]) -> str:
    """Recording id plus a digest of the provider configuration."""
    canonical = json.dumps(provider, sort_keys=True, separators=(",", ":"))
    return f"{recording_id}:{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Listing:
    """A recording's listing in progress: the transcripts seen and where it goes on."""

    seen: list[dict[str, Any]]
    cursor: str | None  # the next page's URL; None once complete
    started_at: float
    version: int  # the recording's version (our creates and deletes) when it began


class JobError(BaseModel):
    code: str
    message: str
    sub_code: str | None = None


class Job(BaseModel):
    """A job as users see it (the jobs API and CLI)."""

    id: str
    recording_id: str
    workspace: str = DEFAULT
    state: State
    transcript_id: str | None = None
    attempts: int
    error: JobError | None = None
    idempotency_key: str
    provider: dict[str, Any]
    metadata: dict[str, Any]
    callback_url: str | None = Field(
        default=None,
        description="the job's first callback_url, redacted to where it goes (the answer to the "
        "request that gave one shows that one whole)",
    )
    callbacks: list[Callback] = Field(default_factory=list)
    created_at: str | None
    updated_at: str | None


class Destination(BaseModel):
    """A callback_url a job sends its news to, and who gave it (`model.owner`)."""

    url: str
    by: str


class JobRecord(BaseModel):
    """A job's hash, typed: what the steps read."""

    id: str
    recording_id: str
    workspace: str = DEFAULT  # the Recall workspace (region) the recording is in
    idempotency_key: str
    provider: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = None  # its one callback_url, as jobs before several kept it
    callback_urls: list[Destination] = Field(default_factory=list)  # add_callback's
    callbacks: list[str] = Field(default_factory=list)  # deliveries of its latest finish
    state: State
    phase: Phase
    attempts: int = 1
    failures: dict[str, int] = Field(default_factory=dict)  # retryable errors by code, this phase
    remediations: int = 0  # limit remediations since the last successful create
    polls: int = 0
    create_seq: int = 0  # bumped after a definite create error: the next create uses a new key
    create_pending: bool = False  # a create call may have happened whose answer we never saw
    create_key_at: float | None = None  # when the current create key was first sent
    quota_ticket: str | None = None  # a quota slot reserved for the step's next run
    listing: list[dict[str, Any]] = Field(default_factory=list)  # a listing the quota cut short
    listing_next: str | None = None  # ... and where it goes on
    listing_at: float | None = None  # ... and when it began
    listing_version: int | None = None  # the recording's version when that listing began
    refused_version: int | None = None  # the recording's version when create was refused
    refusal: str | None = None  # Recall's answer then
    transcript_id: str | None = None
    transcript_created_at: float | None = None
    archived_transcript_id: str | None = None  # archived by another job's remediation
    early_event: EarlyEvent | None = None  # a transcript event that came before the create answer
    early_transcript_id: str | None = None
    early_sub_code: str | None = None
    error: JobError | None = None
    last_error: str | None = None
    created_at: float
    updated_at: float
    deadline_at: float

    @field_validator(
        "provider",
        "metadata",
        "error",
        "failures",
        "listing",
        "callbacks",
        "callback_urls",
        mode="before",
    )
    @classmethod
    def _json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("phase", mode="before")
    @classmethod
    def _phase(cls, value: Any) -> Any:
        return Phase.parse(value) if isinstance(value, str) else value

    @property
    def step(self) -> Step | None:
        return self.phase.step

    @property
    def destinations(self) -> list[Destination]:
        """Every callback_url of the job, first given first."""
        old = [Destination(url=self.callback_url, by=ANONYMOUS)] if self.callback_url else []
        return old + self.callback_urls

    @property
    def create_key(self) -> str:
        """The Idempotency-Key of this job's next create call."""
        return f"{self.id}:{self.create_seq}"

    @property
    def listing_in_progress(self) -> Listing | None:
        if self.listing_next is None or self.listing_at is None or self.listing_version is None:
            return None
        return Listing(self.listing, self.listing_next, self.listing_at, self.listing_version)

    def view(self, callbacks: list[Callback] | None = None) -> Job:
        """The job as users see it. A provider or metadata over the limits (stored before they
        were enforced) is withheld, so that one job cannot break a page or a sweep."""
        return Job(
            id=self.id,
            recording_id=self.recording_id,
            workspace=self.workspace,
            state=self.state,
            transcript_id=self.transcript_id,
            attempts=self.attempts,
            error=self.error,
            idempotency_key=self.idempotency_key,
            provider=self.provider if limits.within(self.provider) else limits.WITHHELD,
            metadata=self.metadata if limits.within(self.metadata) else limits.WITHHELD,
            callback_url=redact(self.destinations[0].url) if self.destinations else None,
            callbacks=callbacks or [],
            created_at=_iso(self.created_at),
            updated_at=_iso(self.updated_at),
        )


@dataclass(frozen=True)
class Due:
    """A job the sweeper must send its step for."""

    job_id: str
    step: Step
    recording_id: str


@dataclass(frozen=True)
class Message:
    """A step message to send: its task id (also its delivery tag) and its body."""

    job_id: str
    step: Step
    task_id: str
    body: str


def _decode(raw: dict[bytes, bytes]) -> JobRecord | None:
    return (
        JobRecord.model_validate({k.decode(): v.decode() for k, v in raw.items()}) if raw else None
    )


def _strings(fields: dict[str, Any]) -> str:
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


def _runs_in(step: Step) -> str:
    """The phases in which `step` is the job's step, as the Lua script reads sources."""
    return ",".join(sorted(str(phase) for phase in ACTIVE if phase.step == step))


class JobStore:
    """Reads jobs and changes them, one method per transition of the table."""

    def __init__(
        self,
        client: redis.Redis,
        lease_s: float,
        deadline_s: float = 24 * 3600.0,
        min_replicas: int = 0,
    ) -> None:
        self.redis = client
        self.lease_s = lease_s
        self.deadline_s = deadline_s
        self.min_replicas = min_replicas
        self.leases = Leases(client, lease_s)
        script = resources.files("tasks").joinpath("lua/jobs.lua").read_text()
        self._script = client.register_script(script)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> JobStore:
        return cls(
            client, settings.JOB_STEP_LEASE_S, settings.JOB_DEADLINE_S, settings.REDIS_MIN_REPLICAS
        )

    def _run(
        self,
        command: str,
        job_id: str,
        extra_keys: list[str],
        *args: Any,
        client: redis.Redis | Pipeline | None = None,
    ) -> Any:
        job_key = keys.job(job_id) if job_id else ""
        return self._script(
            keys=[keys.DUE, job_key, keys.OUTBOX, keys.UNUSED_TICKETS, *extra_keys],
            args=[command, keys.STATE_PREFIX, keys.JOB_PREFIX, job_id, *args],
            client=client,
        )

    def _move(
        self,
        transition: Transition,
        job_id: str,
        *,
        due_in: Delay = "keep",
        replicas: int = 0,
        **fields: Any,
    ) -> bool:
        """Apply a transition whose target is one phase (or none); False when refused. With
        `replicas`, only once that many replicas confirmed it (else `NotReplicated`)."""
        targets = TRANSITIONS[transition].target
        if len(targets) > 1:
            raise ValueError(f"{transition} has several targets: it has its own command")
        to = target(transition, next(iter(targets))) if targets else ["", ""]
        args = [sources(transition), *to, _delay(due_in), _strings(fields)]
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

    # -- reading -------------------------------------------------------------------------------

    def record(self, job_id: str) -> JobRecord | None:
        return _decode(cast(dict[bytes, bytes], self.redis.hgetall(keys.job(job_id))))

    def get(self, job_id: str) -> Job | None:
        record = self.record(job_id)
        return self.views([record])[0] if record else None

    def views(self, records: list[JobRecord]) -> list[Job]:
        """Jobs as users see them, with the state of their callbacks (one round trip)."""
        deliveries = views(self.redis, [record.callbacks for record in records])
        return [
            record.view([d.view() for d in found])
            for record, found in zip(records, deliveries, strict=True)
        ]

    def now(self) -> float:
        """Redis's clock: the one every time in the job store is on."""
        seconds, micros = self.redis.time()
        return seconds + micros / 1_000_000

    def owner_of(self, transcript_id: str) -> str | None:
        """The job that owns a transcript, if one of ours does."""
        owner = self.redis.get(keys.transcript_owner(transcript_id))
        return cast(bytes, owner).decode() if owner else None

    def is_active(self, job_id: str) -> bool:
        state = self.redis.hget(keys.job(job_id), "state")
        return state is not None and State(cast(bytes, state).decode()).active

    def records(self, state: State, recording_id: str | None = None) -> Iterator[JobRecord]:
        """Every job in `state` (of one recording), oldest change first, read in batches."""
        if recording_id:
            ids = sorted(
                m.decode()
                for m in cast(set[bytes], self.redis.smembers(keys.recording(recording_id)))
            )
        else:
            ids = [
                m.decode() for m in cast(list[bytes], self.redis.zrange(keys.state(state), 0, -1))
            ]
        for start in range(0, len(ids), 500):
            pipe = self.redis.pipeline()
            for job_id in ids[start : start + 500]:
                pipe.hgetall(keys.job(job_id))
            for raw in cast(list[dict[bytes, bytes]], pipe.execute()):
                record = _decode(raw)
                if record is not None and record.state == state:
                    yield record

    def page(
        self,
        *,
        recording_id: str | None = None,
        state: State | None = None,
        workspace: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[Job]:
        """A page of jobs, newest first, filtered by recording, state and/or workspace."""
        if recording_id:
            members = cast(set[bytes], self.redis.smembers(keys.recording(recording_id)))
            ids = [m.decode() for m in members]
        elif workspace and state:  # a workspace's jobs, read whole to filter by state
            ids = [
                m.decode()
                for m in cast(list[bytes], self.redis.zrange(keys.workspace(workspace), 0, -1))
            ]
        else:
            key = (
                keys.workspace(workspace)
                if workspace
                else keys.state(state)
                if state
                else keys.JOBS
            )
            window = cast(list[bytes], self.redis.zrevrange(key, offset, offset + limit - 1))
            ids, offset = [m.decode() for m in window], 0
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        records = [_decode(raw) for raw in cast(list[dict[bytes, bytes]], pipe.execute())]
        chosen = [
            r
            for r in records
            if r
            and (state is None or r.state == state)
            and (workspace is None or r.workspace == workspace)
        ]
        jobs = self.views(chosen)
        jobs.sort(key=lambda job: job.created_at or "", reverse=True)
        return jobs[offset : offset + limit]

    # -- transitions (tasks/states.py) ------------------------------------------------------------

    def submit(
        self,
        recording_id: str,
        provider: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        workspace: str = DEFAULT,
    ) -> tuple[str, bool]:
        """Create the job for this key in this workspace unless it exists; returns (job id,
        created). Without a key, the job is the recording's (its `recording.done` starts it).
        With REDIS_MIN_REPLICAS, the job is on that many replicas before this returns (else
        `NotReplicated`): a job the API accepted survives a failover."""
        key = idempotency_key or default_idempotency_key(recording_id, provider)
        job_id = job_id_for(key, given=idempotency_key is not None, workspace=workspace)
        fields = {
            "id": job_id,
            "recording_id": recording_id,
            "workspace": workspace,
            "idempotency_key": key,
            "provider": provider,
            "metadata": metadata or {},
            "callback_urls": [{"url": callback_url, "by": ANONYMOUS}] if callback_url else None,
        }
        created = self._confirmed(
            "submit",
            job_id,
            [keys.JOBS, keys.recording(recording_id), keys.workspace(workspace)],
            _strings(fields),
            self.lease_s,
            self.deadline_s,
            *[str(QUEUED.state), str(QUEUED)],
            replicas=self.min_replicas,
        )
        return job_id, bool(created)

    def start_create(self, job: JobRecord, key_at: float) -> bool:
        """The create step begins: from here a create call may happen (with the job's key,
        first sent at `key_at`, on Redis's clock, if it is new). With REDIS_MIN_REPLICAS, the
        mark is on that many replicas before this returns (else `NotReplicated`): a failover
        never forgets that a create may have happened."""
        return self._move(
            Transition.START_CREATE,
            job.id,
            due_in=self.lease_s,
            replicas=self.min_replicas,
            create_pending=True,
            create_key_at=job.create_key_at if job.create_pending else key_at,
        )

    def create_refused(self, job: JobRecord) -> bool:
        """A definite answer to create, replayed by Recall for its key: the next uses a new key.

        `job` is the record as the step found it: if an earlier create's answer was lost, this
        answer says nothing of that one, so a create may still have happened and the new key
        cannot replay it: the next create step lists the recording first."""
        return self._move(
            Transition.CREATE_REFUSED,
            job.id,
            create_seq=job.create_seq + 1,
            create_pending=True if job.create_pending else None,
            create_key_at=0 if job.create_pending else None,
        )

    def start_remediation(self, job: JobRecord, refusal: str, version: int) -> bool:
        """Create was refused, maybe at the limit: a remediation round begins. `version` is the
        recording's when refused: if it has not changed when remediation finds a free slot, the
        refusal was not the limit. Rounds count until a create succeeds."""
        return self._move(
            Transition.START_REMEDIATION,
            job.id,
            due_in=self.lease_s,
            refusal=refusal,
            refused_version=version,
            remediations=job.remediations + 1,
        )

    def end_remediation(self, job_id: str) -> bool:
        """A slot is free (freed, or found free): create again."""
        return self._move(Transition.END_REMEDIATION, job_id, due_in=self.lease_s)

    def record_created(self, job_id: str, transcript_id: str, first_poll_s: float) -> State | None:
        """Store the created transcript; returns the job's new state (None when refused)."""
        transition = Transition.RECORD_CREATED
        result = self._run(
            "created",
            job_id,
            [keys.transcript_owner(transcript_id)],
            sources(transition),
            transcript_id,
            first_poll_s,
            self.lease_s,
            *target(transition, AWAITING),
            *target(transition, FETCHING),
            *target(transition, FAILED),
        )
        return State(cast(bytes, result).decode()) if result else None

    def transcript_finished(
        self, job_id: str, transcript_id: str, outcome: EarlyEvent, sub_code: str | None
    ) -> Literal["fetching", "failed", "kept", "ignored"]:
        """Recall says a transcript finished (webhook or poll): fetch it, fail the job, or keep
        the news for the create step when it came before the create answer."""
        finish = Transition.TRANSCRIPT_DONE if outcome == "done" else Transition.TRANSCRIPT_FAILED
        result = self._run(
            "transcript",
            job_id,
            [],
            sources(finish),
            sources(Transition.KEEP_EARLY_EVENT),
            transcript_id,
            outcome,
            sub_code or "unknown",
            self.lease_s,
            *target(finish, FETCHING if outcome == "done" else FAILED),
        )
        return cast(Literal["fetching", "failed", "kept", "ignored"], cast(bytes, result).decode())

    def poll_later(self, job: JobRecord, delay_s: float) -> bool:
        """Still processing: poll again later. A successful poll is progress."""
        return self._move(
            Transition.POLL_LATER, job.id, due_in=delay_s, polls=job.polls + 1, failures=None
        )

    def finish(self, job_id: str) -> bool:
        """The transcript is persisted: the job is done."""
        return self._move(Transition.FINISH, job_id, due_in="never")

    def retry_later(
        self,
        job: JobRecord,
        delay_s: float,
        code: ErrorCode,
        why: str,
        *,
        quota_ticket: str | None = None,
        listing: Listing | None = None,
        count: bool = True,
    ) -> bool:
        """The same step again after `delay_s`, counting one more failure of kind `code` (unless
        it was only a wait for quota); it keeps for that run the quota slot reserved for it and
        the listing it had begun."""
        failures = {**job.failures, code: job.failures.get(code, 0) + 1} if count else None
        return self._move(
            Transition.RETRY_LATER,
            job.id,
            due_in=delay_s,
            failures=failures,
            last_error=why,
            quota_ticket=quota_ticket,
            listing=listing.seen if listing else None,
            listing_next=listing.cursor if listing else None,
            listing_at=listing.started_at if listing else None,
            listing_version=listing.version if listing else None,
        )

    def fail(self, job_id: str, code: ErrorCode, message: str, **extra: Any) -> bool:
        """Fail an unfinished job with a readable error."""
        error = {"code": code, "message": message, **extra}
        return self._move(Transition.FAIL, job_id, due_in="never", error=error)

    def record_archive(self, job_id: str, transcript_id: str) -> bool:
        """Another job's remediation archived this finished job's transcript, and deletes it at
        Recall only if this answers True: a retry of the job then finishes from the archive.
        False while the job is active again (its transcript must stay). With REDIS_MIN_REPLICAS,
        the mark is on that many replicas first (else `NotReplicated`): a failover that forgot
        it would let a retry past Recall's replay window create a second transcript."""
        transition = Transition.RECORD_ARCHIVE
        args = [sources(transition), transcript_id]
        return self._confirmed("archive", job_id, [], *args, replicas=self.min_replicas) is not None

    def add_callback(self, job_id: str, url: str, by: str) -> Added | None:
        """Send the job's news to `url` too (given by `by`): 'added', 'known' (it is already),
        'full' (`by` gave it MAX_CALLBACKS_PER_CALLER already), or None (no such job). Added to
        a finished job, its news goes out again (to the new destination alone: the others have
        theirs). Not a transition; with REDIS_MIN_REPLICAS, on that many replicas first (else
        `NotReplicated`)."""
        finished = ",".join(state for state in State if not state.active)
        added = self._confirmed(
            "add_callback",
            job_id,
            [],
            json.dumps(Destination(url=url, by=by).model_dump()),
            MAX_CALLBACKS_PER_CALLER,
            finished,
            ANONYMOUS,
            replicas=self.min_replicas,
        )
        return cast(Added, cast(bytes, added).decode()) if added else None

    def retry(self, job_id: str) -> Phase | None:
        """Re-run a failed job from the furthest point known, due now: done from the archive,
        a known transcript awaited again, else create (reconciling first when a create may have
        happened). Never a second transcript. Returns the new phase, None when not failed. With
        REDIS_MIN_REPLICAS, on that many replicas first (else `NotReplicated`, and the retry may
        or may not have been applied: the job's state tells)."""
        transition = Transition.RETRY
        args = [
            sources(transition),
            *target(transition, QUEUED),
            *target(transition, AWAITING),
            *target(transition, DONE),
            self.deadline_s,
        ]
        result = self._confirmed("retry", job_id, [], *args, replicas=self.min_replicas)
        return Phase.parse(cast(bytes, result).decode()) if result else None

    # -- sending steps and scheduling --------------------------------------------------------------

    def send(self, messages: list[Message], *, redrive: bool = False) -> list[str]:
        """Queue step messages, each recorded on its job; a job no longer at that step gets
        none, nor (unless `redrive`: the sweeper checked) a job whose message for the step is
        still queued or held by a worker. Returns the task ids sent."""
        args: list[str] = []
        for message in messages:
            args += [
                message.job_id,
                message.step,
                _runs_in(message.step),
                message.task_id,
                message.body,
            ]
        sent = self._run(
            "send",
            "",
            [PIPELINE_QUEUE, keys.SENT_SEQ, keys.KOMBU_UNACKED, keys.SENT_CONSUMED],
            "redrive" if redrive else "new",
            *args,
        )
        return [task_id.decode() for task_id in cast(list[bytes], sent)]

    def consume(self, job_id: str, task_id: str) -> bool:
        """A worker took the step message `task_id`: True if it is the job's current message
        (now taken), False for a stale copy (which must do nothing)."""
        return bool(self._run("consume", job_id, [keys.SENT_CONSUMED], task_id))

    def claim_due(self, limit: int = 200) -> tuple[list[Due], float | None]:
        """Jobs whose time has come and whose step must be sent, each pushed one lease ahead so
        one sweeper takes it, and the seconds until the next due job (None: none). A job past
        its deadline fails here; one whose step still runs, or whose message is still queued,
        is looked at again later."""
        deadline = {
            "code": ErrorCode.DEADLINE_EXCEEDED,
            "message": f"not finished {self.deadline_s:g}s after it started (JOB_DEADLINE_S)",
        }
        flat = cast(
            list[bytes | int],
            self._run(
                "claim",
                "",
                [PIPELINE_QUEUE, keys.KOMBU_UNACKED, keys.SENT_CONSUMED],
                limit,
                self.lease_s,
                keys.LOCK_PREFIX,
                sources(Transition.FAIL),
                *target(Transition.FAIL, FAILED),
                json.dumps(deadline),
            ),
        )
        head, rest = flat[0], cast(list[bytes], flat[1:])
        next_due = None if head == -1 else float(cast(bytes, head))
        due = [
            Due(rest[i].decode(), _step_of(rest[i + 1].decode()), rest[i + 2].decode())
            for i in range(0, len(rest), 3)
        ]
        return due, next_due

    def upgrade(self) -> int:
        """Give jobs written before this release what it reads: their phase (state and step
        then), a deadline and a workspace. Idempotent, and done once per Redis; how many."""
        if self.redis.get(keys.SCHEMA) == SCHEMA.encode():
            return 0
        ids = [m.decode() for m in cast(list[bytes], self.redis.zrange(keys.JOBS, 0, -1))]
        upgraded = 0
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            pipe = self.redis.pipeline(transaction=False)
            for job_id in batch:
                pipe.hmget(keys.job(job_id), "state", "step", "phase", "created_at", "workspace")
            writes = self.redis.pipeline(transaction=False)
            answers = pipe.execute()
            for job_id, (state, step, phase, created, workspace) in zip(
                batch, answers, strict=True
            ):
                if state is None or (phase is not None and workspace is not None):
                    continue
                if workspace is None:
                    writes.hset(keys.job(job_id), "workspace", DEFAULT)
                    writes.zadd(keys.workspace(DEFAULT), {job_id: float(created or 0)})
                if phase is not None:
                    upgraded += 1
                    continue
                current = State(state.decode())
                kept = Step(step.decode()) if current.active and step else None
                deadline = float(created or 0) + self.deadline_s
                key = keys.job(job_id)
                writes.hset(key, mapping={"phase": str(Phase(current, kept))})
                writes.hsetnx(key, "deadline_at", deadline)
                upgraded += 1
            writes.execute()
        self.redis.set(keys.SCHEMA, SCHEMA)
        return upgraded

    def prune_finished(self, retention_s: float, limit: int = 500) -> int:
        """Forget finished jobs older than `retention_s` (their records and index entries; the
        stored transcripts stay); returns how many."""
        return int(
            self._run(
                "prune",
                "",
                [keys.JOBS],
                retention_s,
                limit,
                keys.RECORDING_PREFIX,
                keys.OWNER_PREFIX,
                keys.workspace(""),
                *(state for state in State if not state.active),
            )
        )

    def nudge(self, job_id: str, delay_s: float) -> None:
        """Make the job due within `delay_s` (never later than it already is)."""
        self._run("nudge", job_id, [], delay_s)

    def running(self, job_id: str) -> AbstractContextManager[bool]:
        """Hold the job's lease while one of its steps runs (waiting up to LOCK_WAIT_S for the
        previous step to end); yields False when another step still holds it."""
        return self.leases.hold(keys.job_lock(job_id), LOCK_WAIT_S)

    def recording_lease(self, recording_id: str, wait: bool) -> AbstractContextManager[bool]:
        """Hold the recording's lease while a job creates on it or remediates its limit."""
        return self.leases.hold(keys.recording_lock(recording_id), LOCK_WAIT_S if wait else None)

    def recording_version(self, recording_id: str) -> int:
        """Counts our creates and deletes on the recording that reached Recall and may have
        changed what it holds (a listing is good while the version holds)."""
        return int(cast(bytes | None, self.redis.get(keys.recording_version(recording_id))) or 0)

    def recording_changed(self, recording_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.incr(keys.recording_version(recording_id))
        pipe.expire(keys.recording_version(recording_id), 86400)  # remediations take minutes
        pipe.execute()


def _step_of(phase: str) -> Step:
    step = Phase.parse(phase).step
    if step is None:
        raise ValueError(f"a due job in phase {phase} has no step")
    return step
