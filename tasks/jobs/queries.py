"""Reading jobs: one record, every record in a state (pages of them: listing.py), and what the
steps ask in passing (who owns a transcript, whether a job is active, the recording's version).
Records are what this returns; the views users see are made where jobs are shown
(tasks/callbacks/views.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

from tasks import keys
from tasks.jobs import history, indexes
from tasks.jobs.base import JobStoreBase
from tasks.jobs.record import JobRecord, decode, fields
from tasks.jobs.states import State

VERSION_KEPT_S = 86400  # a recording's version: remediations take minutes


class Queries(JobStoreBase):
    """Reads jobs (and keeps the recording version they are read by)."""

    def record(self, job_id: str) -> JobRecord | None:
        return decode(cast(dict[bytes, bytes], self.redis.hgetall(keys.job(job_id))), job_id)

    def history(self, job_id: str) -> history.History | None:
        """The job's events, oldest first; None when there is no such job."""
        raw = fields(cast(dict[bytes, bytes], self.redis.hgetall(keys.job(job_id))))
        if "created_at" not in raw:
            return None
        lines = raw.get("history", "").encode()
        failed = _met(json.loads(raw["error"])) if "error" in raw else None
        created = float(raw["created_at"])
        events = history.decode(created, lines.split(b"\n") if lines else [], failed)
        return history.History(job_id=job_id, events=events)

    def owner_of(self, transcript_id: str) -> str | None:
        """The unfinished job that owns a transcript, if one of ours does (a finished job's
        transcript names it in its metadata, as Recall returns it)."""
        owner = self.redis.get(keys.transcript_owner(transcript_id))
        return cast(bytes, owner).decode() if owner else None

    def is_active(self, job_id: str) -> bool:
        state = self.redis.hget(keys.job(job_id), "state")
        return state is not None and State(cast(bytes, state).decode()).active

    def records(self, state: State, recording_id: str | None = None) -> Iterator[JobRecord]:
        """Every job in `state` (of one recording), read in batches."""
        if recording_id:
            sets = [keys.recording(recording_id)]
        elif state.active:
            sets = [keys.state(state)]
        else:
            sets = indexes.written(self.redis, states=[state])
        ids = [m.decode() for key in sets for m in cast(list[bytes], self.redis.zrange(key, 0, -1))]
        for start in range(0, len(ids), 500):
            pipe = self.redis.pipeline()
            batch = ids[start : start + 500]
            for job_id in batch:
                pipe.hgetall(keys.job(job_id))
            answers = cast(list[dict[bytes, bytes]], pipe.execute())
            for job_id, raw in zip(batch, answers, strict=True):
                record = decode(raw, job_id)
                if record is not None and record.state == state:
                    yield record

    def recording_version(self, recording_id: str) -> int:
        """Counts our creates and deletes on the recording that reached Recall and may have
        changed what it holds (a listing is good while the version holds), from the first time
        it is read: a version is kept only for recordings something compares it on."""
        key = keys.recording_version(recording_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(key, 0, nx=True, ex=VERSION_KEPT_S)
        pipe.get(key)
        return int(cast(list[bytes | None], pipe.execute())[1] or 0)

    def recording_changed(self, recording_id: str) -> None:
        self._run("changed", "", [keys.recording_version(recording_id)], VERSION_KEPT_S)


def _met(error: dict[str, Any]) -> history.EventError:
    """The job's error as its history shows the event that met it (jobs.lua `error_text`)."""
    said = error.get("message") or error.get("sub_code") or ""
    return history.EventError(code=str(error.get("code")), message=history.clean(str(said)))
