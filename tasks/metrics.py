"""Fleet-wide metrics: counters every process adds to in Redis, and the Prometheus collector the
receiver's `/metrics` reads them with (one scrape target sees every worker)."""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterator
from typing import cast

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tasks import keys
from tasks.jobs import indexes
from tasks.jobs.errors import ErrorCode
from tasks.jobs.states import State, Step
from tasks.names import DEFAULT

log = logging.getLogger(__name__)

PREFIX = "recall_transcribe"
WEBHOOK_OUTCOMES = (
    "enqueued",
    "duplicate",
    "ignored",
    "unauthorized",
    "malformed",
    "too_large",
    "unavailable",
)
CALLBACK_OUTCOMES = ("delivered", "retried", "refused", "failed")
RECONCILE_OUTCOMES = ("submitted", "known", "transcribed", "unfinished")
STEP_OUTCOMES = ("deferred",)
WEBHOOK_MARK_EVERY_S = 1.0  # the last verified webhook's time is written at most this often
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# A job's duration falls in the least bucket 2^e s (e = 0..17: 1 s to 36 h) that holds it, the
# field `e{e}` of its outcome and workspace (counted by tasks/jobs/jobs.lua), else `inf`.
JOB_BUCKETS = (*((str(float(2**e)), f"e{e}") for e in range(18)), ("+Inf", "inf"))
FINISHED = (State.DONE, State.FAILED)


def labelled(*values: object) -> str:
    """A counter's field: its label values, the workspace last (tasks/workspaces.py)."""
    return "|".join(str(value) for value in values)


class Metrics:
    """Adds to the fleet's counters, for one workspace where one applies; a metric never fails
    what it measures."""

    def __init__(
        self,
        client: redis.Redis,
        workspace: str = DEFAULT,
        webhook_marked: dict[str, float] | None = None,
    ) -> None:
        self._redis = client
        self.workspace = workspace
        # when each workspace's last verified webhook was written (time.monotonic), shared by
        # this object and every one `for_workspace` makes
        self._webhook_marked = {} if webhook_marked is None else webhook_marked

    def for_workspace(self, workspace: str) -> Metrics:
        return Metrics(self._redis, workspace, self._webhook_marked)

    def webhook(self, outcome: str) -> None:
        field = labelled(outcome, self.workspace)
        self._add(lambda pipe: pipe.hincrby(keys.METRIC_WEBHOOKS, field, 1))

    def recall_request(self, endpoint: str, status: int | str) -> None:
        field = labelled(endpoint, status, self.workspace)
        self._add(lambda pipe: pipe.hincrby(keys.METRIC_RECALL, field, 1))

    def callback(self, outcome: str) -> None:
        self._add(lambda pipe: pipe.hincrby(keys.METRIC_CALLBACKS, outcome, 1))

    def rate_limited(self, endpoint: str, seconds: float) -> None:
        field = labelled(endpoint, self.workspace)
        self._add(lambda pipe: pipe.hincrbyfloat(keys.METRIC_RATE_LIMITED, field, seconds))

    def reconciled(self, outcome: str, count: int = 1) -> None:
        """Recordings reconciliation classified (tasks/reconcile/)."""
        field = labelled(outcome, self.workspace)
        self._add(lambda pipe: pipe.hincrby(keys.METRIC_RECONCILED, field, count))

    def step_deferred(self) -> None:
        """A step not run: its workspace had its share of a worker's threads (tasks/shares.py)."""
        field = labelled("deferred", self.workspace)
        self._add(lambda pipe: pipe.hincrby(keys.METRIC_STEPS, field, 1))

    def webhook_verified(self) -> None:
        """A webhook with a good signature came: its time, to the second (written at most once
        a second per app and workspace, so the hot path pays nothing for it)."""
        now = time.monotonic()
        marked = self._webhook_marked
        if now - marked.get(self.workspace, -WEBHOOK_MARK_EVERY_S) < WEBHOOK_MARK_EVERY_S:
            return
        marked[self.workspace] = now
        at = time.time()
        self._add(lambda pipe: pipe.hset(keys.METRIC_LAST_WEBHOOK, self.workspace, at))

    def step(self, step: Step, seconds: float) -> None:
        """One step's duration, into the step's histogram (bucket counts, sum, count)."""
        index = bisect.bisect_left(STEP_BUCKETS, seconds)
        bucket = str(STEP_BUCKETS[index]) if index < len(STEP_BUCKETS) else "+Inf"

        def add(pipe: redis.client.Pipeline) -> None:
            key = keys.metric_step(step)
            pipe.hincrby(key, bucket, 1)
            pipe.hincrbyfloat(key, "sum", seconds)
            pipe.hincrby(key, "count", 1)

        self._add(add)

    def _add(self, write: Callable[[redis.client.Pipeline], object]) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            write(pipe)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("metric not recorded: %s", exc)


class RedisCollector(Collector):
    """Reads the fleet's state and counters from Redis at each scrape."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def collect(self) -> Iterator[Metric]:
        states = indexes.by_state(self._redis)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcard(keys.DUE)
        pipe.hlen(keys.INBOX)
        pipe.hlen(keys.INBOX_DEAD)
        pipe.hgetall(keys.METRIC_WEBHOOKS)
        pipe.hgetall(keys.METRIC_RECALL)
        pipe.hgetall(keys.METRIC_RATE_LIMITED)
        pipe.hgetall(keys.METRIC_CALLBACKS)
        pipe.hgetall(keys.METRIC_RECONCILED)
        pipe.hgetall(keys.METRIC_LAST_WEBHOOK)
        pipe.hgetall(keys.METRIC_JOB_DURATION)
        pipe.hgetall(keys.METRIC_JOB_FAILURES)
        pipe.hgetall(keys.METRIC_STEPS)
        for step in Step:
            pipe.hgetall(keys.metric_step(step))
        answers = pipe.execute()
        due, inbox, dead, webhooks, recall, limited, callbacks, reconciled, last_hook = answers[:9]
        job_durations, job_failures, outcomes = answers[9:12]
        steps = answers[12:]

        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs by state", labels=["state"])
        for state, count in states.items():
            jobs.add_metric([state.value], count)
        yield jobs
        yield GaugeMetricFamily(f"{PREFIX}_due_jobs", "Unfinished jobs in the due-set", value=due)
        yield GaugeMetricFamily(
            f"{PREFIX}_inbox_events", "Accepted webhooks no worker has applied yet", value=inbox
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_inbox_dead_events",
            "Accepted webhooks set aside after INBOX_MAX_DELIVERIES deliveries",
            value=dead,
        )
        yield _by_outcome(
            "webhooks", "Webhooks received, by outcome and workspace", webhooks, WEBHOOK_OUTCOMES
        )
        yield _counter(
            "recall_requests",
            "Calls to Recall's API, by endpoint family, HTTP status and workspace",
            ["endpoint", "status", "workspace"],
            recall,
        )
        yield _counter(
            "rate_limited_seconds",
            "Seconds jobs waited for Recall's quota, by endpoint family and workspace",
            ["endpoint", "workspace"],
            limited,
        )
        sent = CounterMetricFamily(
            f"{PREFIX}_callbacks",
            "Callback attempts, by outcome (retried: failed, another attempt to come; "
            "refused: the address is not one callbacks may reach; failed: the last attempt)",
            labels=["outcome"],
        )
        counted = _decoded(callbacks)
        for outcome in CALLBACK_OUTCOMES:
            sent.add_metric([outcome], float(counted.get(outcome, 0)))
        yield sent
        yield from _reconciliation(reconciled, last_hook)
        yield from _finished_jobs(job_durations, job_failures)
        yield _by_outcome(
            "steps",
            "Steps by outcome and workspace (deferred: not run, the workspace had its share of "
            "a worker's threads)",
            outcomes,
            STEP_OUTCOMES,
        )
        durations = HistogramMetricFamily(
            f"{PREFIX}_step_duration_seconds", "How long each step ran", labels=["step"]
        )
        for step, raw in zip(Step, steps, strict=True):
            fields = _decoded(raw)
            cumulative, buckets = 0, []
            for bound in [*(str(b) for b in STEP_BUCKETS), "+Inf"]:
                cumulative += int(fields.get(bound, 0))
                buckets.append((bound, float(cumulative)))
            durations.add_metric([step.value], buckets, float(fields.get("sum", 0)))
        yield durations


def _finished_jobs(durations: object, failures: object) -> Iterator[Metric]:
    """How long jobs took to their first outcome, and why jobs failed (each time one did)."""
    histogram = HistogramMetricFamily(
        f"{PREFIX}_job_duration_seconds",
        "Seconds from a job's submission to its first finish (done or failed), by workspace and "
        "outcome; a job retried after it failed is not counted again",
        labels=["workspace", "outcome"],
    )
    counts = _decoded(durations)
    workspaces = {field.split("|")[1] for field in counts} | {DEFAULT}
    for workspace in sorted(workspaces):
        for outcome in FINISHED:
            label = f"{outcome}|{workspace}|"
            cumulative, buckets = 0, []
            for bound, field in JOB_BUCKETS:
                cumulative += int(counts.get(label + field, 0))
                buckets.append((bound, float(cumulative)))
            histogram.add_metric(
                [workspace, outcome.value], buckets, float(counts.get(label + "sum", 0))
            )
    yield histogram
    yield _by_outcome(
        "job_failures",
        "Jobs that failed, by error code and workspace (a retried job failing again counts again)",
        failures,
        tuple(ErrorCode),
        label="code",
    )


def _reconciliation(reconciled: object, last_hook: object) -> Iterator[Metric]:
    """Whether webhooks are being lost: what reconciliation found, when a webhook last came."""
    yield _by_outcome(
        "reconciled",
        "Finished recordings reconciliation listed, by outcome (submitted: no webhook had "
        "started its job) and workspace",
        reconciled,
        RECONCILE_OUTCOMES,
    )
    last = GaugeMetricFamily(
        f"{PREFIX}_last_webhook_timestamp_seconds",
        "When the last webhook with a good signature arrived (Unix time; 0: none yet), by "
        "workspace",
        labels=["workspace"],
    )
    seen = _decoded(last_hook)
    for workspace in sorted(set(seen) | {DEFAULT}):  # 0 until one came
        last.add_metric([workspace], float(seen.get(workspace, 0)))
    yield last


def _by_outcome(
    name: str, about: str, raw: object, outcomes: tuple[str, ...], label: str = "outcome"
) -> CounterMetricFamily:
    """A counter by outcome (or another `label`) and workspace, every outcome shown (0 until
    counted)."""
    family = CounterMetricFamily(f"{PREFIX}_{name}", about, labels=[label, "workspace"])
    counts = _by_labels(raw, 2)
    for workspace in sorted({labels[1] for labels in counts} | {DEFAULT}):
        for outcome in outcomes:
            family.add_metric([outcome, workspace], counts.get((outcome, workspace), 0.0))
    return family


def _counter(name: str, about: str, labels: list[str], raw: object) -> CounterMetricFamily:
    """A counter by its labels, from a hash of label values (the workspace last)."""
    family = CounterMetricFamily(f"{PREFIX}_{name}", about, labels=labels)
    for values, count in sorted(_by_labels(raw, len(labels)).items()):
        family.add_metric(list(values), count)
    return family


def _decoded(raw: object) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], raw).items()}


def _by_labels(raw: object, size: int) -> dict[tuple[str, ...], float]:
    """A counter hash by its label values; a field written before workspaces had labels is the
    default workspace's."""
    out: dict[tuple[str, ...], float] = {}
    for field, value in _decoded(raw).items():
        labels = field.split("|")
        labels += [DEFAULT] * (size - len(labels))
        out[tuple(labels[:size])] = out.get(tuple(labels[:size]), 0.0) + float(value)
    return out
