"""Keeping the job store in shape: jobs written by earlier releases upgraded once per Redis, and
finished jobs forgotten after their retention (the stored transcripts stay)."""

from __future__ import annotations

from typing import cast

from tasks import keys
from tasks.jobs import indexes
from tasks.jobs.base import JobStoreBase
from tasks.jobs.states import Phase, State, Step
from tasks.names import DEFAULT

SCHEMA = 5  # 5: one listing index per job, finished jobs compacted; 4: listing indexes;
# 3: a phase, a deadline and a workspace; 1: state and step
BATCH = 500
ROLLOUT_S = 3600.0  # a rolling deploy is over this long after the upgrade (repair_after_rollout)
REINDEX_BATCH = 100  # jobs per reindex call: each checks every listing index
PRUNE_READS = 20  # entries a prune call may read per job it may prune (others finished late)
_FINISHED = " ".join(state for state in State if not state.active)


class Maintenance(JobStoreBase):
    """Upgrades and pruning, run by the worker at start and by the sweeper."""

    def upgrade(self) -> int:
        """Give jobs written before this release what it reads: their phase (state and step
        then), a deadline and a workspace (before schema 3), their one listing index (before 5).
        The earlier release's indexes stay until the repair after the rollout (its workers,
        still running, write to them alone), and no job is compacted until then (they read
        jobs whole). Idempotent, and done once per Redis; how many jobs were upgraded (every
        one written before schema 5 moves to the new indexes)."""
        written = cast(bytes | None, self.redis.get(keys.SCHEMA))
        schema = int(written) if written and written.isdigit() else 0
        if schema >= SCHEMA:
            return 0
        ids = self._known()
        if written is not None or ids:  # an earlier release's workers may still run: until the
            self.redis.set(keys.SCHEMA_ROLLOUT, str(self.now()))  # repair, jobs stay whole
        self.redis.delete(keys.SCHEMA_REPAIRED)  # an earlier schema's repair is not this one's
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
        schema 5: by then the rolling deploy is taken to be over (its old workers gone), so
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
        """Repair the listing indexes after a rolling deploy across schema 5, whose earlier
        release's workers moved and submitted jobs in the indexes it kept: every job (and every
        id an index holds of a job gone) is put in its one listing index and taken out of every
        other, a finished job compacted, one job at a time atomically, so it is safe beside
        traffic, and idempotent; the earlier release's indexes are then deleted. It says the
        rollout is over: from here finished jobs are compacted. Returns how many jobs' entries
        were repaired."""
        self.redis.delete(keys.SCHEMA_ROLLOUT)
        ids = self._known()
        repaired = sum(
            self._reindex(ids[start : start + BATCH]) for start in range(0, len(ids), BATCH)
        )
        self._drop_legacy()
        return repaired

    def _known(self) -> list[str]:
        """Every job id an index holds: the listing indexes, the unfinished jobs' state sets,
        and what earlier releases kept (every job, each state's, each workspace's)."""
        sets = [*indexes.written(self.redis), *(keys.state(state) for state in State)]
        sets += self._legacy()
        ids: set[str] = set()
        for key in sets:
            ids.update(m.decode() for m in cast(list[bytes], self.redis.zrange(key, 0, -1)))
        return sorted(ids)

    def _legacy(self) -> list[str]:
        """The keys of indexes earlier releases kept: schema 4's listing indexes, and the
        finished states' sets (by last change)."""
        found = [
            key.decode()
            for pattern in keys.LEGACY_INDEXES
            for key in self.redis.scan_iter(pattern, 1000)
        ]
        return found + [keys.state(state) for state in State if not state.active]

    def _drop_legacy(self) -> None:
        legacy = self._legacy()
        for start in range(0, len(legacy), BATCH):
            self.redis.unlink(*legacy[start : start + BATCH])

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
                    _FINISHED,
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
            if phase is not None:
                continue
            current = State(state.decode())
            kept = Step(step.decode()) if current.active and step else None
            key = keys.job(job_id)
            writes.hset(key, mapping={"phase": str(Phase(current, kept))})
            writes.hsetnx(key, "deadline_at", float(created or 0) + self.deadline_s)
        writes.execute()

    def prune_finished(self, retention_s: float, limit: int = 500) -> int:
        """Forget finished jobs whose last change is older than `retention_s` (their records
        and index entries; the stored transcripts stay); returns how many."""
        finished = indexes.written(self.redis, states=_FINISHED.split())
        if not finished:
            return 0
        return int(
            self._run(
                "prune",
                "",
                finished,
                retention_s,
                limit,
                keys.RECORDING_JOBS_PREFIX,
                _FINISHED,
                limit * PRUNE_READS,
                keys.PRUNE_SKIPPED,
            )
        )
