"""Fleet-wide pacing of Recall's API, shared by every worker through Redis.

Recall's quotas are sliding windows per endpoint family (List 60/min per workspace, Retrieve
300/min, Create 5/min per bot, ...): they, not our CPU, bound the pipeline. Each family keeps
Recall's own window on our side (tasks/lua/limiter.lua), on Redis's clock, a small margin wider so
that calls reaching Recall a little out of step still fit. A caller always gets a slot: now, or a
reservation later that it redeems when it comes back (a *ticket*), so waiting jobs queue instead
of stampeding. A 429 pauses its family for the whole fleet until its Retry-After. Why this and not
a library: `bench/limiter.py` and the README.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import cast

import redis

from tasks import keys


class Family(StrEnum):
    CREATE = "create"  # per recording (Recall: per bot; a bot records one recording)
    RETRIEVE = "retrieve"
    LIST = "list"
    DELETE = "delete"


@dataclass(frozen=True)
class Rate:
    """At most `count` calls in any window of `seconds`."""

    count: int
    seconds: float

    @property
    def margin(self) -> float:
        """How much wider our window is than Recall's: room for calls that arrive out of step."""
        return min(0.5, self.seconds * 0.05)


# Recall's documented quotas (list, retrieve, create); delete is not documented: as list.
DEFAULT_RATES = {
    Family.CREATE: Rate(5, 60),
    Family.RETRIEVE: Rate(300, 60),
    Family.LIST: Rate(60, 60),
    Family.DELETE: Rate(60, 60),
}
_RATE = re.compile(r"^\s*(create|retrieve|list|delete)\s*=\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*$")


def parse_rates(text: str) -> dict[Family, Rate] | None:
    """`create=N/SECONDS,retrieve=...` (any subset; the rest keep Recall's), or `none` for no
    pacing at all (an emulator without quotas). Raises ValueError with a readable reason."""
    if text.strip().lower() == "none":
        return None
    rates = dict(DEFAULT_RATES)
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _RATE.match(part)
        if match is None:
            raise ValueError(
                f"{part!r} is not FAMILY=COUNT/SECONDS (families: create, retrieve, list, delete)"
            )
        count, seconds = int(match[2]), float(match[3])
        if count < 1 or seconds <= 0:
            raise ValueError(f"{part!r}: the count and the seconds must be positive")
        rates[Family(match[1])] = Rate(count, seconds)
    return rates


@dataclass(frozen=True)
class Slot:
    """The answer to `acquire`: go after `wait` seconds; `reserved` False means the family is
    paused (a 429) and nothing was reserved."""

    wait: float
    reserved: bool


class Limiter:
    """Paces each family fleet-wide; one per process."""

    def __init__(self, client: redis.Redis, rates: dict[Family, Rate]) -> None:
        self._redis = client
        self._rates = rates
        script = resources.files("tasks").joinpath("lua/limiter.lua").read_text()
        self._script = client.register_script(script)

    def acquire(self, family: Family, scope: str = "") -> Slot:
        """Take the family's next slot (now or later)."""
        rate = self._rates[family]
        key = keys.rate(family, scope)
        wait_ms, reserved = cast(
            list[int],
            self._script(
                keys=[key, keys.rate_pause(family, scope), f"{key}:seq"],
                args=[rate.count, round(rate.seconds * 1000), round(rate.margin * 1000)],
            ),
        )
        return Slot(wait_ms / 1000, bool(reserved))

    def pause(self, family: Family, scope: str, seconds: float) -> None:
        """Recall said 429: no one calls this family until `seconds` have passed."""
        ms = max(1, round(seconds * 1000))
        self._redis.set(keys.rate_pause(family, scope), "1", px=ms, nx=False)
