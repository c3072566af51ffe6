"""Choosing the fleet-wide limiter by measurement: ours (a sliding window with reservations)
against the `limits` library's Redis moving window, each pacing threads that call a Recall-like
sliding window.

Every call reaches "Recall" after a random network delay (0 to JITTER_S), as real calls do; a call
Recall refuses (429) is counted and, after its Retry-After, made again. Reported per strategy: the
time for all calls against the bound the quota implies (the k-th call no earlier than
floor(k / COUNT) windows in), the share refused, and Redis round trips per call.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from emulator.quotas import Quotas
from harness import start_redis
from tasks.recall.client import INLINE_WAIT_S
from tasks.recall.limiter import Family, Limiter, Rate

COUNT, WINDOW_S = 60, 2.0  # Recall's List quota, its minute scaled to 2 s
JITTER_S = 0.05
THREADS = 8

Acquire = Callable[[], float]  # seconds to wait before calling (0: go); may be called again


def _ours(client: redis.Redis) -> tuple[Acquire, bool]:
    limiter = Limiter(client, {Family.LIST: Rate(COUNT, WINDOW_S)}, INLINE_WAIT_S)

    def acquire() -> float:
        return limiter.acquire(Family.LIST).wait

    return acquire, True  # a slot is reserved: call after the wait, no second acquire


def _moving_window(client: redis.Redis, url: str) -> tuple[Acquire, bool]:
    from limits import RateLimitItemPerSecond, storage, strategies

    limiter = strategies.MovingWindowRateLimiter(storage.storage_from_string(url))
    item = RateLimitItemPerSecond(COUNT, int(WINDOW_S))
    key = f"bench-{time.monotonic()}"

    def acquire() -> float:
        if limiter.hit(item, key):
            return 0.0
        return max(0.01, limiter.get_window_stats(item, key).reset_time - time.time())

    return acquire, False  # nothing reserved: wait, then try to acquire again


def _run(acquire: Acquire, reserved: bool, calls: int, rounds: list[int]) -> dict[str, Any]:
    recall = Quotas({"list": (COUNT, WINDOW_S)})
    left = [calls]
    refused = [0]
    lock = threading.Lock()
    rng = random.Random(7)

    def worker() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            while True:
                rounds[0] += 1
                wait = acquire()
                if wait == 0 or reserved:
                    break
                time.sleep(wait)
            time.sleep(wait)
            while True:
                time.sleep(rng.uniform(0, JITTER_S))
                retry_after = recall.admit("list")
                if retry_after is None:
                    break
                with lock:
                    refused[0] += 1
                time.sleep(retry_after)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    seconds = time.monotonic() - started
    bound = ((calls - 1) // COUNT) * WINDOW_S  # the k-th call: floor(k / COUNT) windows in
    return {
        "calls": calls,
        "seconds": round(seconds, 2),
        "x bound": round(seconds / bound, 2) if bound else None,
        "refused (429) share": round(refused[0] / (calls + refused[0]), 4),
        "acquires per call": round(rounds[0] / calls, 2),
    }


def compare(workdir: Path, calls: int) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    proc, url = start_redis(workdir)
    try:
        client = redis.Redis.from_url(url)
        results = {}
        strategies: dict[str, Callable[[], tuple[Acquire, bool]]] = {
            "ours: sliding window, reservations": lambda: _ours(client),
            "limits: moving window": lambda: _moving_window(client, url),
        }
        for name, make in strategies.items():
            client.flushall()
            acquire, reserved = make()
            results[name] = _run(acquire, reserved, calls, [0])
        return results
    finally:
        proc.stop()
