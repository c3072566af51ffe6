"""How every process reaches Redis: REDIS_URL, or the primary Sentinel names (REDIS_SENTINELS),
for the job store, the inbox, leases and the limiter (`redis_client`) as for Celery's broker
(`broker_url`, `broker_options`).

Through Sentinel, a client asks for the primary when it connects, and again when its connection
fails or the server it reaches has become a replica (redis-py's Sentinel pool turns READONLY into
a reconnection), so a failover is followed without a restart. A command retried on its own
connection asks again too (`_AskingConnection`): redis-py reconnects it to the address it had.
A `patient` client (workers) retries for about 20 s; an impatient one (the receiver) fails at
once, so the receiver answers 503 and Recall sends again.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from tasks.settings import Settings

SOCKET = {"socket_timeout": 5, "socket_connect_timeout": 2}


def redis_client(settings: Settings, patient: bool = False) -> redis.Redis:
    """A Redis client with short timeouts; a `patient` one rides out a restart or a failover."""
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), 12 if patient else 0)
    options: dict[str, Any] = {
        **SOCKET,
        "health_check_interval": 30,
        "retry": retry,
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }
    if not settings.sentinels:
        return redis.Redis.from_url(settings.REDIS_URL, **options)
    url = urlsplit(settings.REDIS_URL)
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        settings.sentinels, sentinel_kwargs={**SOCKET, "socket_timeout": 1}
    )
    primary: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]
        settings.REDIS_SENTINEL_MASTER,
        redis_class=redis.Redis,
        connection_class=_AskingConnection,
        db=_db(url.path),
        username=unquote(url.username) if url.username else None,
        password=unquote(url.password) if url.password else None,
        **options,
    )
    return primary


class _AskingConnection(SentinelManagedConnection):  # type: ignore[misc,unused-ignore]
    """A connection to the primary that asks the Sentinels where it is every time it connects.
    redis-py's own asks only when the pool hands it out: a command retried on the same connection
    (a socket timeout: the primary cut off by a partition) reconnected to the old primary, retry
    after retry, for as long as the partition lasted (20-30 s in `tests/test_failover.py`)."""

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self._sock is None and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health, retry_socket_connect)


def broker_url(settings: Settings) -> str:
    """Celery's broker: REDIS_URL, or kombu's Sentinel transport over every Sentinel."""
    if not settings.sentinels:
        return settings.REDIS_URL
    url = urlsplit(settings.REDIS_URL)
    auth = url.netloc.rpartition("@")[0]
    db = _db(url.path)
    return ";".join(
        f"sentinel://{auth + '@' if auth else ''}{_host(host)}:{port}/{db}"
        for host, port in settings.sentinels
    )


def broker_options(settings: Settings) -> dict[str, object]:
    """Transport options the broker needs besides the visibility settings. Socket timeouts and
    kombu's health checks let a consumer or a publish give up on a connection that went silent
    without closing (a partition, a primary frozen mid-failover): kombu's defaults would wait on
    it forever; with these a worker drops it within about 5 s and asks Sentinel again."""
    options: dict[str, object] = {**SOCKET, "socket_keepalive": True, "health_check_interval": 2}
    if settings.sentinels:
        options["master_name"] = settings.REDIS_SENTINEL_MASTER
        options["sentinel_kwargs"] = {**SOCKET, "socket_timeout": 1}
    return options


def _db(path: str) -> int:
    digits = path.strip("/")
    return int(digits) if digits.isdigit() else 0


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
