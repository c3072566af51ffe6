"""Fleet-wide pacing against Recall's sliding windows, on a real Redis."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from emulator.quotas import Quotas
from tasks.limiter import DEFAULT_RATES, Family, Limiter, Rate, Slot, parse_rates


def test_rates_parse_any_subset_and_keep_recalls_for_the_rest() -> None:
    rates = parse_rates("list=30/60, create=2/10")
    assert rates is not None
    assert rates[Family.LIST] == Rate(30, 60) and rates[Family.CREATE] == Rate(2, 10)
    assert rates[Family.RETRIEVE] == DEFAULT_RATES[Family.RETRIEVE]
    assert parse_rates("none") is None
    for bad in ("list=60", "fetch=1/1", "list=0/60", "list=5/0"):
        with pytest.raises(ValueError):
            parse_rates(bad)


def test_processes_sharing_a_family_never_exceed_its_window_and_each_get_a_slot(
    rclient: redis.Redis,
) -> None:
    """Four 'workers' (threads with their own clients) take 60 slots of a 20-per-second family;
    Recall's window, fed with each call at its slot time, admits every one."""
    rate = Rate(20, 1.0)
    recall = Quotas({"list": (rate.count, rate.seconds)})
    admitted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        limiter = Limiter(redis.Redis(connection_pool=rclient.connection_pool), {Family.LIST: rate})
        for _ in range(15):
            slot = limiter.acquire(Family.LIST)
            assert slot.reserved
            time.sleep(slot.wait)
            with lock:
                admitted.append(recall.admit("list") is None)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert admitted == [True] * 60
    assert elapsed >= 2.0  # 60 calls at 20 per second, after a burst of 2: no faster


def test_a_429_pauses_the_family_for_everyone_until_its_retry_after(
    rclient: redis.Redis,
) -> None:
    one, other = (Limiter(rclient, dict(DEFAULT_RATES)) for _ in range(2))
    one.pause(Family.RETRIEVE, "", 0.3)
    slot = other.acquire(Family.RETRIEVE)
    assert not slot.reserved and 0.2 < slot.wait <= 0.3
    assert other.acquire(Family.LIST).reserved  # other families go on
    time.sleep(0.31)
    assert other.acquire(Family.RETRIEVE) == Slot(0.0, True)


def test_create_is_paced_per_recording(rclient: redis.Redis) -> None:
    limiter = Limiter(rclient, {Family.CREATE: Rate(1, 60)})
    assert limiter.acquire(Family.CREATE, "r1").wait == 0
    assert limiter.acquire(Family.CREATE, "r2").wait == 0
    assert limiter.acquire(Family.CREATE, "r1").wait > 59
