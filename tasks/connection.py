"""The Redis client every process uses for job state, the inbox and its hand-built messages."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from tasks.settings import Settings


def redis_client(settings: Settings, patient: bool = False) -> redis.Redis:
    """A Redis client with short timeouts; a `patient` one rides out a restart (~20 s)."""
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), 12 if patient else 0)
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
