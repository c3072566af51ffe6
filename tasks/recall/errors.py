"""Every way a call to Recall can fail, typed, translated from HTTP at one boundary.

RecallError
 +-- RetryableError           try again later (a create keeps its Idempotency-Key)
 |    +-- RateLimited         429, carries Retry-After: wait, never a failure
 |    |    +-- Throttled      our own pacing, no call made: a slot later (a ticket), or paused
 |    +-- Unavailable         409 (same key still running), 5xx, no connection
 |    |    +-- Malformed      a 2xx answer of the wrong shape (a list page without results)
 |    +-- OutcomeUnknown      timeout or reset after sending: the call may have happened
 |    +-- DownloadExpired     the pre-signed URL was refused (403): retrieve again for a new one
 |    +-- DownloadTimeout     the whole download took longer than RECALL_DOWNLOAD_TIMEOUT_S
 +-- FinalError               trying again will not help
      +-- BadRequest          400 (the body says why; may be the 10-transcripts limit)
      +-- Unauthorized        401
      +-- Rejected            402 (credit), 403 (firewall), other 4xx
      +-- NotFound            404
      +-- DownloadRefused     a download_url not allowed (plain http) or too large
"""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from tasks.jobs.errors import ErrorCode
from tasks.recall.limiter import Ticket

MAX_RETRY_AFTER_S = 3600.0  # Recall asks for seconds to minutes; an hour is the most we wait


class RecallError(Exception):
    """Any failed call to Recall; `code` is what a user reads in the job's error."""

    code = ErrorCode.RECALL_UNAVAILABLE

    def __init__(self, message: str, status: int | None = None, *, sent: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.sent = sent  # False: the request never reached Recall


class RetryableError(RecallError):
    """The call may succeed later."""

    code = ErrorCode.RECALL_UNAVAILABLE
    retry_after: float | None = None
    spends_budget = True  # False: a wait, not a failure (the job's deadline still bounds it)
    counted = True  # False: not counted in the job's failures either (nothing failed)


class RateLimited(RetryableError):
    code = ErrorCode.RATE_LIMITED
    spends_budget = False

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message, 429)
        self.retry_after = retry_after


class Throttled(RateLimited):
    """No call was made: the family's next slot is `retry_after` away (reserved: `ticket`)."""

    def __init__(self, message: str, retry_after: float, ticket: Ticket | None) -> None:
        super().__init__(message, retry_after)
        self.status, self.sent = None, False
        self.ticket = ticket


class Unavailable(RetryableError):
    code = ErrorCode.RECALL_UNAVAILABLE


class Malformed(Unavailable):
    """A 2xx answer whose shape is wrong: maybe a passing fault, but one a caller may give up
    on after a few tries (a walk skips the page) rather than stop at for ever."""


class OutcomeUnknown(RetryableError):
    code = ErrorCode.RECALL_UNREACHABLE


class DownloadExpired(RetryableError):
    code = ErrorCode.DOWNLOAD_EXPIRED


class DownloadTimeout(RetryableError):
    code = ErrorCode.DOWNLOAD_TIMEOUT


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


def may_have_changed(error: RecallError) -> bool:
    """True unless the error proves the call changed nothing at Recall: it was never sent (our
    pacing, no connection), or Recall answered a definite 4xx or 429."""
    return error.sent and not isinstance(error, RateLimited | FinalError)


def retry_after(response: requests.Response) -> float | None:
    """The answer's Retry-After in seconds (a number or a date), at most MAX_RETRY_AFTER_S: a
    value past it (or not finite) would pause a family for years."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def error_for(response: requests.Response, what: str) -> RecallError:
    """Map an HTTP error answer to the typed error tree."""
    status = response.status_code
    detail = response.text[:300].strip() or response.reason
    message = f"{what}: HTTP {status}: {detail}"
    if status == 429:
        return RateLimited(message, retry_after(response))
    if status == 409 or status >= 500:
        error = Unavailable(message, status)
        error.retry_after = retry_after(response)
        return error
    if status == 400:
        return BadRequest(message, status)
    if status == 401:
        return Unauthorized(f"{what}: HTTP 401: Recall refused the API key", status)
    if status == 404:
        return NotFound(message, status)
    return Rejected(message, status)


def error_for_exception(exc: requests.RequestException, method: str, what: str) -> RecallError:
    """Map a failed call (no answer) to the typed error tree: was it sent?"""
    if isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.ConnectTimeout):
        if _never_sent(exc):
            return Unavailable(f"{what}: cannot connect to Recall", sent=False)
        if method != "POST":
            return Unavailable(f"{what}: connection lost before Recall answered")
        return OutcomeUnknown(f"{what}: connection lost before Recall answered")
    if isinstance(exc, requests.ConnectTimeout):
        return Unavailable(f"{what}: cannot connect to Recall", sent=False)
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
