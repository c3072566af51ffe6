"""Writes that must survive a failover: confirmed by REDIS_MIN_REPLICAS replicas first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline

REPLICA_WAIT_MS = 1000  # replication takes milliseconds; a replica this late is as good as gone


class NotReplicated(redis.RedisError):
    """Fewer replicas than REDIS_MIN_REPLICAS confirmed a write: it may not survive a failover."""


def replicated(client: redis.Redis, replicas: int, write: Callable[[Pipeline], object]) -> Any:
    """Run `write` (commands on a pipeline), then, with `replicas` > 0, WAIT until that many
    replicas confirm it, on the same connection (WAIT counts the writes of its own connection).
    Returns the write's answer; raises `NotReplicated` when too few confirm in time. A pipeline
    loads its scripts once, before it runs: retried on a connection that reached another server
    (a failover), its script is not there, and it runs again, loading it."""
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        write(pipe)
        if replicas:
            pipe.wait(replicas, REPLICA_WAIT_MS)
        try:
            answers = pipe.execute()
            break
        except redis.exceptions.NoScriptError:
            if attempt == 2:
                raise
    if replicas and answers[-1] < replicas:
        raise NotReplicated(f"{answers[-1]} of {replicas} replica(s) confirmed the write in time")
    return answers[0]
