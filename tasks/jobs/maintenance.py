"""Keeping the job store in shape: jobs written by earlier releases upgraded once per Redis, and
finished jobs forgotten after their retention (the stored transcripts stay)."""

from __future__ import annotations

from typing import cast

from tasks import keys
from tasks.jobs.base import JobStoreBase
from tasks.jobs.errors import ErrorCode
from tasks.jobs.states import Phase, State, Step
from tasks.names import DEFAULT

SCHEMA = 4  # 4: listing indexes; 3: a phase, a deadline and a workspace; 1: state and step
BATCH = 500
ROLLOUT_S = 3600.0  # a rolling deploy is over this long after the upgrade (repair_after_rollout)
REINDEX_BATCH = 100  # jobs per reindex call: each checks every state's and code's index
_STATES = " ".join(State)
_CODES = " ".join(ErrorCode)


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
            upgraded += self._reindex(batch)
        self.redis.set(keys.SCHEMA, SCHEMA)
        self.redis.set(keys.SCHEMA_AT, self.now())
        return upgraded

    def repair_after_rollout(self, grace_s: float = ROLLOUT_S) -> int | None:
        """`reindex` once per Redis, by one worker, `grace_s` after this release's upgrade wrote
        schema 4: by then the rolling deploy is taken to be over (its old workers gone), so
        what they moved or submitted after the upgrade is listed again. None until then, when
        another worker has it, or when the schema was written without its time; else how many
        jobs were repaired. `recall-transcribe jobs reindex` does the same on demand."""
        at = cast(bytes | None, self.redis.get(keys.SCHEMA_AT))
        if at is None or self.now() - float(at) < grace_s:
            return None
        if not self.redis.set(keys.SCHEMA_REPAIRED, str(self.now()), nx=True):
            return None
        return self.reindex()

    def reindex(self) -> int:
        """Repair the listing indexes after a rolling deploy across schema 4, whose earlier
        release's workers moved and submitted jobs without them: every job (and every id an
        index holds of a job gone) is put in its state's and error code's index and taken out
        of every other, one job at a time atomically, so it is safe beside traffic, and
        idempotent. Returns how many jobs' entries were repaired."""
        ids: set[str] = set()
        walked = [keys.JOBS, *(keys.state_index(state) for state in State)]
        walked += [keys.error_index(state, code) for state in State for code in ErrorCode]
        for key in walked:
            ids.update(m.decode() for m in cast(list[bytes], self.redis.zrange(key, 0, -1)))
        ordered = sorted(ids)
        return sum(
            self._reindex(ordered[start : start + BATCH]) for start in range(0, len(ordered), BATCH)
        )

    def _reindex(self, batch: list[str]) -> int:
        """The `reindex` command over `batch`, REINDEX_BATCH jobs a call."""
        repaired = 0
        for start in range(0, len(batch), REINDEX_BATCH):
            repaired += int(
                self._run(
                    "reindex",
                    "",
                    [],
                    keys.RECORDING_JOBS_PREFIX,
                    keys.RECORDING_PREFIX,
                    keys.workspace(""),
                    _STATES,
                    _CODES,
                    *batch[start : start + REINDEX_BATCH],
                )
            )
        return repaired

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
                _STATES,
                *(state for state in State if not state.active),
            )
        )
