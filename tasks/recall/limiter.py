"""Fleet-wide pacing of Recall's API, shared by every worker through Redis.

Recall's quotas are sliding windows per endpoint family (List 60/min per workspace, Retrieve
300/min, Create 5/min per bot, ...): they, not our CPU, bound the pipeline. Each family keeps
Recall's own window on our side (limiter.lua), on Redis's clock, a small margin wider so that
calls reaching Recall a little out of step still fit. A caller always gets a slot: now, or a
reservation later that it redeems when it comes back (a `Ticket`), so waiting jobs queue instead
of stampeding. A redeemed slot is counted when the call really goes (a job may come back late),
and a ticket never outlives a pause: a 429 pauses its family for the whole fleet until the
latest Retry-After any worker was given.

The declared rates can be more than Recall gives us (another application on the same key, a
smaller plan), so a 429 also teaches the fleet the real pace: Recall took the calls ahead of the
refused one and takes the next one Retry-After later, so the family learns a second window (that
many calls per that long, whatever Recall's own window is), kept beside the declared one in
Redis and shared by every worker. Later 429s lower its count (at least by one on the first after
a pause: the last increase was too many); every 5 declared windows without one it grows by a
tenth (at least a call), and at the declared rate it is dropped; unused for 50 windows, it is
forgotten. Why this and not a library: `bench/limiter.py`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

import redis

from tasks import keys, scripts


class Family(StrEnum):
    CREATE = "create"  # per recording (Recall: per bot; a bot records one recording)
    RETRIEVE = "retrieve"
    LIST = "list"
    DELETE = "delete"
    RECORDINGS = "recordings"  # List Recordings (reconciliation: tasks/reconcile/), per workspace


@dataclass(frozen=True)
class Rate:
    """At most `count` calls in any window of `seconds`."""

    count: int
    seconds: float

    @property
    def margin(self) -> float:
        """How much wider our window is than Recall's: room for calls that arrive out of step."""
        return min(0.5, self.seconds * 0.05)


# Recall's documented quotas (list, retrieve, create, recordings); delete is undocumented: as list.
DEFAULT_RATES = {
    Family.CREATE: Rate(5, 60),
    Family.RETRIEVE: Rate(300, 60),
    Family.LIST: Rate(60, 60),
    Family.DELETE: Rate(60, 60),
    Family.RECORDINGS: Rate(60, 60),
}
_FAMILIES = "|".join(Family)
_RATE = re.compile(rf"^\s*({_FAMILIES})\s*=\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*$")


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
                f"{part!r} is not FAMILY=COUNT/SECONDS (families: {', '.join(Family)})"
            )
        count, seconds = int(match[2]), float(match[3])
        if count < 1 or seconds <= 0:
            raise ValueError(f"{part!r}: the count and the seconds must be positive")
        rates[Family(match[1])] = Rate(count, seconds)
    return rates


@dataclass(frozen=True)
class Ticket:
    """A slot reserved in a family's window, for a call on a later run."""

    family: Family
    scope: str
    member: str

    def dump(self) -> str:
        return json.dumps([self.family, self.scope, self.member])

    @classmethod
    def load(cls, text: str) -> Ticket | None:
        """The ticket `dump` wrote; None for anything else (a release before this one wrote
        tickets another way: the slot it held leaves the window with time)."""
        try:
            family, scope, member = json.loads(text)
            return cls(Family(family), str(scope), str(member))
        except (ValueError, TypeError):
            return None


@dataclass(frozen=True)
class Slot:
    """When a call may go: after `wait` seconds, in the slot `ticket` holds; no ticket means
    the family is paused (a 429) for `wait` seconds and nothing was reserved."""

    wait: float
    ticket: Ticket | None


@dataclass
class Quota:
    """What one run of a step holds of the quotas: the slot reserved for it on an earlier run,
    until the call it was reserved for takes it. Passed to every call the step makes."""

    ticket: Ticket | None = None

    def take(self, family: Family, scope: str) -> Ticket | None:
        ticket = self.ticket
        if ticket is None or (ticket.family, ticket.scope) != (family, scope):
            return None
        self.ticket = None
        return ticket


class Limiter:
    """Paces each family fleet-wide; one per process."""

    def __init__(
        self,
        client: redis.Redis,
        rates: dict[Family, Rate],
        inline_s: float,
        workspace: str = "default",
    ) -> None:
        self._redis = client
        self._rates = rates
        self._workspace = workspace  # each workspace has quotas of its own
        self._inline_ms = round(inline_s * 1000)
        self._script = scripts.register(client, __name__, "limiter.lua")

    def paces(self, family: Family) -> bool:
        return family in self._rates

    def acquire(self, family: Family, scope: str = "") -> Slot:
        """Take the family's next slot (now or later)."""
        return self._slot(family, scope, self._run("acquire", family, scope))

    def redeem(self, ticket: Ticket) -> Slot:
        """The slot `ticket` reserved: still ahead, moved to the earliest moment the call fits
        now that it is due, or, while the family is paused, given back."""
        answer = self._run("redeem", ticket.family, ticket.scope, ticket.member, self._inline_ms)
        return self._slot(ticket.family, ticket.scope, answer)

    def release(self, ticket: Ticket) -> None:
        """Give back a slot no call used."""
        self._run("release", ticket.family, ticket.scope, ticket.member)

    def pause(
        self, family: Family, scope: str, seconds: float, refused: Ticket | None = None
    ) -> None:
        """Recall said 429: no one calls this family until `seconds` have passed (or until a
        longer pause already set ends), and its pace is learned from the answer. `refused`, the
        slot of the call Recall refused, says how many calls Recall took before it."""
        member = refused.member if refused is not None else ""
        self._run("pause", family, scope, max(1, round(seconds * 1000)), member)

    def _run(self, command: str, family: Family, scope: str, *args: str | int) -> object:
        rate = self._rates[family]
        return self._script(
            keys=[
                keys.rate(self._workspace, family, scope),
                keys.rate_pause(self._workspace, family, scope),
                keys.rate_seq(self._workspace, family, scope),
                keys.rate_pace(self._workspace, family, scope),
            ],
            args=[
                command,
                rate.count,
                round(rate.seconds * 1000),
                round(rate.margin * 1000),
                *args,
            ],
        )

    @staticmethod
    def _slot(family: Family, scope: str, answer: object) -> Slot:
        wait_ms, member = cast(tuple[int, bytes], answer)
        name = member.decode()
        return Slot(wait_ms / 1000, Ticket(family, scope, name) if name else None)


def release_unused(client: redis.Redis, limiters: dict[str, Limiter], limit: int = 500) -> int:
    """Give back the slots of tickets whose jobs ended, or were retried, before using them
    (tasks/jobs/jobs.lua lists each beside its job's workspace); how many."""
    raw = cast(list[bytes] | None, client.lpop(keys.UNUSED_TICKETS, limit)) or []
    for entry in raw:
        workspace, _, text = entry.decode().partition("\n")
        ticket, limiter = Ticket.load(text), limiters.get(workspace)
        if ticket is not None and limiter is not None and limiter.paces(ticket.family):
            limiter.release(ticket)
    return len(raw)
