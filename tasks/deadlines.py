"""A deadline for a whole HTTP exchange, however slowly the other side sends.

A socket timeout only bounds each wait for a byte: a host that trickles a byte a second holds the
thread for ever. Under `deadline(seconds)`, every connection urllib3's pools hand out is tracked
(`WatchedHTTPPool`, `WatchedHTTPSPool`, and `WatchedAdapter` for requests), and a timer shuts
their sockets down when the time is up, which wakes a blocked read at once: the connection,
the headers and the body are all covered. Used by transcript downloads and callbacks.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
from collections.abc import Iterator
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class Deadline:
    """The connections one exchange uses, cut when its time is up."""

    def __init__(self) -> None:
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self.passed = False

    def track(self, connection: Any) -> None:
        with self._lock:
            self._connections.append(connection)
            if self.passed:
                _cut(connection)

    def expire(self) -> None:
        with self._lock:
            self.passed = True
            for connection in self._connections:
                _cut(connection)


def _cut(connection: Any) -> None:
    """Shut the connection's socket down: a thread blocked reading it wakes with an error."""
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket, TLS or not


_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "http_deadline", default=None
)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Every connection a watched pool hands out in this block is cut after `seconds`."""
    current = Deadline()
    timer = threading.Timer(seconds, current.expire)
    timer.daemon = True
    token = _current.set(current)
    timer.start()
    try:
        yield current
    finally:
        timer.cancel()
        _current.reset(token)


class _Watched:
    """A connection pool that shows each connection it hands out to the running deadline."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)  # type: ignore[misc]
        current = _current.get()
        if current is not None:
            current.track(connection)
        return connection


class WatchedHTTPPool(_Watched, HTTPConnectionPool):
    pass


class WatchedHTTPSPool(_Watched, HTTPSConnectionPool):
    pass


_POOLS = {"http": WatchedHTTPPool, "https": WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """A requests adapter whose connections a deadline can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager
