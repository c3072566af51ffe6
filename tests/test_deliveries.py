"""Callback deliveries paced per destination and shared out per client, on a real Redis: a busy
or failing destination, or one client's many, holds back only its own deliveries; and failed
deliveries started again only while their news is current."""

from __future__ import annotations

import time
from typing import cast

import pytest
import redis

from harness import wait_for
from tasks import keys
from tasks.callbacks import model
from tasks.callbacks.deliveries import DEFER_S, RETRY_PAGE, Deliveries
from tasks.callbacks.model import OPERATOR, Delivery, Event, Outcome, destination, event_id
from tasks.callbacks.send import Attempt, Sender
from tasks.jobs.errors import ErrorCode
from tasks.jobs.store import JobStore
from tasks.metrics import Metrics
from worker.deliveries import DeliveryPool

SCHEDULE = [0.0, 0.0, 0.0, 0.0, 0.0]


def deliveries(client: redis.Redis, lease_s: float = 30.0) -> Deliveries:
    return Deliveries(client, SCHEDULE, per_destination=4, keep_s=60, lease_s=lease_s)


def add(store: Deliveries, url: str, count: int, prefix: str) -> list[str]:
    """`count` deliveries to `url`, the operator's."""
    return add_for(store, OPERATOR, [url] * count, prefix)


def finish(store: Deliveries, delivery_id: str, delivered: bool) -> str | None:
    delivery = store.get(delivery_id)
    assert delivery is not None
    outcome = Outcome.DELIVERED if delivered else Outcome.FAILED
    return store.attempted(delivery, outcome, 200 if delivered else 500)


def test_a_backlog_to_one_destination_never_stands_in_front_of_another(
    rclient: redis.Redis,
) -> None:
    store = deliveries(rclient)
    busy = add(store, "https://busy.example/hook", 300, "busy")
    first = store.claim(8)
    assert sorted(first) == sorted(busy[:4])  # four at a time to one destination
    (quiet,) = add(store, "https://quiet.example/hook", 1, "quiet")
    assert store.claim(8) == [quiet]  # at once, though 296 due deliveries came before it
    assert store.claim(8) == []
    assert finish(store, first[0], delivered=True) == "delivered"
    assert store.claim(8) == [busy[4]]  # an attempt there ended: the next one, in order
    for delivery_id in [*first[1:], busy[4]]:
        finish(store, delivery_id, delivered=True)
    assert store.claim(8) == busy[5:9]


def test_a_failing_destination_gets_one_attempt_at_a_time_until_one_succeeds(
    rclient: redis.Redis,
) -> None:
    store = deliveries(rclient)
    dead = add(store, "https://dead.example/hook", 20, "dead")
    first = store.claim(8)
    assert len(first) == 4
    for delivery_id in first:
        assert finish(store, delivery_id, delivered=False) == "retry"
    for _ in range(5):  # probed one at a time, in due order
        (probe,) = store.claim(8)
        assert store.claim(8) == []
        finish(store, probe, delivered=False)
    (probe,) = store.claim(8)
    finish(store, probe, delivered=True)  # back: four at a time again
    assert len(store.claim(8)) == 4
    assert set(dead) >= set(first)


def test_a_destination_whose_attempts_died_with_their_worker_gets_its_backlog_back(
    rclient: redis.Redis,
) -> None:
    store = deliveries(rclient, lease_s=0.3)
    ids = add(store, "https://example.com/hook", 10, "d")
    assert sorted(store.claim(8)) == sorted(ids[:4])
    assert store.claim(8) == []  # the other six parked; no attempt ever reports back
    time.sleep(0.4)
    again = store.claim(8)  # the leases ran out: the longest due go first
    assert sorted(again) == sorted(ids[4:8])


def add_for(store: Deliveries, client: str, urls: list[str], prefix: str) -> list[str]:
    """One delivery to each of `urls`, set by `client` (the owner of an API token)."""
    ids = []
    for index, url in enumerate(urls):
        delivery_id = f"{prefix}-{index}"
        store.create(
            Delivery(
                id=delivery_id,
                job_id=delivery_id,
                event_id=f"msg_{delivery_id}",
                url=url,
                destination=destination(url),
                client=client,
            )
        )
        ids.append(delivery_id)
    return ids


def test_one_clients_many_slow_destinations_hold_only_its_share_of_threads(
    rclient: redis.Redis,
) -> None:
    """As the review reproduced it: forty hosts that never answer, all one client's (a wildcard
    domain). Pacing per destination alone let them take every thread; per client, they take
    CALLBACK_PER_CLIENT, and a healthy delivery behind them goes at once."""
    store = Deliveries(rclient, SCHEDULE, per_destination=4, keep_s=60, per_client=8)
    slow = add_for(store, "greedy", [f"https://h{i}.wild.example/" for i in range(40)], "slow")
    (healthy,) = add_for(store, "patient", ["https://healthy.example/"], "healthy")
    (operator,) = add(store, "https://ops.example/hook", 1, "ops")  # CALLBACK_URLS
    claimed = store.claim(32)
    assert len([i for i in claimed if i in slow]) == 8
    assert healthy in claimed and operator in claimed
    assert store.claim(32) == []  # the other 32 wait aside, out of everyone's way
    ended = next(i for i in claimed if i in slow)
    assert finish(store, ended, delivered=False) == "retry"  # one of the client's ended
    assert store.claim(32) == [slow[8]]


def test_a_deferred_attempt_is_not_counted_nor_marks_its_destination_failing(
    rclient: redis.Redis,
) -> None:
    store = deliveries(rclient)
    (only,) = add(store, "https://slow-dns.example/hook", 1, "d")
    assert store.claim(8) == [only]
    delivery = store.get(only)
    assert delivery is not None
    assert store.attempted(delivery, Outcome.DEFERRED, "deferred: did not resolve") == "deferred"
    after = store.get(only)
    assert after is not None and after.attempts == 0 and after.state == "pending"
    assert not after.failing
    assert rclient.exists(keys.CALLBACKS_FAILING_PREFIX + delivery.destination) == 0
    assert store.claim(8) == []  # again in DEFER_S, not at once
    due = rclient.zscore(keys.CALLBACKS_DUE, only)
    assert due is not None and due - time.time() > DEFER_S - 1


def test_one_clients_4xx_on_a_shared_host_marks_it_failing_for_no_one(
    rclient: redis.Redis,
) -> None:
    """As the review reproduced it: one client's bogus paths on a shared host (Slack's hooks
    answer 404) marked it failing for an hour, so every other client's and the operator's
    deliveries there went one at a time behind that client's retries. A 4xx is the delivery's
    own failure (retried on its schedule); only a host that did not answer well is failing."""
    store = deliveries(rclient)
    bogus = [f"https://hooks.shared.example/services/bogus{i}" for i in range(8)]
    hostile = add_for(store, "hostile", bogus, "h")
    (victim,) = add_for(store, "victim", ["https://hooks.shared.example/services/T0/real"], "v")
    failing = keys.CALLBACKS_FAILING_PREFIX + destination(bogus[0])
    first = store.claim(8)
    assert first == hostile[:4]
    for delivery_id, status in zip(first, [404, 400, 410, 403], strict=True):
        delivery = store.get(delivery_id)
        assert delivery is not None
        assert store.attempted(delivery, Outcome.FAILED, status) == "retry"  # its own schedule
        assert rclient.exists(failing) == 0
    second = store.claim(8)
    assert second == hostile[4:8]  # four at a time still, not one (failing)
    for delivery_id in second:
        finish(store, delivery_id, delivered=True)
    assert victim in store.claim(8)  # not behind the hostile client's retries
    for status in [500, 503, 429, "timeout after 10s", "ConnectionError"]:
        rclient.delete(failing)
        (probe,) = add_for(store, "hostile", ["https://hooks.shared.example/x"], f"p{status}")
        delivery = store.get(probe)
        assert delivery is not None
        store.attempted(delivery, Outcome.FAILED, status)
        assert rclient.exists(failing) == 1, status  # the host itself did not answer well


def failed_delivery(store: Deliveries, jobs: JobStore, job_id: str) -> Delivery:
    """The job's latest finish sent to one receiver that never answered."""
    record = jobs.record(job_id)
    assert record is not None
    event = event_id(job_id, record.attempts, record.state)
    url = "https://down.example/hook"
    delivery = Delivery(
        id=model.delivery_id(event, url),
        job_id=job_id,
        event_id=event,
        url=url,
        destination=destination(url),
    )
    news = Event(event, job_id, record.attempts, record.state, "{}")
    store.send(news, [delivery])
    for _ in SCHEDULE:
        store.attempted(delivery, Outcome.FAILED, 500)
    return delivery


def test_callbacks_retry_failed_revives_only_news_that_is_still_current(
    rclient: redis.Redis,
) -> None:
    """As the review reproduced it: a job failed, its job.failed was never delivered, the job
    was retried and is done. `callbacks retry --failed` must not send job.failed after job.done."""
    jobs = JobStore(rclient, lease_s=5)
    store = deliveries(rclient)
    stale, _ = jobs.submit("r-stale", {"recallai_async": {}})
    current, _ = jobs.submit("r-current", {"recallai_async": {}})
    for job_id in (stale, current):
        jobs.fail(job_id, ErrorCode.TIMEOUT, "too slow")
    old = failed_delivery(store, jobs, stale)
    kept = failed_delivery(store, jobs, current)
    assert jobs.retry(stale) is not None
    jobs.finish(stale)  # done on its second attempt: job.failed is old news
    assert store.retry_failed() == 1
    revived, outdated = store.get(kept.id), store.get(old.id)
    assert revived is not None and revived.state == "pending"
    assert outdated is not None and outdated.state == "failed"
    assert rclient.zcard(keys.CALLBACKS_FAILED) == 0


def test_the_failed_set_is_read_a_page_at_a_time_and_forgets_what_expired(
    rclient: redis.Redis,
) -> None:
    store = deliveries(rclient)
    many = {f"gone-{i}": time.time() - 10 for i in range(1200)}  # hashes already expired
    rclient.zadd(keys.CALLBACKS_FAILED, many)
    looked = store._run(
        "retry",
        [keys.CALLBACKS_FAILED],
        keys.CALLBACK_PREFIX,
        keys.CALLBACK_EVENT_PREFIX,
        keys.JOB_PREFIX,
        RETRY_PAGE,
    )
    assert looked == [0, RETRY_PAGE]  # one command reads one page
    assert rclient.zcard(keys.CALLBACKS_FAILED) == 1200 - RETRY_PAGE
    assert store.retry_failed() == 0 and rclient.zcard(keys.CALLBACKS_FAILED) == 0
    rclient.zadd(keys.CALLBACKS_FAILED, {"ancient": time.time() - 120})  # past keep_s (60)
    (fresh,) = add(store, "https://down.example/hook", 1, "fresh")
    for _ in SCHEDULE:
        finish(store, fresh, delivered=False)
    assert [m.decode() for m in rclient.zrange(keys.CALLBACKS_FAILED, 0, -1)] == [fresh]


class Unresolved:
    """A sender whose every name is still resolving: each attempt is put off."""

    def attempt(self, delivery: Delivery) -> Attempt:
        return Attempt(Outcome.DEFERRED, "deferred: slow.example did not resolve within 5 s")


def test_the_worker_pool_records_a_deferral_as_no_attempt(
    rclient: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = deliveries(rclient)
    (only,) = add(store, "https://slow.example/hook", 1, "d")
    pool = DeliveryPool(store, cast(Sender, Unresolved()), Metrics(rclient), threads=2)
    try:
        assert pool.fill() == 1
        wait_for(lambda: rclient.hget(keys.callback(only), "last_status"), 5, what="recorded")
    finally:
        pool.stop()
    delivery = store.get(only)
    assert delivery is not None and (delivery.state, delivery.attempts) == ("pending", 0)
    assert "unexpected error" not in caplog.text
    assert rclient.hgetall(keys.METRIC_CALLBACKS) == {}  # no attempt to count
