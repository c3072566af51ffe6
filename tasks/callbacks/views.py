"""Jobs as users see them (the jobs API and the CLI): each job's record joined with the state of
its callbacks' deliveries, read in one round trip. The join is made here, where jobs are shown,
so that the job store knows nothing of callbacks."""

from __future__ import annotations

from collections.abc import Sequence

from tasks.callbacks.deliveries import views
from tasks.jobs.record import JobRecord
from tasks.jobs.store import JobStore
from tasks.jobs.views import Job


def job_views(jobs: JobStore, records: Sequence[JobRecord]) -> list[Job]:
    """The jobs of `records` as users see them, in the same order."""
    deliveries = views(jobs.redis, [record.callbacks for record in records])
    return [
        record.view([delivery.view() for delivery in found])
        for record, found in zip(records, deliveries, strict=True)
    ]


def job_view(jobs: JobStore, job_id: str) -> Job | None:
    """One job as users see it; None when there is no such job."""
    record = jobs.record(job_id)
    return job_views(jobs, [record])[0] if record else None
