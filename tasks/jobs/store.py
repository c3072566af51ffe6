"""Job state in Redis: one hash per job, sorted sets by state, and a due-set that drives every job.

A job id is derived from its idempotency key, so submitting the same key twice finds the same job.
Every transition of the table in tasks/jobs/states.py is one method of `JobStore` and one atomic
Lua command (tasks/jobs/jobs.lua): check the job's phase, write, move the job between the state
sets and in the due-set. Times are Redis's clock. Key names: tasks/keys.py.

`JobStore` is one object composed of its parts, each a mixin over `JobStoreBase` (the client and
the script) in a file of its own: the transitions (`transitions.py`), sending steps and claiming
due jobs (`sending.py`), reading jobs (`queries.py`), pages of them read from indexes
(`listing.py`) and keeping the store in shape (`maintenance.py`). Callers hold one store and
see one API.
"""

from __future__ import annotations

from typing import Protocol

import redis

from tasks.jobs.listing import Listing
from tasks.jobs.maintenance import Maintenance
from tasks.jobs.queries import Queries
from tasks.jobs.sending import Sending
from tasks.jobs.transitions import Transitions


class StoreSettings(Protocol):
    """What the store takes from the settings (tasks/settings.py)."""

    @property
    def JOB_STEP_LEASE_S(self) -> float: ...
    @property
    def JOB_DEADLINE_S(self) -> float: ...
    @property
    def REDIS_MIN_REPLICAS(self) -> int: ...
    @property
    def JOB_HISTORY_MAX(self) -> int: ...


class JobStore(Transitions, Sending, Queries, Listing, Maintenance):
    """Reads jobs and changes them, one method per transition of the table."""

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: StoreSettings) -> JobStore:
        return cls(
            client,
            settings.JOB_STEP_LEASE_S,
            settings.JOB_DEADLINE_S,
            settings.REDIS_MIN_REPLICAS,
            settings.JOB_HISTORY_MAX,
        )
