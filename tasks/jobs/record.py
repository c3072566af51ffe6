"""A job's record: its Redis hash, typed (what the steps read), the ids jobs are known by, and the
callback URLs a job sends its news to. Users see a record through its view (tasks/jobs/views.py)."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from tasks import limits
from tasks.jobs.states import Phase, State, Step
from tasks.jobs.views import Callback, Job, JobError, Source, iso, redact
from tasks.names import DEFAULT

_DERIVED = uuid.UUID("6f1d7c2e-6a55-4f0c-9d7b-2f3c1e9a8b40")  # keys the webhook path derives
_GIVEN = uuid.UUID("0c3f9a8e-52d1-4b7e-8e9f-4a6d2b1c7e55")  # keys clients give (API, CLI, Celery)
ANONYMOUS = "anonymous"  # who gave a callback URL without an API token (Dispatcher.submit)
EarlyEvent = Literal["done", "failed"]


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


@dataclass(frozen=True)
class Listing:
    """A recording's listing in progress: the transcripts seen and where it goes on."""

    seen: list[dict[str, Any]]
    cursor: str | None  # the next page's URL; None once complete
    started_at: float
    version: int  # the recording's version (our creates and deletes) when it began


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
    source: Source | None = None  # None in records from before it was kept (`started_by`)
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
    deadline_at: float | None = None  # None once finished: a retry sets it again

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
    def started_by(self) -> Source:
        """The job's source; a record from before it was kept has the one its metadata names
        (webhook jobs said `recording.done`), else it came through the API."""
        if self.source is not None:
            return self.source
        named = self.metadata.get("source")
        if named == "recording.done":
            return Source.WEBHOOK
        return Source(named) if named in tuple(Source) else Source.API

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
            source=self.started_by,
            created_at=iso(self.created_at),
            updated_at=iso(self.updated_at),
        )


def fields(raw: dict[bytes, bytes]) -> dict[str, str]:
    """A job's hash as Redis answers it, each value whole: a finished job's hash keeps a value
    over 64 bytes in parts `{name}.0`, `{name}.1`, ... (jobs.lua `compact`)."""
    whole: dict[str, bytes] = {}
    parts: dict[str, dict[int, bytes]] = {}
    for key, value in raw.items():
        name, dot, number = key.decode().rpartition(".")
        if dot and name and number.isdigit():
            parts.setdefault(name, {})[int(number)] = value
        else:
            whole[key.decode()] = value
    for name, pieces in parts.items():
        whole.setdefault(name, b"".join(pieces[n] for n in sorted(pieces)))  # as jobs.lua reads
    return {name: value.decode() for name, value in whole.items()}


def decode(raw: dict[bytes, bytes], job_id: str) -> JobRecord | None:
    """The job `job_id`'s hash as Redis answers it; None for no job. A key no client gave is
    not stored: it is derived again, from the recording and the provider."""
    if not raw:
        return None
    record = {"id": job_id, **fields(raw)}
    if "idempotency_key" not in record and "provider" in record and "recording_id" in record:
        provider = json.loads(record["provider"])
        record["idempotency_key"] = default_idempotency_key(record["recording_id"], provider)
    return JobRecord.model_validate(record)
