"""A deadline for a whole HTTP exchange, however slowly the other side sends.

A socket timeout only bounds each wait for a byte: a host that trickles a byte a second holds the
thread for ever. Under `deadline(seconds)`, the watched pools (`WatchedHTTPPool`,
`WatchedHTTPSPool`, and `WatchedAdapter` for requests) show the running deadline every socket
their connections use: a new one as soon as it connects (before any tunnel or TLS handshake, and
again once wrapped in TLS), a kept-alive one as the pool hands it out. When the time is up a timer
shuts them all down, which wakes a blocked read at once: the handshake, the headers and the body
are all covered. The sockets themselves are held, not their connections: a response that will
close its connection (`Connection: close`, HTTP/1.0) takes the socket from the connection.
Used by transcript downloads, Recall API calls and callbacks.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
from collections.abc import Iterator
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class Deadline:
    """The sockets one exchange uses, shut down when its time is up."""

    def __init__(self) -> None:
        self._sockets: list[Any] = []
        self._lock = threading.Lock()
        self.passed = False

    def track(self, sock: Any) -> None:
        """Cut `sock` with the others when the time is up (at once if it is already)."""
        with self._lock:
            if not any(seen is sock for seen in self._sockets):
                self._sockets.append(sock)
            if self.passed:
                _cut(sock)

    def expire(self) -> None:
        with self._lock:
            self.passed = True
            for sock in self._sockets:
                _cut(sock)


def _cut(sock: Any) -> None:
    """Shut the socket down: a thread blocked reading it wakes with an error or an end."""
    while not isinstance(sock, socket.socket):  # urllib3's SSLTransport (TLS in TLS) wraps one
        sock = getattr(sock, "socket", None)
        if sock is None:
            return
    with contextlib.suppress(OSError):  # closed, or detached into the TLS socket wrapping it
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket, TLS or not


_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "http_deadline", default=None
)


def _show(sock: Any) -> None:
    """Show a socket to the running deadline, if any."""
    current = _current.get()
    if current is not None and sock is not None:
        current.track(sock)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Every socket a watched pool's connections use in this block is cut after `seconds`."""
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


class _WatchedConnection:
    """A connection that shows the running deadline each socket it connects."""

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        _show(sock)  # the plain socket: tunnel and TLS handshake are covered
        return sock

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _show(self.sock)  # type: ignore[attr-defined]  # once wrapped in TLS, its TLS socket


class _WatchedHTTPConnection(_WatchedConnection, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _Watched:
    """A connection pool that shows the running deadline the socket of each kept-alive
    connection it hands out (a new connection shows its own as it connects)."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)  # type: ignore[misc]
        _show(connection.sock)
        return connection


class WatchedHTTPPool(_Watched, HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class WatchedHTTPSPool(_Watched, HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


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
