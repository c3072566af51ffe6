"""The listing indexes (tasks/keys.py `index`): each job sits in one, its workspace's jobs in its
state (with its error code), by creation time; the unfinished ones are in their state's set too.
Which indexes exist is kept in one set (keys.INDEXES), so a listing, the pruning and a count
walk only those that may hold what they look for."""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

import redis

from tasks import keys
from tasks.jobs.states import State


def written(
    client: redis.Redis,
    workspace: str | None = None,
    states: Collection[str] | None = None,
    codes: Collection[str] | None = None,
) -> list[str]:
    """The listing indexes of jobs of `workspace` (any), in `states` (any), failed with one of
    `codes` (any, failed or not)."""
    found = []
    for raw in client.smembers(keys.INDEXES):  # bytes, or str from a decoding client
        key = raw.decode() if isinstance(raw, bytes) else raw
        parts = keys.indexed(key)
        if parts is None:
            continue
        in_workspace, state, code = parts
        if (
            (workspace is None or in_workspace == workspace)
            and (states is None or state in states)
            and (codes is None or code in codes)
        ):
            found.append(key)
    return sorted(found)


def count(client: redis.Redis, *states: str) -> int:
    """How many jobs are in `states` (every state when none is given)."""
    counts = by_state(client)
    return sum(n for state, n in counts.items() if not states or state in states)


def by_state(client: redis.Redis) -> dict[State, int]:
    """How many jobs are in each state."""
    keys_of = {state: written(client, states=[str(state)]) for state in State}
    pipe = client.pipeline(transaction=False)
    for state_keys in keys_of.values():
        for key in state_keys:
            pipe.zcard(key)
    sizes = iter(cast(list[int], pipe.execute()))
    return {state: sum(next(sizes) for _ in state_keys) for state, state_keys in keys_of.items()}
