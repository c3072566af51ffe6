"""The retry policy, declared once: exponential backoff with full jitter, a cap, and Retry-After."""

from __future__ import annotations

import random


def compute_backoff(
    retries: int, base: float, cap: float, retry_after: float | None = None
) -> float:
    """Seconds to wait before retry number `retries` (0-based); never sooner than Retry-After."""
    ceiling = min(cap, base * (2 ** min(retries, 30)))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay
