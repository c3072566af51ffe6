"""Reading jobs: one record, every record in a state (pages of them: listing.py), and what the
steps ask in passing (who owns a transcript, whether a job is active, the recording's version).
Records are what this returns; the views users see are made where jobs are shown
(tasks/callbacks/views.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

from tasks import keys
from tasks.jobs import history
from tasks.jobs.base import JobStoreBase
from tasks.jobs.record import JobRecord, decode
from tasks.jobs.states import State


class Queries(JobStoreBase):
    """Reads jobs (and keeps the recording version they are read by)."""

    def record(self, job_id: str) -> JobRecord | None:
        return decode(cast(dict[bytes, bytes], self.redis.hgetall(keys.job(job_id))))

    def history(self, job_id: str) -> history.History | None:
        """The job's events, oldest first; None when there is no such job."""
        created, lines = cast(
            list[bytes | None], self.redis.hmget(keys.job(job_id), "created_at", "history")
        )
        if created is None:
            return None
        events = history.decode(float(created), lines.split(b"\n") if lines else [])
        return history.History(job_id=job_id, events=events)

    def owner_of(self, transcript_id: str) -> str | None:
        """The job that owns a transcript, if one of ours does."""
        owner = self.redis.get(keys.transcript_owner(transcript_id))
        return cast(bytes, owner).decode() if owner else None

    def is_active(self, job_id: str) -> bool:
        state = self.redis.hget(keys.job(job_id), "state")
        return state is not None and State(cast(bytes, state).decode()).active

    def records(self, state: State, recording_id: str | None = None) -> Iterator[JobRecord]:
        """Every job in `state` (of one recording), oldest first, read in batches."""
        key = keys.recording(recording_id) if recording_id else keys.state(state)
        ids = [m.decode() for m in cast(list[bytes], self.redis.zrange(key, 0, -1))]
        for start in range(0, len(ids), 500):
            pipe = self.redis.pipeline()
            for job_id in ids[start : start + 500]:
                pipe.hgetall(keys.job(job_id))
            for raw in cast(list[dict[bytes, bytes]], pipe.execute()):
                record = decode(raw)
                if record is not None and record.state == state:
                    yield record

    def recording_version(self, recording_id: str) -> int:
        """Counts our creates and deletes on the recording that reached Recall and may have
        changed what it holds (a listing is good while the version holds)."""
        return int(cast(bytes | None, self.redis.get(keys.recording_version(recording_id))) or 0)

    def recording_changed(self, recording_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.incr(keys.recording_version(recording_id))
        pipe.expire(keys.recording_version(recording_id), 86400)  # remediations take minutes
        pipe.execute()
