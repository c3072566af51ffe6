"""The Recall.ai client: one object per outside system, typed errors translated at one boundary.

RecallError
 +-- RetryableError           try again later (a create keeps its Idempotency-Key)
 |    +-- RateLimited         429, carries Retry-After: wait, never a failure
 |    |    +-- Throttled      our own pacing: a slot later (a ticket to redeem then), or paused
 |    +-- Unavailable         409 (same key still running), 5xx
 |    +-- OutcomeUnknown      timeout or reset after sending: the call may have happened
 |    +-- DownloadExpired     the pre-signed URL was refused (403): retrieve again for a new one
 +-- FinalError               trying again will not help
      +-- BadRequest          400 (the body says why; may be the 10-transcripts limit)
      +-- Unauthorized        401
      +-- Rejected            402 (credit), 403 (firewall), other 4xx
      +-- NotFound            404
      +-- DownloadRefused     a download_url not allowed (plain http) or too large
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from pydantic import BaseModel, ConfigDict, PrivateAttr
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from urllib3.util import Retry

from tasks.limiter import Family, Limiter
from tasks.metrics import Metrics
from tasks.outcomes import ErrorCode
from tasks.settings import Settings

USER_AGENT = "recall-transcribe/0.1"
MAX_REDIRECTS = 5
INLINE_WAIT_S = 0.25  # a quota slot this close is waited for in place; a later one reschedules
_QUERY = re.compile(r"\?\S*")


class RedactQueries(logging.Filter):
    """Drop query strings from urllib3's retry messages: a pre-signed URL's query is a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _QUERY.sub("?<redacted>", record.getMessage()), None
        return True


_REDACT = RedactQueries()


class RecallError(Exception):
    """Any failed call to Recall; `code` is what a user reads in the job's error."""

    code = ErrorCode.RECALL_UNAVAILABLE

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class RetryableError(RecallError):
    """The call may succeed later."""

    code = ErrorCode.RECALL_UNAVAILABLE
    retry_after: float | None = None


class RateLimited(RetryableError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message, 429)
        self.retry_after = retry_after


class Throttled(RateLimited):
    """No call was made: the family's next slot is `retry_after` away (reserved: `ticket`)."""

    def __init__(self, message: str, retry_after: float, ticket: str | None) -> None:
        super().__init__(message, retry_after)
        self.status = None
        self.ticket = ticket
        self.listing: Listing | None = None  # a listing cut short, to resume from its cursor


@dataclass(frozen=True)
class Listing:
    """A recording's listing in progress: the transcripts seen and the next page's URL."""

    seen: list[dict[str, Any]]
    cursor: str | None
    started_at: float
    version: int  # the recording's version (our creates and deletes) when it began


class Unavailable(RetryableError):
    code = ErrorCode.RECALL_UNAVAILABLE


class OutcomeUnknown(RetryableError):
    code = ErrorCode.RECALL_UNREACHABLE


class DownloadExpired(RetryableError):
    code = ErrorCode.DOWNLOAD_EXPIRED


class FinalError(RecallError):
    """Trying again with the same request will not help."""

    code = ErrorCode.RECALL_REJECTED


class BadRequest(FinalError):
    code = ErrorCode.RECALL_REJECTED


class Unauthorized(FinalError):
    code = ErrorCode.RECALL_UNAUTHORIZED


class Rejected(FinalError):
    code = ErrorCode.RECALL_REJECTED


class NotFound(FinalError):
    code = ErrorCode.NOT_FOUND


class DownloadRefused(FinalError):
    code = ErrorCode.DOWNLOAD_REFUSED


class TranscriptStatus(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    sub_code: str | None = None


class TranscriptData(BaseModel):
    model_config = ConfigDict(extra="allow")
    download_url: str | None = None


class RecordingRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str


class Transcript(BaseModel):
    """The transcript object; unknown fields are kept (Recall adds fields over time)."""

    model_config = ConfigDict(extra="allow")
    id: str
    recording: RecordingRef | None = None
    created_at: datetime | None = None
    status: TranscriptStatus
    data: TranscriptData | None = None
    metadata: dict[str, Any] | None = None
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Transcript:
        """Parse an API answer and keep it verbatim for persisting."""
        transcript = cls.model_validate(raw)
        transcript._raw = raw
        return transcript

    @property
    def raw(self) -> dict[str, Any]:
        return self._raw

    @property
    def download_url(self) -> str | None:
        return self.data.download_url if self.data else None


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _error_for(response: requests.Response, what: str) -> RecallError:
    """Map an HTTP error answer to the typed error tree."""
    status = response.status_code
    detail = response.text[:300].strip() or response.reason
    message = f"{what}: HTTP {status}: {detail}"
    if status == 429:
        return RateLimited(message, _retry_after(response))
    if status == 409 or status >= 500:
        error = Unavailable(message, status)
        error.retry_after = _retry_after(response)
        return error
    if status == 400:
        return BadRequest(message, status)
    if status == 401:
        return Unauthorized(f"{what}: HTTP 401: Recall refused the API key", status)
    if status == 404:
        return NotFound(message, status)
    return Rejected(message, status)


def _idempotent_retries() -> Retry:
    """Quick in-call retries for reads and deletes only; a create is retried by the pipeline."""
    return Retry(
        total=2,
        connect=2,
        read=2,
        status=2,
        backoff_factor=0.2,
        status_forcelist=(502, 503, 504),
        allowed_methods=frozenset({"GET", "DELETE"}),
        respect_retry_after_header=False,
        raise_on_status=False,
    )


class RecallClient:
    """Calls Recall's API with one `requests.Session` per thread, auth and timeouts set once."""

    def __init__(
        self, settings: Settings, limiter: Limiter | None = None, metrics: Metrics | None = None
    ) -> None:
        key = settings.RECALL_API_KEY.get_secret_value() if settings.RECALL_API_KEY else ""
        self._auth = f"Token {key}"
        self._base = settings.RECALL_API_BASE_URL
        self._timeout = (min(5.0, settings.RECALL_HTTP_TIMEOUT_S), settings.RECALL_HTTP_TIMEOUT_S)
        self._max_download = settings.DOWNLOAD_MAX_BYTES
        self._require_https = not settings.development
        self._local = threading.local()
        self._limiter = limiter
        self._metrics = metrics
        urllib3_log = logging.getLogger("urllib3.connectionpool")
        if _REDACT not in urllib3_log.filters:
            urllib3_log.addFilter(_REDACT)

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            adapter = HTTPAdapter(max_retries=_idempotent_retries())
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            if not urllib.request.getproxies():
                # Without proxies there is nothing in the environment to re-read on every call
                # (requests would: proxies, netrc, CA bundle); keep only the CA bundle, once.
                session.trust_env = False
                session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get(
                    "CURL_CA_BUNDLE", True
                )
            self._local.session = session
        return session

    @contextmanager
    def redeeming(self, ticket: str | None) -> Iterator[None]:
        """Calls in this block (this thread) first use the quota slot `ticket` reserved."""
        self._local.ticket = ticket
        try:
            yield
        finally:
            self._local.ticket = None

    def _pace(self, family: Family, scope: str) -> None:
        """Wait for the family's quota: in place for a moment, else raise `Throttled`."""
        if self._limiter is None:
            return
        ticket: str | None = getattr(self._local, "ticket", None)
        mine = f"{family}|{scope}|"
        if ticket is not None and ticket.startswith(mine):
            self._local.ticket = None
            at = float(ticket.removeprefix(mine))
        else:
            slot = self._limiter.acquire(family, scope)
            if not slot.reserved:
                raise Throttled(f"{family}: paused by Recall's 429", slot.wait, None)
            at = time.time() + slot.wait
        wait = at - time.time()
        if wait > 0 and self._metrics is not None:
            self._metrics.rate_limited(family, wait)
        if wait > INLINE_WAIT_S:
            raise Throttled(f"{family}: quota slot in {wait:.1f}s", wait, f"{mine}{at:.3f}")
        if wait > 0:
            time.sleep(wait)

    def _call(
        self,
        method: str,
        url: str,
        what: str,
        family: Family,
        scope: str = "",
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        self._pace(family, scope)
        all_headers = {"Authorization": self._auth, "Accept": "application/json"}
        all_headers.update(headers or {})
        try:
            response = self._session().request(
                method, url, json=json, headers=all_headers, params=params, timeout=self._timeout
            )
        except requests.RequestException as exc:
            self._count(family, "error")
            raise _error_for_exception(exc, method, what) from None
        self._count(family, response.status_code)
        if response.status_code >= 400:
            error = _error_for(response, what)
            if isinstance(error, RateLimited) and self._limiter is not None:
                self._limiter.pause(family, scope, error.retry_after or 1.0)
            raise error
        return response

    def _count(self, family: Family, status: int | str) -> None:
        if self._metrics is not None:
            self._metrics.recall_request(family, status)

    def _json(self, response: requests.Response, what: str) -> Any:
        """The answer's JSON; anything else (a proxy's error page) is worth another try."""
        try:
            return response.json()
        except ValueError:
            raise Unavailable(f"{what}: HTTP {response.status_code} answer is not JSON") from None

    def create_transcript(
        self,
        recording_id: str,
        provider: dict[str, Any],
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> Transcript:
        """Create Async Transcript; the same `idempotency_key` replays instead of creating again."""
        body = {
            "provider": provider,
            "diarization": {"use_separate_streams_when_available": False},
            "metadata": metadata,
        }
        response = self._call(
            "POST",
            f"{self._base}/api/v1/recording/{recording_id}/create_transcript/",
            "create transcript",
            Family.CREATE,
            recording_id,
            json=body,
            headers={"Idempotency-Key": idempotency_key},
        )
        return Transcript.from_api(self._json(response, "create transcript"))

    def retrieve_transcript(self, transcript_id: str) -> Transcript:
        response = self._call(
            "GET",
            f"{self._base}/api/v1/transcript/{transcript_id}/",
            "retrieve transcript",
            Family.RETRIEVE,
        )
        return Transcript.from_api(self._json(response, "retrieve transcript"))

    def list_pages(
        self, recording_id: str, cursor: str | None = None
    ) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
        """The recording's transcripts a page at a time, each with the `next` URL (None at the
        end); `cursor`, a `next` URL seen before, resumes a listing there."""
        url: str | None = cursor or f"{self._base}/api/v1/transcript/"
        params: dict[str, str] | None = None if cursor else {"recording_id": recording_id}
        while url:
            answer = self._call("GET", url, "list transcripts", Family.LIST, params=params)
            page = self._json(answer, "list transcripts")
            url, params = page.get("next"), None
            if url and not _same_origin(url, self._base):  # it would carry our API key there
                raise Rejected("list transcripts: a next link to another host; not followed")
            yield list(page.get("results", [])), url

    def delete_transcript(self, transcript_id: str) -> None:
        """Delete a transcript; one already gone counts as deleted."""
        try:
            self._call(
                "DELETE",
                f"{self._base}/api/v1/transcript/{transcript_id}/",
                "delete transcript",
                Family.DELETE,
            )
        except NotFound:
            return

    def download(self, url: str) -> bytes:
        """Fetch transcript data from a pre-signed URL, capped in size and time; redirects are
        followed only to https (plain http too in development), a few at most."""
        deadline = time.monotonic() + 4 * self._timeout[1]
        for _ in range(MAX_REDIRECTS + 1):
            self._check_download_url(url)
            try:
                data = self._download_once(url, deadline)
            except _Redirect as redirect:
                url = urljoin(url, redirect.location)
                continue
            return data
        raise DownloadRefused(f"download: more than {MAX_REDIRECTS} redirects")

    def _check_download_url(self, url: str) -> None:
        scheme = urlsplit(url).scheme
        if scheme != "https" and (self._require_https or scheme != "http"):
            raise DownloadRefused("download: refusing a URL that is not https")

    def _download_once(self, url: str, deadline: float) -> bytes:
        try:
            with self._session().get(
                url, stream=True, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.is_redirect:
                    raise _Redirect(response.headers["Location"])
                if response.status_code in (401, 403):
                    raise DownloadExpired(f"download: HTTP {response.status_code} (URL expired?)")
                if response.status_code >= 400:
                    raise _error_for(response, "download")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_content(64 * 1024):
                    size += len(chunk)
                    if size > self._max_download:
                        raise DownloadRefused(f"download: larger than {self._max_download} bytes")
                    if time.monotonic() > deadline:
                        raise Unavailable("download: too slow, gave up")
                    chunks.append(chunk)
                return b"".join(chunks)
        except requests.RequestException as exc:
            raise Unavailable(f"download: {type(exc).__name__}") from None


class _Redirect(Exception):
    """A redirect answer: control flow inside `download`, never raised out of it."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


def _same_origin(url: str, base: str) -> bool:
    one, other = urlsplit(url), urlsplit(base)
    return (one.scheme, one.netloc) == (other.scheme, other.netloc)


def _error_for_exception(exc: requests.RequestException, method: str, what: str) -> RecallError:
    """Map a failed call (no answer) to the typed error tree: was it sent?"""
    if isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.ConnectTimeout):
        if method != "POST" or _never_sent(exc):
            return Unavailable(f"{what}: cannot connect to Recall")
        return OutcomeUnknown(f"{what}: connection lost before Recall answered")
    if isinstance(exc, requests.ConnectTimeout):
        return Unavailable(f"{what}: cannot connect to Recall")
    if isinstance(exc, requests.Timeout):
        return OutcomeUnknown(f"{what}: Recall did not answer in time")
    return OutcomeUnknown(f"{what}: {type(exc).__name__}")


def _never_sent(exc: requests.ConnectionError) -> bool:
    """True when the connection failed before the request could reach Recall."""
    cause = exc.args[0] if exc.args else None
    if isinstance(cause, MaxRetryError):
        cause = cause.reason
    # NameResolutionError is a NewConnectionError: no connection, nothing sent.
    return isinstance(cause, NewConnectionError | ConnectTimeoutError)
