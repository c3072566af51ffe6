"""The worker's Celery application: reliability settings for I/O-bound work, and the pipeline's
tasks and sweeper bound to it with their dependencies."""

from __future__ import annotations

from typing import Any, Self

from celery import Celery, bootsteps
from celery.app.amqp import AMQP
from kombu import Connection, Queue

from tasks import celery_tasks
from tasks.callbacks.deliveries import Deliveries
from tasks.callbacks.outbox import Outbox
from tasks.callbacks.send import Sender
from tasks.connection import broker_options, broker_url, redis_client
from tasks.dispatch import Dispatcher
from tasks.inbox import Inbox
from tasks.jobs.store import JobStore
from tasks.metrics import Metrics
from tasks.names import PIPELINE_QUEUE, QUEUES, ROUTES
from tasks.pipeline import Pipeline
from tasks.recalls import recall_clients
from tasks.reconcile import Periodic, reconciliations
from tasks.settings import Settings
from tasks.shares import Shares
from tasks.store import open_store
from worker.deliveries import DeliveryPool
from worker.sweeper import Sweep, sweeper_step

STEP_TIME_LIMIT_S = 1800
RECONNECT = {"interval_start": 0.5, "interval_step": 0.5, "interval_max": 2.0}


class BrokerConnection(Connection):
    """kombu's connection, reconnecting sooner: by default a worker that lost Redis tries again
    after 2, 4, 6... s (up to 30 s apart), so it could come back half a minute after Sentinel
    promoted a replica or Redis restarted; this one tries again at most 2 s apart."""

    def ensure_connection(self, *args: Any, **kwargs: Any) -> Self:
        return super().ensure_connection(*args, **{**RECONNECT, **kwargs})


class BrokerAMQP(AMQP):
    """Celery's broker plumbing, with `BrokerConnection` for every connection it opens."""

    Connection = BrokerConnection


def create_celery(settings: Settings) -> Celery:
    """A Celery app on Redis: late acks, JSON only, prefetch 1, a thread pool for HTTP work."""
    app = Celery(
        "recall_transcribe", broker=broker_url(settings), amqp=BrokerAMQP, set_as_current=True
    )
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        worker_concurrency=16,
        # Task events cost about a tenth of a worker's CPU (BENCHMARKS.md); Flower turns them on
        # while it runs (its `enable_events`), so they are paid only while someone watches.
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits out a Redis outage of any length
        # No task uses an ETA, so the visibility timeout only bounds how long a message held by a
        # dead worker stays invisible; the restore sweep runs often enough to honour it.
        broker_transport_options={
            **broker_options(settings),
            "visibility_timeout": settings.CELERY_VISIBILITY_TIMEOUT_S,
            "unacked_restore_interval": max(1, min(10, settings.CELERY_VISIBILITY_TIMEOUT_S // 10)),
            "unacked_restore_throttle": 1,
        },
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue=PIPELINE_QUEUE,
        task_routes=ROUTES,
        # A step keeps its lease alive while it runs (tasks/jobs/leases.py), so these only stop a
        # step hung past any of the Recall client's own deadlines (prefork pools; threads ignore
        # them).
        task_time_limit=STEP_TIME_LIMIT_S,
        task_soft_time_limit=STEP_TIME_LIMIT_S - 30,
    )
    return app


def create_worker_app(settings: Settings) -> Celery:
    """The Celery app a worker runs: the pipeline's tasks and the sweeper, dependencies built
    once for the process."""
    app = create_celery(settings)
    client = redis_client(settings, patient=True)
    jobs = JobStore.from_settings(client, settings)
    dispatch = Dispatcher.from_settings(jobs, settings)
    inbox = Inbox.from_settings(client, settings)
    metrics = Metrics(client)
    limiters, recalls = recall_clients(settings, client, metrics)
    store = open_store(settings.TRANSCRIPTS_STORE, settings.S3_ENDPOINT_URL)
    shares = Shares(recalls, app.conf.worker_concurrency, settings.WORKSPACE_THREADS)
    pipeline = Pipeline(settings, jobs, recalls, store, dispatch, metrics, shares)
    deliveries = Deliveries.from_settings(client, settings)
    outbox = Outbox(
        jobs, deliveries, settings.callback_urls, settings.CALLBACK_TASK, settings.CALLBACK_QUEUE
    )
    pool = None
    if settings.CALLBACK_SECRET is not None:
        pool = DeliveryPool(
            deliveries, Sender.from_settings(settings), metrics, settings.CALLBACK_THREADS
        )
    sweep = Sweep(
        dispatch,
        jobs,
        inbox,
        outbox,
        pool,
        limiters,
        settings.SWEEP_INTERVAL_S,
        settings.JOB_RETENTION_S,
    )
    if settings.RECONCILE_INTERVAL_S > 0:
        sweep.reconcile = Periodic(
            client,
            reconciliations(settings, dispatch, recalls, metrics),
            settings.RECONCILE_INTERVAL_S,
            settings.RECONCILE_LOOKBACK_S,
            settings.RECONCILE_LEASE_S,
        )
    celery_tasks.register(app, pipeline, inbox, sweep.wake)
    app.steps["worker"].add(sweeper_step(sweep))
    app.steps["worker"].add(shares_step(shares))
    return app


def shares_step(shares: Shares) -> type[bootsteps.Step]:
    """A bootstep telling `shares` the worker's concurrency (`--concurrency` reaches the worker,
    not the app's configuration)."""

    class SharesStep(bootsteps.Step):
        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            shares.threads = worker.concurrency

    return SharesStep
