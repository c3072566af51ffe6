"""Transcript data from pre-signed URLs, streamed into a file, bounded in size and in time.

Every download runs under a deadline (RECALL_DOWNLOAD_TIMEOUT_S, connection to last byte,
redirects included; tasks/deadlines.py), so a host that trickles a byte a second cannot hold a
worker thread, and through the heartbeat its job's lease, for ever.
"""

from __future__ import annotations

import os
import threading
import urllib.request
from typing import IO
from urllib.parse import urljoin, urlsplit

import requests

from tasks.deadlines import Deadline, WatchedAdapter, deadline
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
        with deadline(self._total_s) as cut:
            for _ in range(MAX_REDIRECTS + 1):
                self._check(url)
                into.seek(0)
                into.truncate()
                location = self._fetch(url, into, cut)
                if location is None:
                    return into.tell()
                url = urljoin(url, location)
            raise DownloadRefused(f"download: more than {MAX_REDIRECTS} redirects")

    def _check(self, url: str) -> None:
        scheme = urlsplit(url).scheme
        if scheme != "https" and (self._require_https or scheme != "http"):
            raise DownloadRefused("download: refusing a URL that is not https")

    def _fetch(self, url: str, into: IO[bytes], cut: Deadline) -> str | None:
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
            if cut.passed:
                raise self._too_slow() from None
            raise Unavailable(f"download: {type(exc).__name__}") from None
        if cut.passed:  # the cut may read as the end of a body sent without a length
            raise self._too_slow()
        return None

    def _too_slow(self) -> DownloadTimeout:
        return DownloadTimeout(f"download: not finished within {self._total_s:g}s, abandoned")

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            adapter = WatchedAdapter()
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
