"""Keeping the job store in shape: jobs written by earlier releases upgraded once per Redis, and
finished jobs forgotten after their retention (the stored transcripts stay)."""

from __future__ import annotations

from typing import cast

from tasks import keys
from tasks.jobs.base import JobStoreBase
from tasks.jobs.states import Phase, State, Step
from tasks.names import DEFAULT

SCHEMA = 4  # 4: listing indexes; 3: a phase, a deadline and a workspace; 1: state and step
BATCH = 500


class Maintenance(JobStoreBase):
    """Upgrades and pruning, run by the worker at start and by the sweeper."""

    def upgrade(self) -> int:
        """Give jobs written before this release what it reads: their phase (state and step
        then), a deadline and a workspace (before schema 3), their listing indexes (before 4).
        Idempotent, and done once per Redis; how many jobs were upgraded (every one written
        before schema 4 enters the indexes)."""
        written = cast(bytes | None, self.redis.get(keys.SCHEMA))
        schema = int(written) if written and written.isdigit() else 0
        if schema >= SCHEMA:
            return 0
        ids = [m.decode() for m in cast(list[bytes], self.redis.zrange(keys.JOBS, 0, -1))]
        upgraded = 0
        for start in range(0, len(ids), BATCH):
            batch = ids[start : start + BATCH]
            if schema < 3:
                self._phases(batch)
            upgraded += int(
                self._run(
                    "reindex", "", [], keys.RECORDING_JOBS_PREFIX, keys.RECORDING_PREFIX, *batch
                )
            )
        self.redis.set(keys.SCHEMA, SCHEMA)
        return upgraded

    def _phases(self, batch: list[str]) -> None:
        """Schema 3 for one batch: phase, deadline and workspace where missing."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in batch:
            pipe.hmget(keys.job(job_id), "state", "step", "phase", "created_at", "workspace")
        writes = self.redis.pipeline(transaction=False)
        for job_id, (state, step, phase, created, workspace) in zip(
            batch, pipe.execute(), strict=True
        ):
            if state is None or (phase is not None and workspace is not None):
                continue
            if workspace is None:
                writes.hset(keys.job(job_id), "workspace", DEFAULT)
                writes.zadd(keys.workspace(DEFAULT), {job_id: float(created or 0)})
            if phase is not None:
                continue
            current = State(state.decode())
            kept = Step(step.decode()) if current.active and step else None
            key = keys.job(job_id)
            writes.hset(key, mapping={"phase": str(Phase(current, kept))})
            writes.hsetnx(key, "deadline_at", float(created or 0) + self.deadline_s)
        writes.execute()

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
                keys.RECORDING_JOBS_PREFIX,
                keys.OWNER_PREFIX,
                keys.workspace(""),
                *(state for state in State if not state.active),
            )
        )
