"""The news of finished jobs, sent on: one event per finish, a delivery per destination, and the
Celery callback. Working on an entry twice (a sweeper that died half way, or a destination added
after the job finished, which puts the entry back) makes nothing twice: deliveries are keyed by
event and destination, and the event's Celery message goes out with the event, once."""

from __future__ import annotations

import json
import logging

from tasks.callbacks.deliveries import Deliveries
from tasks.callbacks.model import (
    OPERATOR,
    Delivery,
    Event,
    delivery_id,
    destination,
    event_id,
    task_id,
)
from tasks.jobs.record import JobRecord
from tasks.jobs.store import JobStore
from tasks.jobs.views import iso
from tasks.messages import task_message

log = logging.getLogger(__name__)


class Outbox:
    """Turns every finished job into its callbacks."""

    def __init__(
        self,
        jobs: JobStore,
        deliveries: Deliveries,
        urls: list[str],
        callback_task: str | None,
        callback_queue: str,
    ) -> None:
        self._jobs = jobs
        self._deliveries = deliveries
        self._urls = urls
        self._task = callback_task
        self._queue = callback_queue

    def send_on(self, limit: int = 100) -> int:
        """Send on the news of the jobs that finished since; how many."""
        taken = self._deliveries.take_outbox(limit)
        for job_id, attempt in taken:
            try:
                self._send_on(job_id, attempt)
            except (ValueError, TypeError, RecursionError):  # one bad job holds up no other
                log.exception("job %s: its callbacks could not be made; tried again later", job_id)
        return len(taken)

    def _send_on(self, job_id: str, attempt: int) -> None:
        record = self._jobs.record(job_id)
        # Retried since (a later finish will have its own news), or forgotten: nothing to say.
        if record is not None and not record.state.active and record.attempts == attempt:
            self._send(record)
        self._deliveries.sent_on(job_id, attempt)

    def _send(self, record: JobRecord) -> None:
        event = event_id(record.id, record.attempts, record.state)
        # The job as the jobs API shows it, but for its callbacks and callback URL: the
        # destinations' URLs (which may carry tokens) are not told to each other.
        job = record.view().model_dump(mode="json", exclude={"callbacks", "callback_url"})
        body = json.dumps(
            {"type": f"job.{record.state}", "timestamp": iso(record.updated_at), "data": job}
        )
        owners = {url: OPERATOR for url in self._urls}
        for mine in record.destinations:
            owners.setdefault(mine.url, mine.by)
        deliveries = []
        for url, client in owners.items():
            try:
                where = destination(url)
            except ValueError:  # checked where it was given; one bad URL holds up no other
                log.error("job %s: a callback URL that is not one was skipped", record.id)
                continue
            deliveries.append(
                Delivery(
                    id=delivery_id(event, url),
                    job_id=record.id,
                    event_id=event,
                    url=url,
                    destination=where,
                    client=client,
                )
            )
        task = None
        if self._task:
            message, _ = task_message(self._task, [job], self._queue, task_id=task_id(event))
            task = (self._queue, message)
        if deliveries or task:
            news = Event(event, record.id, record.attempts, record.state, body)
            self._deliveries.send(news, deliveries, task)
