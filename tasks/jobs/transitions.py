"""The transitions of the table (tasks/jobs/states.py), one method each, each one command of
tasks/jobs/jobs.lua that checks the job's phase before it writes, so a late, duplicated or
out-of-order call changes nothing: what the steps record, and what callers ask of a job (submit,
add a callback URL, retry)."""

from __future__ import annotations

import json
from typing import Any, Literal, cast

from tasks import keys
from tasks.jobs.base import JobStoreBase, fields_arg
from tasks.jobs.errors import ErrorCode
from tasks.jobs.history import SUBMITTED
from tasks.jobs.record import (
    ANONYMOUS,
    Destination,
    EarlyEvent,
    JobRecord,
    Listing,
    default_idempotency_key,
    job_id_for,
)
from tasks.jobs.states import (
    AWAITING,
    DONE,
    FAILED,
    FETCHING,
    QUEUED,
    Phase,
    State,
    Transition,
    sources,
    target,
)
from tasks.jobs.views import Source
from tasks.names import DEFAULT

# callback_url destinations one caller (API token) may give a job. No total per job: a total
# would let callers fill it for one another, and callers are the operator's API_TOKENS, so
# a job holds at most this many per token.
MAX_CALLBACKS_PER_CALLER = 3
Added = Literal["added", "known", "full"]


def _standing_in(source: Source) -> str:
    """Which existing jobs of the recording (same workspace) a submission without a key takes
    instead of creating one (jobs.lua `submit`): automatic submissions never pay twice for a
    recording, whatever provider each was configured with; API and task ones keep their own."""
    if source == Source.RECONCILE:
        return "any"
    if source == Source.WEBHOOK:
        return "automatic"
    return ""


class Transitions(JobStoreBase):
    """One method per transition of the table."""

    def submit(
        self,
        recording_id: str,
        provider: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        workspace: str = DEFAULT,
        source: Source = Source.API,
    ) -> tuple[str, bool]:
        """Create the job for this key in this workspace unless it exists; returns (job id,
        created). Without a key, the job is the recording's (its `recording.done` starts it).
        `source` is kept only by the submission that creates the job. A job no key names,
        started by a webhook or reconciliation, is the recording's own in its workspace: the
        recording's webhook or reconciliation job there stands for it (whatever its provider),
        and reconciliation takes any job of the recording there; checked in the same command.
        With REDIS_MIN_REPLICAS, the job is on that many replicas before this returns (else
        `NotReplicated`): a job the API accepted survives a failover."""
        key = idempotency_key or default_idempotency_key(recording_id, provider)
        job_id = job_id_for(key, given=idempotency_key is not None, workspace=workspace)
        fields = {
            "id": job_id,
            "recording_id": recording_id,
            "workspace": workspace,
            "idempotency_key": key,
            "derived_key": None if idempotency_key else True,  # dropped by the compaction
            "provider": provider,
            "metadata": metadata or {},
            "source": source,
            "callback_urls": [{"url": callback_url, "by": ANONYMOUS}] if callback_url else None,
        }
        created = self._confirmed(
            "submit",
            job_id,
            [keys.recording(recording_id)],
            fields_arg(fields),
            self.lease_s,
            self.deadline_s,
            *[str(QUEUED.state), str(QUEUED)],
            self._event(SUBMITTED),
            _standing_in(source) if idempotency_key is None else "",
            replicas=self.min_replicas,
        )
        if isinstance(created, bytes | str):  # another job of the recording stands for this one
            return created.decode() if isinstance(created, bytes) else created, False
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
            [],
            sources(transition),
            transcript_id,
            first_poll_s,
            self.lease_s,
            *target(transition, AWAITING),
            *target(transition, FETCHING),
            *target(transition, FAILED),
            self._event(transition),
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
            self._event(finish),
            self._event(Transition.KEEP_EARLY_EVENT),
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
        the listing it had begun. The history shows the error, unless only quota was waited for."""
        failures = {**job.failures, code: job.failures.get(code, 0) + 1} if count else None
        return self._move(
            Transition.RETRY_LATER,
            job.id,
            due_in=delay_s,
            met=(code, why) if count else None,
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
        return self._move(Transition.FAIL, job_id, due_in="never", met=(code, message), error=error)

    def record_archive(self, job_id: str, transcript_id: str) -> bool:
        """Another job's remediation archived this finished job's transcript, and deletes it at
        Recall only if this answers True: a retry of the job then finishes from the archive.
        False while the job is active again (its transcript must stay). With REDIS_MIN_REPLICAS,
        the mark is on that many replicas first (else `NotReplicated`): a failover that forgot
        it would let a retry past Recall's replay window create a second transcript."""
        transition = Transition.RECORD_ARCHIVE
        args = [sources(transition), transcript_id, self._event(transition)]
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
            self._event(transition),
        ]
        result = self._confirmed("retry", job_id, [], *args, replicas=self.min_replicas)
        return Phase.parse(cast(bytes, result).decode()) if result else None
