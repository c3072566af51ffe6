"""Recall's rate limits, enforced as sliding windows with an honest Retry-After.

Per endpoint family: create per recording (Recall: 5/min per bot), retrieve, list (List
Transcripts), delete and recordings (List Recordings) per workspace. A call over its quota is
answered 429 and not counted. `scale` shrinks every window (tests and benchmarks: 1 min -> 10 s
is 1/6) and keeps the counts.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

RECALL_QUOTAS = "create=5/60,retrieve=300/60,list=60/60,delete=60/60,recordings=60/60"
FAMILIES = ("create", "retrieve", "list", "delete", "recordings")


def parse_quotas(text: str) -> dict[str, tuple[int, float]]:
    """`create=5/60,retrieve=300/60,...` (any subset), or `none`: no quotas."""
    if text.strip().lower() == "none":
        return {}
    quotas = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        family, _, rate = part.partition("=")
        count, _, seconds = rate.partition("/")
        if family.strip() not in FAMILIES:
            raise ValueError(f"unknown family in {part!r} (one of {', '.join(FAMILIES)})")
        quotas[family.strip()] = (int(count), float(seconds))
    return quotas


class Quotas:
    """Sliding-window logs per (family, scope)."""

    def __init__(self, quotas: dict[str, tuple[int, float]], scale: float = 1.0) -> None:
        self.limits = {
            family: (count, seconds * scale) for family, (count, seconds) in quotas.items()
        }
        self._calls: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, family: str, scope: str = "") -> float | None:
        """Count the call and return None, or return the seconds until it would be admitted."""
        limit = self.limits.get(family)
        if limit is None:
            return None
        count, window = limit
        now = time.monotonic()
        with self._lock:
            calls = self._calls.setdefault((family, scope), deque())
            while calls and calls[0] <= now - window:
                calls.popleft()
            if len(calls) >= count:
                return calls[0] + window - now
            calls.append(now)
            return None

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()


def scaled(text: str, scale: float) -> str:
    """The quotas `text` with every window times `scale`, as RECALL_RATE_LIMITS reads them."""
    quotas = parse_quotas(text)
    if not quotas:
        return "none"
    return ",".join(f"{f}={count}/{seconds * scale:g}" for f, (count, seconds) in quotas.items())


def retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up (as HTTP says), never 0 while the window is still full."""
    return str(max(1, math.ceil(seconds)))
