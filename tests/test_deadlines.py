"""A whole exchange's deadline holds whatever the other side does: hosts on loopback that trickle
a byte every TRICKLE_S (well within every socket timeout), over HTTP/1.0 or 1.1, kept alive or
closing, sized, chunked or read to the end, headers or body, plain or TLS. Each of the deadline's
users (downloads, Recall API calls, callbacks) must end within its deadline and a second."""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tasks.callbacks.guard import Guard
from tasks.callbacks.model import Delivery
from tasks.callbacks.send import Sender
from tasks.recall.download import Downloader
from tasks.recall.errors import DownloadTimeout, RetryableError
from tasks.recall.limiter import Quota
from tasks.recalls import recall_client
from tasks.settings import load_settings
from tests.helpers import serve_connections

pytestmark = pytest.mark.timeout(60)

DEADLINE = 0.6
TRICKLE_S = 0.15  # one byte this often: no socket timeout (DEADLINE at the least) ever fires
TAIL = 40  # bytes trickled: 6 s, far past the deadline, yet bounded if the cut fails

BODY = b"x" * TAIL
CHUNKED = b"1\r\nx\r\n" * (TAIL // 6)
HEADER = b"X-Slow: " + b"a" * TAIL

# What the host sends at once, then what it trickles.
BODIES = {
    "http/1.0, read to the end": (b"HTTP/1.0 200 OK\r\n\r\n", BODY),
    "http/1.0, sized": (b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % TAIL, BODY),
    "close, read to the end": (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", BODY),
    "close, sized": (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % TAIL,
        BODY,
    ),
    "close, chunked": (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
        CHUNKED,
    ),
    "kept alive, sized": (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % TAIL, BODY),
    "kept alive, chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", CHUNKED),
}
HEADERS = {
    "http/1.1 status line": (b"", b"HTTP/1.1 200 OK\r\n" + HEADER),
    "http/1.0 status line": (b"", b"HTTP/1.0 200 OK\r\n" + HEADER),
    "http/1.0 headers": (b"HTTP/1.0 200 OK\r\n", HEADER),
    "headers after connection: close": (b"HTTP/1.1 200 OK\r\nConnection: close\r\n", HEADER),
}
CASES = {**BODIES, **HEADERS}
TLS_CASES = [
    "close, sized",
    "http/1.0, read to the end",
    "http/1.0 status line",
    "headers after connection: close",
]


def cases(names: list[str]) -> list[tuple[str, bool]]:
    """Every case in plain HTTP, and the TLS ones over TLS too."""
    return [(name, False) for name in names] + [(name, True) for name in TLS_CASES if name in names]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (its file, its key's file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


Host = Callable[[str, bool], str]


@pytest.fixture
def host(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    """Starts a trickling host on loopback for a case, plain or TLS (then trusted by requests and
    by callbacks); returns its base URL. Every host stops when the test ends."""
    stop = threading.Event()
    opened: list[socket.socket] = []

    def serve(conn: socket.socket, head: bytes, tail: bytes, tls: ssl.SSLContext | None) -> None:
        try:
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
                opened.append(conn)
            request = b""
            while b"\r\n\r\n" not in request:
                got = conn.recv(4096)
                if not got:
                    return
                request += got
            conn.sendall(head)
            for byte in tail:
                if stop.wait(TRICKLE_S):
                    return
                conn.sendall(bytes([byte]))
            stop.wait(30)  # sent all; hold the connection open until the test ends
        except OSError:  # the client cut its side
            return

    def start(case: str, tls: bool) -> str:
        head, tail = CASES[case]
        context = None
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*certificate)
            trusted = ssl.create_default_context(cafile=str(certificate[0]))
            monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: trusted)
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
        listener = socket.create_server(("127.0.0.1", 0))
        opened.append(listener)
        serve_connections(listener, stop, lambda conn: serve(conn, head, tail, context), opened)
        scheme = "https" if tls else "http"
        return f"{scheme}://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    stop.set()
    for sock in opened:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it, close alone may not
        sock.close()


def within_the_deadline(started: float) -> None:
    """Ended by the deadline: not before it, and within a second after it."""
    elapsed = time.monotonic() - started
    assert DEADLINE * 0.9 <= elapsed <= DEADLINE + 1.0, f"ended after {elapsed:.2f}s"


@pytest.mark.parametrize(("case", "tls"), cases(list(CASES)))
def test_a_trickling_download_is_abandoned_at_its_deadline(
    host: Host, case: str, tls: bool
) -> None:
    download = Downloader(
        timeout=(1.0, 2.0), max_bytes=10**6, total_s=DEADLINE, require_https=False
    )
    url = host(case, tls)
    started = time.monotonic()
    with pytest.raises(DownloadTimeout, match="not finished within"):
        download(f"{url}/transcript.json", io.BytesIO())
    within_the_deadline(started)


@pytest.mark.parametrize(("case", "tls"), cases(list(CASES)))
def test_a_trickling_recall_api_answer_ends_with_an_error_at_the_deadline(
    host: Host, case: str, tls: bool, tmp_path: Path
) -> None:
    """The call's deadline is its read timeout (RECALL_HTTP_TIMEOUT_S): a byte every TRICKLE_S
    never lets the read timeout fire, only the deadline."""
    settings = load_settings(
        REDIS_URL="redis://127.0.0.1:9/0",  # never used: no limiter
        RECALL_API_KEY="k",
        RECALL_API_BASE_URL=host(case, tls),
        TRANSCRIPTS_STORE=str(tmp_path / "store"),
        RECALL_HTTP_TIMEOUT_S=DEADLINE,
    )
    client = recall_client(settings)
    started = time.monotonic()
    with pytest.raises(RetryableError, match="did not answer in time"):  # never a short answer
        client.retrieve_transcript("t1", Quota())
    within_the_deadline(started)


@pytest.mark.parametrize(("case", "tls"), cases(list(HEADERS)))
def test_a_callback_whose_answer_trickles_its_headers_ends_at_the_deadline(
    host: Host, case: str, tls: bool
) -> None:
    """Only the status line and headers are read; a byte every TRICKLE_S never lets the read
    timeout (the attempt's timeout too) fire, only the deadline. Without a whole status line the
    attempt has timed out; after one, the cut may read as the end of the headers (send.py says)."""
    url = f"{host(case, tls)}/hook"
    delivery = Delivery(id="d", job_id="j", event_id="msg_1", url=url, destination="x", body="{}")
    loopback = Guard([ipaddress.ip_network("127.0.0.1/32")])
    sender = Sender("whsec_dGVzdA==", loopback, timeout_s=DEADLINE)
    started = time.monotonic()
    attempt = sender.attempt(delivery)
    within_the_deadline(started)
    if case.endswith("status line"):
        assert not attempt.delivered and attempt.status == f"timeout after {DEADLINE:g}s"


def test_a_callback_is_delivered_on_its_headers_however_its_body_trickles(host: Host) -> None:
    url = f"{host('close, sized', False)}/hook"
    delivery = Delivery(id="d", job_id="j", event_id="msg_1", url=url, destination="x", body="{}")
    sender = Sender("whsec_dGVzdA==", Guard([ipaddress.ip_network("127.0.0.1/32")]))
    started = time.monotonic()
    attempt = sender.attempt(delivery)
    assert attempt.delivered and attempt.status == 200
    assert time.monotonic() - started < DEADLINE
