"""Transcript data from pre-signed URLs, streamed into a file, bounded in size and in time.

A socket timeout only bounds each wait for a byte: a host that trickles a byte a second would hold
a worker thread (and, through the heartbeat, its job's lease) for ever. So every download runs
under a deadline (RECALL_DOWNLOAD_TIMEOUT_S, connection to last byte, redirects included): a timer
shuts down the sockets the download uses when it passes, which wakes the blocked read at once.
The connections are found through urllib3's pools (`_Watched`), so the whole request is covered,
headers too.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import socket
import threading
import urllib.request
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from tasks.recall.errors import (
    DownloadExpired,
    DownloadRefused,
    DownloadTimeout,
    Unavailable,
    error_for,
)

USER_AGENT = "recall-transcribe/0.1"
MAX_REDIRECTS = 5
CHUNK = 64 * 1024


class _Deadline:
    """The connections one download uses, cut when its time is up."""

    def __init__(self) -> None:
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self.passed = False

    def track(self, connection: Any) -> None:
        with self._lock:
            self._connections.append(connection)
            if self.passed:
                _cut(connection)

    def pass_(self) -> None:
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


_current: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar(
    "download_deadline", default=None
)


class _Watched:
    """A connection pool that shows each connection it hands out to the running download."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)  # type: ignore[misc]
        deadline = _current.get()
        if deadline is not None:
            deadline.track(connection)
        return connection


class _HTTPPool(_Watched, HTTPConnectionPool):
    pass


class _HTTPSPool(_Watched, HTTPSConnectionPool):
    pass


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager


class Downloader:
    """Fetches a pre-signed URL into a file; one `requests.Session` per thread."""

    def __init__(
        self, timeout: tuple[float, float], max_bytes: int, total_s: float, require_https: bool
    ) -> None:
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._total_s = total_s
        self._require_https = require_https
        self._local = threading.local()

    def __call__(self, url: str, into: IO[bytes]) -> int:
        """Write the data at `url` into `into` (from its start); returns its size. Redirects are
        followed only to https (plain http too in development), a few at most."""
        deadline = _Deadline()
        timer = threading.Timer(self._total_s, deadline.pass_)
        timer.daemon = True
        token = _current.set(deadline)
        timer.start()
        try:
            for _ in range(MAX_REDIRECTS + 1):
                self._check(url)
                into.seek(0)
                into.truncate()
                location = self._fetch(url, into, deadline)
                if location is None:
                    return into.tell()
                url = urljoin(url, location)
            raise DownloadRefused(f"download: more than {MAX_REDIRECTS} redirects")
        finally:
            timer.cancel()
            _current.reset(token)

    def _check(self, url: str) -> None:
        scheme = urlsplit(url).scheme
        if scheme != "https" and (self._require_https or scheme != "http"):
            raise DownloadRefused("download: refusing a URL that is not https")

    def _fetch(self, url: str, into: IO[bytes], deadline: _Deadline) -> str | None:
        """One request: the data into `into`, or the Location of a redirect."""
        try:
            with self._session().get(
                url, stream=True, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.is_redirect:
                    return str(response.headers["Location"])
                if response.status_code in (401, 403):
                    raise DownloadExpired(f"download: HTTP {response.status_code} (URL expired?)")
                if response.status_code >= 400:
                    raise error_for(response, "download")
                size = 0
                for chunk in response.iter_content(CHUNK):
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise DownloadRefused(f"download: larger than {self._max_bytes} bytes")
                    into.write(chunk)
        except (requests.RequestException, OSError) as exc:
            if deadline.passed:
                raise self._too_slow() from None
            raise Unavailable(f"download: {type(exc).__name__}") from None
        if deadline.passed:  # the cut may read as the end of a body sent without a length
            raise self._too_slow()
        return None

    def _too_slow(self) -> DownloadTimeout:
        return DownloadTimeout(f"download: not finished within {self._total_s:g}s, abandoned")

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            adapter = _WatchedAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            trust_environment_once(session)
            self._local.session = session
        return session


def trust_environment_once(session: requests.Session) -> None:
    """Without proxies there is nothing in the environment to re-read on every call (requests
    would: proxies, netrc, CA bundle); keep only the CA bundle, read once."""
    if not urllib.request.getproxies():
        session.trust_env = False
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get(
            "CURL_CA_BUNDLE", True
        )
