"""Callback deliveries paced per destination, on a real Redis: a busy or failing destination
holds back only its own deliveries."""

from __future__ import annotations

import time

import redis

from tasks.callbacks.deliveries import Deliveries
from tasks.callbacks.model import Delivery, destination

SCHEDULE = [0.0, 0.0, 0.0, 0.0, 0.0]


def deliveries(client: redis.Redis, lease_s: float = 30.0) -> Deliveries:
    return Deliveries(client, SCHEDULE, per_destination=4, keep_s=60, lease_s=lease_s)


def add(store: Deliveries, url: str, count: int, prefix: str) -> list[str]:
    ids = [f"{prefix}-{index}" for index in range(count)]
    for delivery_id in ids:
        store.create(
            Delivery(
                id=delivery_id,
                job_id=delivery_id,
                event_id=f"msg_{delivery_id}",
                url=url,
                destination=destination(url),
                body="{}",
            )
        )
    return ids


def finish(store: Deliveries, delivery_id: str, delivered: bool) -> str | None:
    delivery = store.get(delivery_id)
    assert delivery is not None
    return store.attempted(delivery, delivered, 200 if delivered else 500)


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
