"""Fleet-wide pacing against Recall's sliding windows, on a real Redis."""

from __future__ import annotations

import math
import random
import threading
import time

import pytest
import redis

from emulator.quotas import Quotas
from tasks import keys
from tasks.recall.limiter import (
    DEFAULT_RATES,
    Family,
    Limiter,
    Rate,
    Slot,
    Ticket,
    parse_rates,
)

# Timing-sensitive (their windows and rates are measured): one xdist worker runs them in turn.
pytestmark = pytest.mark.xdist_group("timing")

INLINE_S = 0.25


def limiter(client: redis.Redis, rates: dict[Family, Rate] | None = None) -> Limiter:
    return Limiter(client, rates or dict(DEFAULT_RATES), INLINE_S)


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
    Recall's window, fed with each call at its slot time (on Redis's clock, as the slot says:
    how late a busy machine wakes a thread is not the limiter's arithmetic), admits every one."""
    rate = Rate(20, 1.0)
    slots: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = limiter(redis.Redis(connection_pool=rclient.connection_pool), {Family.LIST: rate})
        for _ in range(15):
            slot = mine.acquire(Family.LIST)
            assert slot.ticket is not None
            with lock:
                slots.append(int(slot.ticket.member.split(":")[0]) / 1000)
            time.sleep(slot.wait)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    slots.sort()
    in_window = [sum(1 for t in slots if at - rate.seconds < t <= at) for at in slots]
    assert len(slots) == 60 and max(in_window) <= rate.count
    assert elapsed >= 2.0  # 60 calls at 20 per second, after a burst of 2: no faster


def test_calls_whose_jobs_come_back_late_still_fit_recalls_window(rclient: redis.Redis) -> None:
    """Jobs holding tickets come back up to 0.3 s after their slot (a sweeper's tick, a queue):
    each slot is counted when its call really goes, so Recall admits every call."""
    rate = Rate(5, 0.5)
    recall = Quotas({"retrieve": (rate.count, rate.seconds)})
    pacing = limiter(rclient, {Family.RETRIEVE: rate})
    rng = random.Random(7)
    refused, lock = [], threading.Lock()

    def job() -> None:
        slot = pacing.acquire(Family.RETRIEVE)
        while slot.wait > INLINE_S:  # rescheduled; back late
            assert slot.ticket is not None
            time.sleep(slot.wait + rng.uniform(0, 0.3))
            slot = pacing.redeem(slot.ticket)
        time.sleep(slot.wait)
        with lock:
            refused.append(recall.admit("retrieve"))

    threads = [threading.Thread(target=job) for _ in range(40)]
    for thread in threads:
        thread.start()
        time.sleep(0.01)
    for thread in threads:
        thread.join(60)
    assert len(refused) == 40 and refused == [None] * 40


def test_a_late_call_never_squeezes_in_before_calls_already_placed(
    rclient: redis.Redis,
) -> None:
    """2 per 0.5 s: A and B go now, C and D hold slots at 0.5 s, E and F at 1 s. E and F come
    back a little early and are placed at 1 s; C comes back late, at 0.9 s. The window ending
    at C has room (D alone), the one ending at F would not (C, E, F): C goes after them.
    Recall, fed each call when it goes, admits all six."""
    rate = Rate(2, 0.5)
    recall = Quotas({"retrieve": (rate.count, rate.seconds)})
    pacing = limiter(rclient, {Family.RETRIEVE: rate})
    slots = [pacing.acquire(Family.RETRIEVE) for _ in range(6)]
    assert [slot.wait for slot in slots] == pytest.approx(
        [0, 0, 0.525, 0.525, 1.05, 1.05], abs=0.02
    )
    refused, lock = [], threading.Lock()

    def job(slot: Slot, shift: float) -> None:
        """Comes back `shift` seconds after its slot (before it if negative), then calls."""
        if slot.wait > 0:
            assert slot.ticket is not None
            time.sleep(slot.wait + shift)
            slot = pacing.redeem(slot.ticket)
            while slot.wait > INLINE_S:
                assert slot.ticket is not None
                time.sleep(slot.wait)
                slot = pacing.redeem(slot.ticket)
            time.sleep(slot.wait)
        with lock:
            refused.append(recall.admit("retrieve"))

    shifts = [0, 0, 0.375, 0, -0.2, -0.2]
    threads = [threading.Thread(target=job, args=pair) for pair in zip(slots, shifts, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert refused == [None] * 6


def test_a_429_pauses_the_family_for_everyone_until_its_retry_after(
    rclient: redis.Redis,
) -> None:
    one, other = limiter(rclient), limiter(rclient)
    one.pause(Family.RETRIEVE, "", 0.3)
    slot = other.acquire(Family.RETRIEVE)
    assert slot.ticket is None and 0.2 < slot.wait <= 0.3
    assert other.acquire(Family.LIST).ticket is not None  # other families go on
    time.sleep(0.31)
    slot = other.acquire(Family.RETRIEVE)
    assert slot.wait == 0 and slot.ticket is not None


def test_a_ticket_holder_waits_out_a_pause_and_gives_its_slot_back(rclient: redis.Redis) -> None:
    pacing = limiter(rclient, {Family.LIST: Rate(1, 0.2)})
    assert pacing.acquire(Family.LIST).wait == 0
    later = pacing.acquire(Family.LIST)
    assert later.ticket is not None and later.wait > 0.15
    pacing.pause(Family.LIST, "", 30)  # another worker got a 429
    time.sleep(later.wait)
    slot = pacing.redeem(later.ticket)
    assert slot.ticket is None and slot.wait > 29  # no call into the pause
    assert rclient.zscore(keys.rate("default", Family.LIST), later.ticket.member) is None


def test_a_shorter_retry_after_never_cuts_a_longer_pause(rclient: redis.Redis) -> None:
    one, other = limiter(rclient), limiter(rclient)
    one.pause(Family.LIST, "", 58)
    other.pause(Family.LIST, "", 1)
    assert one.acquire(Family.LIST).wait > 57


def test_tickets_are_judged_on_redis_clock_not_the_hosts(
    rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    pacing = limiter(rclient, {Family.LIST: Rate(1, 2.0)})
    pacing.acquire(Family.LIST)
    slot = pacing.acquire(Family.LIST)
    assert slot.ticket is not None and slot.wait > 1.9
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # a host whose clock runs ahead
    again = pacing.redeem(slot.ticket)
    assert again.ticket == slot.ticket and again.wait > 1.8  # still not its time


def test_a_slot_no_call_used_is_given_back(rclient: redis.Redis) -> None:
    pacing = limiter(rclient, {Family.CREATE: Rate(1, 60)})
    pacing.acquire(Family.CREATE, "r1")
    reserved = pacing.acquire(Family.CREATE, "r1")
    assert reserved.ticket is not None and reserved.wait > 59
    pacing.release(reserved.ticket)
    assert pacing.acquire(Family.CREATE, "r1").wait == pytest.approx(reserved.wait, abs=0.5)
    assert Ticket.load(reserved.ticket.dump()) == reserved.ticket


def test_create_is_paced_per_recording(rclient: redis.Redis) -> None:
    pacing = limiter(rclient, {Family.CREATE: Rate(1, 60)})
    assert pacing.acquire(Family.CREATE, "r1").wait == 0
    assert pacing.acquire(Family.CREATE, "r2").wait == 0
    assert pacing.acquire(Family.CREATE, "r1").wait > 59


def pace(client: redis.Redis, family: Family) -> tuple[int, int] | None:
    """The learned (count, window ms) of a family, None when it has learned nothing."""
    learned = client.hmget(keys.rate_pace("default", family), "count", "window")
    return None if learned[0] is None else (int(learned[0]), int(learned[1]))


def test_recall_throttling_below_the_declared_rate_teaches_the_fleet_its_pace(
    rclient: redis.Redis,
) -> None:
    """Declared 40 per 2 s, Recall gives 4 per 0.5 s (another application on the key): a burst
    of 8 meets four 429s, each telling the fleet what Recall took before it; from then on the
    calls keep to Recall's pace and Recall refuses none, whatever Recall's window is."""
    recall = Quotas({"retrieve": (4, 0.5)})
    pacing = limiter(rclient, {Family.RETRIEVE: Rate(40, 2.0)})

    def call(slot: Slot) -> float | None:
        time.sleep(slot.wait)
        wait = recall.admit("retrieve")
        if wait is not None:  # Recall's 429, its Retry-After up to the next tenth of a second
            pacing.pause(Family.RETRIEVE, "", math.ceil(wait * 10) / 10, slot.ticket)
        return wait

    burst = [pacing.acquire(Family.RETRIEVE) for _ in range(8)]
    refused = [slot for slot in burst if call(slot) is not None]
    assert len(refused) == 4
    learned = pace(rclient, Family.RETRIEVE)
    assert learned is not None and learned[0] == 4 and 500 <= learned[1] <= 700
    for slot in refused:  # Recall never counted them: gone from our window too
        assert slot.ticket is not None
        assert rclient.zscore(keys.rate("default", Family.RETRIEVE), slot.ticket.member) is None

    time.sleep(0.6)  # the pause
    later: list[float | None] = []
    for _ in range(16):
        slot = pacing.acquire(Family.RETRIEVE)
        assert slot.ticket is not None
        while slot.wait > INLINE_S:  # rescheduled; back at its slot
            time.sleep(slot.wait)
            slot = pacing.redeem(slot.ticket)
            assert slot.ticket is not None
        later.append(call(slot))
    assert later == [None] * 16
    assert pace(rclient, Family.RETRIEVE) == learned  # no 429, no recovery yet (5 windows)


def test_a_lone_429_on_a_quiet_family_pauses_it_and_teaches_no_pace(rclient: redis.Redis) -> None:
    """One call, one 429 (another application's burst on the key, say): the family waits out the
    Retry-After and goes on at the declared rate. Learning from it would mean one call per
    Retry-After for hours."""
    pacing = limiter(rclient, {Family.RETRIEVE: Rate(300, 60)})
    slot = pacing.acquire(Family.RETRIEVE)
    pacing.pause(Family.RETRIEVE, "", 0.05, slot.ticket)
    assert pace(rclient, Family.RETRIEVE) is None
    time.sleep(0.06)
    waits = [pacing.acquire(Family.RETRIEVE).wait for _ in range(20)]
    assert max(waits) == 0


def test_later_429s_lower_the_learned_count_and_keep_its_window(rclient: redis.Redis) -> None:
    """Never more calls at once than Recall took, never faster than declared; a 429 of the same
    burst, with more calls ahead, changes nothing; the first 429 after the pause ended (a probe
    one call too many) takes one call off."""
    pacing = limiter(rclient, {Family.LIST: Rate(60, 60)})
    slots = [pacing.acquire(Family.LIST) for _ in range(6)]
    pacing.pause(Family.LIST, "", 0.001)  # a first 429: remembered, nothing learned yet
    pacing.pause(Family.LIST, "", 0.01, slots[3].ticket)  # Recall took three before it
    assert pace(rclient, Family.LIST) == (3, 3 * 60_500 // 60)  # 3 calls, at the declared rate
    pacing.pause(Family.LIST, "", 0.01, slots[5].ticket)
    assert pace(rclient, Family.LIST) == (3, 3025)
    time.sleep(0.02)
    pacing.pause(Family.LIST, "", 0.01)  # its call unknown: the four calls made count as ahead
    assert pace(rclient, Family.LIST) == (2, 3025)
    assert 0 < rclient.pttl(keys.rate_pace("default", Family.LIST)) <= 50 * 60_500


def test_the_learned_pace_recovers_towards_the_declared_rate(rclient: redis.Redis) -> None:
    """Every 5 declared windows without a 429, a tenth more (at least one call), until the
    declared rate: then the family is paced by the declared window alone again."""
    rate = Rate(10, 0.2)  # windows of 210 ms with the margin: 5 of them, 1.05 s
    pacing = limiter(rclient, {Family.LIST: rate})
    slots = [pacing.acquire(Family.LIST) for _ in range(3)]
    pacing.pause(Family.LIST, "", 0.001)  # a first 429: remembered, nothing learned yet
    pacing.pause(Family.LIST, "", 0.09, slots[2].ticket)
    first = pace(rclient, Family.LIST)
    assert first is not None and first[0] == 2
    time.sleep(0.15)
    pacing.acquire(Family.LIST)
    assert pace(rclient, Family.LIST) == first  # too soon to grow
    counts = []
    for _ in range(4):
        time.sleep(1.1)
        pacing.acquire(Family.LIST)
        learned = pace(rclient, Family.LIST)
        counts.append(learned and learned[0])
        if learned is None:
            break
    # 2 calls per ~96 ms (Retry-After, the margin); 5 in that long reach the declared rate.
    assert counts == [3, 4, None]
