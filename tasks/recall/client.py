"""The Recall.ai API client: one object per outside system, paced within Recall's quotas.

Every call first takes a slot of its endpoint family from the fleet-wide limiter (limiter.py),
redeeming the ticket the step's `Quota` holds when it was reserved for this call. HTTP failures
become the typed errors of errors.py, here and nowhere else.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import requests
from pydantic import ValidationError
from urllib3.util import Retry

from tasks import limits
from tasks.deadlines import WatchedAdapter, deadline
from tasks.metrics import Metrics
from tasks.recall.download import USER_AGENT, Downloader, trust_environment_once
from tasks.recall.errors import (
    Malformed,
    NotFound,
    RateLimited,
    Rejected,
    Throttled,
    Unavailable,
    error_for,
    error_for_exception,
)
from tasks.recall.limiter import Family, Limiter, Quota, Ticket
from tasks.recall.models import Recording, Transcript
from tasks.recall.workspace import Timeouts, Workspace

log = logging.getLogger(__name__)

INLINE_WAIT_S = 0.25  # a quota slot this close is waited for in place; a later one reschedules
_QUERY = re.compile(r"\?\S*")


class RedactQueries(logging.Filter):
    """Drop query strings from urllib3's retry messages: a pre-signed URL's query is a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _QUERY.sub("?<redacted>", record.getMessage()), None
        return True


_REDACT = RedactQueries()


def _connect_retries() -> Retry:
    """Quick in-call retries of connections that failed before anything was sent. Nothing that
    reached Recall is repeated here: each such call takes a quota slot of its own, in the step's
    own retry. Retry-After is not urllib3's to honour: with it, a 429 or 503 carrying one on a
    GET or DELETE became a `RetryError` (status=0 spent), so the limiter never heard of the 429."""
    return Retry(
        total=2,
        connect=2,
        read=0,
        status=0,
        other=0,
        redirect=0,
        backoff_factor=0.2,
        respect_retry_after_header=False,
    )


class RecallClient:
    """Calls one Recall workspace's API (its base URL, with its key) with one `requests.Session`
    per thread, auth and timeouts set once."""

    def __init__(
        self,
        workspace: Workspace,
        timeouts: Timeouts,
        limiter: Limiter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        key = workspace.api_key.get_secret_value() if workspace.api_key else ""
        self._auth = f"Token {key}"
        self._base = workspace.base_url
        self._timeout = (min(5.0, timeouts.http_s), timeouts.http_s)
        self._local = threading.local()
        self._limiter = limiter
        self._metrics = metrics
        self.download = Downloader(
            self._timeout,
            timeouts.download_max_bytes,
            timeouts.download_s,
            require_https=not workspace.development,
        )
        urllib3_log = logging.getLogger("urllib3.connectionpool")
        if _REDACT not in urllib3_log.filters:
            urllib3_log.addFilter(_REDACT)

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            adapter = WatchedAdapter(max_retries=_connect_retries())
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            trust_environment_once(session)
            self._local.session = session
        return session

    # -- pacing ---------------------------------------------------------------------------------

    def _pace(self, family: Family, scope: str, quota: Quota) -> Ticket | None:
        """Wait for the family's quota: in place for a moment, else raise `Throttled` with the
        slot reserved for the step's next run. The slot the call goes in."""
        if self._limiter is None:
            return None
        ticket = quota.take(family, scope)
        slot = self._limiter.redeem(ticket) if ticket else self._limiter.acquire(family, scope)
        if slot.wait > 0 and self._metrics is not None:
            self._metrics.rate_limited(family, slot.wait)
        if slot.ticket is None:
            raise Throttled(f"{family}: paused by Recall's 429", slot.wait, None)
        if slot.wait > INLINE_WAIT_S:
            raise Throttled(f"{family}: quota slot in {slot.wait:.1f}s", slot.wait, slot.ticket)
        if slot.wait > 0:
            time.sleep(slot.wait)
        return slot.ticket

    def release(self, quota: Quota) -> None:
        """Give back the slot a step reserved and did not use (it ended before the call)."""
        if self._limiter is not None and quota.ticket is not None:
            self._limiter.release(quota.ticket)
            quota.ticket = None

    # -- calls ----------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        url: str,
        what: str,
        family: Family,
        quota: Quota,
        scope: str = "",
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        sending: Callable[[], object] | None = None,
    ) -> requests.Response:
        slot = self._pace(family, scope, quota)
        if sending is not None:
            sending()
        all_headers = {"Authorization": self._auth, "Accept": "application/json"}
        all_headers.update(headers or {})
        try:
            # The whole call, however slowly an answer trickles in, within the timeout.
            with deadline(self._timeout[1]) as cut:
                response = self._session().request(
                    method,
                    url,
                    json=json,
                    headers=all_headers,
                    params=params,
                    timeout=self._timeout,
                )
        except requests.RequestException as exc:
            self._count(family, "error")
            if cut.passed:
                raise error_for_exception(requests.Timeout(), method, what) from None
            raise error_for_exception(exc, method, what) from None
        if cut.passed:  # the cut may read as the end of a body sent without a length
            self._count(family, "error")
            raise error_for_exception(requests.Timeout(), method, what)
        self._count(family, response.status_code)
        if response.status_code >= 400:
            error = error_for(response, what)
            if isinstance(error, RateLimited) and self._limiter is not None:
                # The whole fleet waits, and learns from the refusal how fast Recall lets it go.
                wait = error.retry_after or 1.0
                self._limiter.pause(family, scope, wait, slot)
                if self._metrics is not None:
                    self._metrics.rate_limited(family, wait)
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
        quota: Quota,
    ) -> Transcript:
        """Create Async Transcript; the same `idempotency_key` replays instead of creating again."""
        body = {
            "provider": provider,
            "diarization": {"use_separate_streams_when_available": False},
            "metadata": metadata,
        }
        response = self._call(
            "POST",
            f"{self._base}/api/v1/recording/{quote(recording_id, safe='')}/create_transcript/",
            "create transcript",
            Family.CREATE,
            quota,
            recording_id,
            json=body,
            headers={"Idempotency-Key": idempotency_key},
        )
        return Transcript.from_api(self._json(response, "create transcript"))

    def retrieve_transcript(self, transcript_id: str, quota: Quota) -> Transcript:
        response = self._call(
            "GET",
            f"{self._base}/api/v1/transcript/{quote(transcript_id, safe='')}/",
            "retrieve transcript",
            Family.RETRIEVE,
            quota,
        )
        return Transcript.from_api(self._json(response, "retrieve transcript"))

    def list_pages(
        self, recording_id: str, cursor: str | None, quota: Quota
    ) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
        """The recording's transcripts a page at a time, each with the `next` URL (None at the
        end); `cursor`, a `next` URL seen before, resumes a listing there."""
        url: str | None = cursor or f"{self._base}/api/v1/transcript/"
        params: dict[str, str] | None = None if cursor else {"recording_id": recording_id}
        while url:
            answer = self._call("GET", url, "list transcripts", Family.LIST, quota, params=params)
            page = self._json(answer, "list transcripts")
            url, params = page.get("next"), None
            if url and not _same_origin(url, self._base):  # it would carry our API key there
                raise Rejected("list transcripts: a next link to another host; not followed")
            yield list(page.get("results", [])), url

    def list_recordings(
        self,
        status_code: str,
        created_after: datetime,
        created_before: datetime,
        cursor: str | None,
        quota: Quota,
    ) -> Iterator[RecordingsPage]:
        """List Recordings of one status created in the window, a page at a time, each with the
        `next` URL (None at the end); `cursor`, a `next` URL seen before, resumes there. Paced in
        its own family (`recordings`), so it never takes the pipeline's slots. An item that is not
        a recording (or whose id is not one) is left out, logged and counted in `skipped`; a page
        of the wrong shape raises `Malformed`."""
        url: str | None = cursor or f"{self._base}/api/v1/recording/"
        if cursor and not _same_origin(cursor, self._base):  # saved before the base URL changed
            raise Rejected("list recordings: a saved cursor of another origin; not followed")
        params: dict[str, str] | None = None
        if not cursor:
            params = {
                "status_code": status_code,
                "created_at_after": _iso(created_after),
                "created_at_before": _iso(created_before),
            }
        while url:
            answer = self._call(
                "GET", url, "list recordings", Family.RECORDINGS, quota, params=params
            )
            page = self._json(answer, "list recordings")
            if (
                not isinstance(page, dict)
                or not isinstance(page.get("results"), list)
                or not isinstance(page.get("next"), str | None)
            ):
                raise Malformed("list recordings: a page without a list of results and a next")
            url, params = page["next"] or None, None
            if url and not _same_origin(url, self._base):  # it would carry our API key there
                raise Rejected("list recordings: a next link to another host; not followed")
            recordings = [r for r in map(_recording, page["results"]) if r is not None]
            yield RecordingsPage(recordings, url, len(page["results"]) - len(recordings))

    def delete_transcript(
        self, transcript_id: str, quota: Quota, sending: Callable[[], object] | None = None
    ) -> None:
        """Delete a transcript; one already gone counts as deleted. `sending` runs once the
        quota lets the call go, just before it is sent."""
        try:
            self._call(
                "DELETE",
                f"{self._base}/api/v1/transcript/{quote(transcript_id, safe='')}/",
                "delete transcript",
                Family.DELETE,
                quota,
                sending=sending,
            )
        except NotFound:
            return


class RecordingsPage(NamedTuple):
    """A page of List Recordings: its recordings, the next page's URL, and how many items were
    left out as not recordings."""

    recordings: list[Recording]
    next: str | None
    skipped: int


def _recording(item: object) -> Recording | None:
    """The recording an item of List Recordings is; None (logged) for one that is not, or whose
    id is not a recording id we would submit."""
    try:
        recording = Recording.model_validate(item)
    except ValidationError as exc:
        reason = f"{exc.error_count()} invalid field(s): {_fields(exc)}"
    else:
        if limits.recording_id(recording.id):
            return recording
        reason = "not a recording id"
    named = item.get("id") if isinstance(item, dict) else None
    log.warning("list recordings: an item left out (%s): id %.80r", reason, named)
    return None


def _fields(exc: ValidationError) -> str:
    return ", ".join(".".join(map(str, e["loc"])) or "item" for e in exc.errors()[:5])


def _iso(moment: datetime) -> str:
    """A UTC date-time as Recall writes them (`2024-11-27T20:10:19.719000Z`)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _same_origin(url: str, base: str) -> bool:
    """Scheme, host and port alike (`host:443` is `host` over https; case does not count)."""
    origin = _origin(url)
    return origin is not None and origin == _origin(base)


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme.lower())
    except ValueError:  # a port out of range or not a number
        return None
    if not parts.hostname:
        return None
    return parts.scheme.lower(), parts.hostname, port
