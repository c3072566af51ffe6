"""The worker's callback deliveries: a few threads of their own (CALLBACK_THREADS), never a Celery
slot, so pipeline steps never wait behind a slow receiver, nor callbacks behind a backlog.

Each thread, when its attempt is done, claims the next due delivery itself, so the pool stays busy
between two sweeps; the sweeper fills it on every tick. Claims are atomic in Redis and paced per
destination and per client (tasks/callbacks/deliveries.py), so the pools of many workers share
the work and one client's slow destinations, however many, hold at most CALLBACK_PER_CLIENT
threads.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import redis

from tasks.callbacks.deliveries import Deliveries
from tasks.callbacks.send import Sender
from tasks.jobs.views import CallbackState
from tasks.metrics import Metrics

log = logging.getLogger(__name__)
METRIC_OUTCOMES = {"delivered": "delivered", "retry": "retried", "failed": "failed"}


class DeliveryPool:
    """Attempts due deliveries on `threads` threads."""

    def __init__(
        self, deliveries: Deliveries, sender: Sender, metrics: Metrics | None, threads: int
    ) -> None:
        self._deliveries = deliveries
        self._sender = sender
        self._metrics = metrics
        self._threads = threads
        self._busy = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="callback")

    def fill(self) -> int:
        """Claim as many due deliveries as there are idle threads, and start them."""
        with self._lock:
            free = self._threads - self._busy
            ids = self._deliveries.claim(free)
            self._busy += len(ids)
        for delivery_id in ids:
            self._executor.submit(self._deliver, delivery_id)
        return len(ids)

    def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, delivery_id: str) -> None:
        try:
            self._attempt(delivery_id)
        except redis.RedisError as exc:  # the lease runs out and the attempt is made again
            log.warning("callback %s: %s", delivery_id, exc)
        except Exception:  # a bug must not kill the thread; the lease re-drives the delivery
            log.exception("callback %s: unexpected error", delivery_id)
        finally:
            with self._lock:
                self._busy -= 1
        try:
            self.fill()
        except redis.RedisError as exc:
            log.warning("callbacks: %s", exc)

    def _attempt(self, delivery_id: str) -> None:
        delivery = self._deliveries.get(delivery_id)
        if delivery is None or delivery.state != CallbackState.PENDING:
            return
        attempt = self._sender.attempt(delivery)
        outcome = self._deliveries.attempted(delivery, attempt.outcome, attempt.status)
        if outcome is None:
            return
        label = METRIC_OUTCOMES.get(outcome)  # none for a deferral: no attempt was made
        if attempt.refused and outcome == "retry":
            label = "refused"
        if self._metrics is not None and label is not None:
            self._metrics.callback(label)
        log.info(
            "callback %s to %s for job %s: %s (%s)",
            delivery.event_id,
            delivery.destination,
            delivery.job_id,
            outcome,
            attempt.status,
            extra={"job_id": delivery.job_id, "outcome": outcome},
        )
