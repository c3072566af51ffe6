"""The Recall client against the emulator: each failure mode lands on the right typed error."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import requests
from werkzeug.serving import make_server

from harness import EmulatorHandle, free_port
from tasks import keys
from tasks.metrics import Metrics
from tasks.recall.client import INLINE_WAIT_S, RecallClient
from tasks.recall.download import MAX_REDIRECTS
from tasks.recall.errors import (
    BadRequest,
    DownloadExpired,
    DownloadRefused,
    DownloadTimeout,
    NotFound,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    RetryableError,
    Throttled,
    Unauthorized,
    Unavailable,
    retry_after,
)
from tasks.recall.limiter import DEFAULT_RATES, Family, Limiter, Quota
from tasks.recall.models import Transcript
from tasks.recalls import recall_client
from tasks.settings import Settings
from tests.helpers import reconfigure, serve_connections

PROVIDER = {"recallai_async": {"language_code": "en"}}


def create(client: RecallClient, recording_id: str = "r1", key: str = "k1") -> Transcript:
    return client.create_transcript(recording_id, PROVIDER, {"job_id": "j"}, key, Quota())


def download(client: RecallClient, url: str) -> bytes:
    into = io.BytesIO()
    size = client.download(url, into)
    assert size == len(into.getvalue())
    return into.getvalue()


def test_create_returns_a_processing_transcript_tagged_with_metadata(
    settings: Settings, emulator: EmulatorHandle
) -> None:
    emulator.recording("r1")
    transcript = create(recall_client(settings))
    assert transcript.status.code == "processing"
    assert transcript.metadata == {"job_id": "j"}
    assert transcript.raw["id"] == transcript.id


@pytest.mark.parametrize(
    ("fault", "error", "retryable"),
    [
        ({"status": 429, "retry_after": 7}, RateLimited, True),
        ({"status": 429}, RateLimited, True),
        ({"status": 502}, Unavailable, True),
        ({"status": 503}, Unavailable, True),
        ({"status": 504}, Unavailable, True),
        ({"status": 409}, Unavailable, True),
        ({"status": 400}, BadRequest, False),
        ({"status": 402}, Rejected, False),
        ({"status": 403}, Rejected, False),
    ],
)
def test_create_error_answers_are_classified(
    settings: Settings,
    emulator: EmulatorHandle,
    fault: dict[str, object],
    error: type,
    retryable: bool,
) -> None:
    emulator.recording("r1")
    emulator.fault(target="create", action="status", **fault)
    with pytest.raises(error) as caught:
        create(recall_client(settings))
    assert isinstance(caught.value, RetryableError) is retryable
    if fault.get("retry_after"):
        assert caught.value.retry_after == 7  # type: ignore[attr-defined]


def test_bad_api_key_is_final_and_does_not_leak_the_key(
    settings: Settings, emulator: EmulatorHandle
) -> None:
    emulator.recording("r1")
    client = recall_client(reconfigure(settings, RECALL_API_KEY=None))
    with pytest.raises(Unauthorized) as caught:
        create(client)
    assert "test-key" not in str(caught.value)


def test_unknown_recording_is_not_found(settings: Settings, emulator: EmulatorHandle) -> None:
    with pytest.raises(NotFound):
        create(recall_client(settings), "nope")


def test_lost_create_answer_is_outcome_unknown_and_the_same_key_replays(
    settings: Settings, emulator: EmulatorHandle
) -> None:
    emulator.recording("r1")
    emulator.fault(target="create", action="lose_response")
    client = recall_client(settings)
    with pytest.raises(OutcomeUnknown):
        create(client, key="same")
    replayed = create(client, key="same")
    assert emulator.stats()["created_by_recording"] == {"r1": 1}
    assert [t["id"] for t in emulator.transcripts("r1")] == [replayed.id]


def test_timeout_is_outcome_unknown(settings: Settings, emulator: EmulatorHandle) -> None:
    emulator.recording("r1")
    emulator.fault(target="create", action="latency", seconds=3)
    with pytest.raises(OutcomeUnknown):
        create(recall_client(reconfigure(settings, RECALL_HTTP_TIMEOUT_S=0.5)))


def test_refused_connection_is_unavailable_not_unknown(settings: Settings) -> None:
    client = recall_client(reconfigure(settings, RECALL_API_BASE_URL="http://127.0.0.1:9"))
    with pytest.raises(Unavailable) as caught:
        create(client)
    assert not isinstance(caught.value, OutcomeUnknown)


def test_list_follows_the_cursor_to_the_end(settings: Settings, emulator: EmulatorHandle) -> None:
    seeded = emulator.seed("r1", 8)  # the fixture's emulator pages by 3
    pages = list(recall_client(settings).list_pages("r1", None, Quota()))
    listed = [Transcript.from_api(raw) for page, _ in pages for raw in page]
    assert [cursor is None for _, cursor in pages] == [False] * (len(pages) - 1) + [True]
    assert [t.id for t in listed] == [t["id"] for t in seeded]


def test_a_read_that_reached_recall_is_not_repeated_inside_the_call(
    settings: Settings, emulator: EmulatorHandle
) -> None:
    """Each attempt takes a quota slot of its own, in the step's retry: never two calls for one."""
    (seeded,) = emulator.seed("r1", 1)
    emulator.fault(target="retrieve", action="status", status=503)
    with pytest.raises(Unavailable):
        recall_client(settings).retrieve_transcript(seeded["id"], Quota())
    assert emulator.stats()["calls"]["retrieve"] == 1


@pytest.mark.parametrize("family", [Family.RETRIEVE, Family.LIST, Family.DELETE])
def test_a_429_on_a_read_pauses_its_family_fleet_wide_for_the_retry_after(
    settings: Settings, emulator: EmulatorHandle, rclient: redis.Redis, family: Family
) -> None:
    """GET and DELETE too: urllib3 must not take Retry-After for itself (it turned the 429
    into a RetryError, an unknown outcome, and nothing paused)."""
    (seeded,) = emulator.seed("r1", 1)
    limiter = Limiter(rclient, dict(DEFAULT_RATES), INLINE_WAIT_S)
    client = recall_client(settings, limiter, Metrics(rclient))
    calls: dict[Family, Callable[[], object]] = {
        Family.RETRIEVE: lambda: client.retrieve_transcript(seeded["id"], Quota()),
        Family.LIST: lambda: list(client.list_pages("r1", None, Quota())),
        Family.DELETE: lambda: client.delete_transcript(seeded["id"], Quota()),
    }
    emulator.fault(target=str(family), action="status", status=429, retry_after=3)
    with pytest.raises(RateLimited) as caught:
        calls[family]()
    assert caught.value.retry_after == 3 and not isinstance(caught.value, Throttled)
    with pytest.raises(Throttled) as paused:  # no call: the whole family waits out the pause
        calls[family]()
    assert paused.value.ticket is None and 2.5 < (paused.value.retry_after or 0) <= 3
    assert emulator.stats()["calls"][family] == 1
    waited = float(rclient.hget(keys.METRIC_RATE_LIMITED, f"{family}|default") or 0)
    assert waited > 5  # the 429's 3 s and the paused call's wait, both counted
    assert rclient.exists(keys.rate_pace("default", family))  # the fleet learns the pace


def test_delete_of_a_deleted_transcript_counts_as_deleted(
    settings: Settings, emulator: EmulatorHandle
) -> None:
    (seeded,) = emulator.seed("r1", 1)
    client = recall_client(settings)
    client.delete_transcript(seeded["id"], Quota())
    client.delete_transcript(seeded["id"], Quota())
    assert emulator.transcripts("r1")[0]["status"]["code"] == "deleted"


def test_download_returns_the_exact_bytes_and_403_is_expired(
    settings: Settings, emulator: EmulatorHandle
) -> None:
    (seeded,) = emulator.seed("r1", 1)
    client = recall_client(settings)
    url = client.retrieve_transcript(seeded["id"], Quota()).download_url
    assert url is not None
    assert download(client, url) == emulator.data(seeded["id"])
    with pytest.raises(DownloadExpired):
        download(client, url.replace("sig=", "sig=0"))


def test_plain_http_download_is_refused_outside_development(settings: Settings) -> None:
    production = reconfigure(settings, RECALL_API_BASE_URL="https://us-west-2.recall.ai")
    with pytest.raises(DownloadRefused):
        download(recall_client(production), "http://example.invalid/data.json")


def test_download_over_the_size_cap_is_refused(
    settings: Settings, emulator: EmulatorHandle
) -> None:
    (seeded,) = emulator.seed("r1", 1)
    client = recall_client(reconfigure(settings, DOWNLOAD_MAX_BYTES=10))
    url = client.retrieve_transcript(seeded["id"], Quota()).download_url
    assert url is not None
    with pytest.raises(DownloadRefused):
        download(client, url)


@pytest.fixture
def fake_recall() -> Iterator[tuple[str, list[str]]]:
    """A server answering what a compromised or misconfigured upstream might: a List page whose
    `next` names another host, and downloads that redirect. Returns its URL and the paths hit."""
    hits: list[str] = []

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        hits.append(path)
        port = environ["SERVER_PORT"]
        if path == "/api/v1/transcript/":
            body = {"next": f"http://127.0.0.2:{port}/api/v1/transcript/?cursor=x", "results": []}
            start("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]
        if path.startswith("/redirect/"):
            start("302 Found", [("Location", path.removeprefix("/redirect/").replace("|", "/"))])
            return [b""]
        start("200 OK", [("Content-Type", "application/json")])
        return [b"[]"]

    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", hits
    server.shutdown()


def test_a_list_next_link_to_another_host_is_not_followed_with_the_api_key(
    settings: Settings, fake_recall: tuple[str, list[str]]
) -> None:
    url, hits = fake_recall
    client = recall_client(reconfigure(settings, RECALL_API_BASE_URL=url))
    with pytest.raises(Rejected, match="another host"):
        list(client.list_pages("r1", None, Quota()))
    assert hits == ["/api/v1/transcript/"]


def test_download_redirects_stay_on_http_schemes_and_are_few(
    settings: Settings, fake_recall: tuple[str, list[str]]
) -> None:
    url, hits = fake_recall
    client = recall_client(reconfigure(settings, RECALL_API_BASE_URL=url))  # development: http
    assert download(client, f"{url}/redirect/|data.json") == b"[]"
    with pytest.raises(DownloadRefused, match="not https"):
        download(client, f"{url}/redirect/file:||etc|passwd")
    hits.clear()
    with pytest.raises(DownloadRefused, match="redirects"):
        download(client, f"{url}/redirect/|redirect|")  # redirects to itself
    assert len(hits) == MAX_REDIRECTS + 1


def test_outside_development_downloads_and_their_redirects_must_be_https(
    settings: Settings,
) -> None:
    client = recall_client(reconfigure(settings, RECALL_API_BASE_URL="https://127.0.0.1:9"))
    for url in ("http://127.0.0.1:9/data", "ftp://127.0.0.1/data"):
        with pytest.raises(DownloadRefused, match="not https"):
            download(client, url)


@pytest.fixture
def trickler() -> Iterator[str]:
    """A host that sends a byte every 0.1 s: the status line and headers first (`/body`), or
    never getting past them (`/headers`). Returns its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            path = conn.recv(4096).split(b" ")[1]
            if path == b"/body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                slowly = b"x" * 1000000
            else:
                slowly = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 60000
            for byte in slowly:
                if stop.wait(0.1):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    serve_connections(listener, stop, serve)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


@pytest.mark.parametrize("path", ["/body", "/headers"])
def test_a_download_trickling_a_byte_at_a_time_is_abandoned_at_its_deadline(
    settings: Settings, trickler: str, path: str
) -> None:
    """Each byte comes well within the socket timeout; the whole download's deadline cuts it."""
    client = recall_client(reconfigure(settings, RECALL_DOWNLOAD_TIMEOUT_S=1))
    started = time.monotonic()
    with pytest.raises(DownloadTimeout, match="not finished within 1s"):
        download(client, f"{trickler}{path}")
    assert time.monotonic() - started < 5


def test_an_api_answer_trickling_a_byte_at_a_time_ends_with_the_call_timeout(
    settings: Settings, trickler: str
) -> None:
    """Not only downloads: a call to Recall's API is bounded as a whole, so a step cannot hold
    its job (and its lease) past the job's deadline."""
    client = recall_client(
        reconfigure(settings, RECALL_API_BASE_URL=trickler, RECALL_HTTP_TIMEOUT_S=1)
    )
    started = time.monotonic()
    with pytest.raises(RetryableError):
        client.retrieve_transcript("body", Quota())
    with pytest.raises(OutcomeUnknown):
        client.create_transcript("body", PROVIDER, {}, "k", Quota())
    assert time.monotonic() - started < 6


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("2", 2.0), ("1e9", 3600.0), ("inf", 3600.0), ("nan", None), ("-5", 0.0), ("soon", None)],
)
def test_retry_after_is_read_finite_and_at_most_an_hour(header: str, seconds: float | None) -> None:
    """A Retry-After of years (or infinity) would pause a family for good, or raise in the
    limiter and fail the job: a 429 is backpressure, never a failure."""
    answer = requests.Response()
    answer.status_code = 429
    answer.headers["Retry-After"] = header
    assert retry_after(answer) == seconds
