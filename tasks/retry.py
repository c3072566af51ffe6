"""The retry policy, declared once: exponential backoff, equal jitter, a cap, Retry-After."""

from __future__ import annotations

import random


def compute_backoff(
    retries: int, base: float, cap: float, retry_after: float | None = None
) -> float:
    """Seconds before retry number `retries` (0-based): uniform between half and all of
    min(cap, base x 2^retries) ("equal jitter": never near zero, still spread); never sooner than
    Retry-After (itself capped)."""
    ceiling = min(cap, base * (2 ** min(retries, 30)))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay
