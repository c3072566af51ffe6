"""One callback attempt (tasks/callbacks/send.py): what counts as delivered, how it is signed
during a secret rotation, and how long it waits on a destination that failed before."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tasks.callbacks.guard import Guard
from tasks.callbacks.model import Delivery, Outcome
from tasks.callbacks.send import CONNECT_S, FAILING_CONNECT_S, Sender

LOOPBACK = Guard([ipaddress.ip_network("127.0.0.1/32")])
NEW, OLD = "whsec_bmV3LXNlY3JldC1rZXk=", "whsec_b2xkLXNlY3JldC1rZXk="


def delivery(url: str, failing: bool = False) -> Delivery:
    return Delivery(
        id="d", job_id="j", event_id="msg_1", url=url, destination="x", body="{}", failing=failing
    )


@pytest.fixture
def trickling() -> Iterator[str]:
    """A receiver that sends `200 OK`, then one header byte every 0.3 s, never ending them."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.3):
                try:
                    connection.sendall(b"X")
                except OSError:
                    return

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    stop.set()
    server.close()
    thread.join(5)


def test_an_answer_cut_mid_headers_by_the_deadline_is_never_delivered(
    trickling: str,
) -> None:
    """As the review reproduced it: after the cut, http.client reads the end of the stream as
    the end of the headers and returns the status line it had; that is no answer."""
    attempt = Sender(NEW, LOOPBACK, timeout_s=1.0).attempt(delivery(trickling))
    assert attempt.outcome == Outcome.FAILED and attempt.status == "timeout after 1s"


def test_during_a_rotation_every_request_verifies_with_the_new_secret_and_the_old() -> None:
    sender = Sender(f"{NEW}, {OLD}", LOOPBACK)
    when = datetime.now(UTC)
    headers = sender.headers(delivery("https://x.example/"), when)
    assert headers["webhook-signature"].count("v1,") == 2
    for secret in (NEW, OLD):
        assert Webhook(secret).verify(b"{}", headers) == {}


def connecting_with(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the connect timeout of each connection made (none is)."""
    timeouts: list[float] = []

    def record(address: Any, timeout: float, *args: Any, **kwargs: Any) -> None:
        timeouts.append(timeout)
        raise OSError("nothing listens")

    monkeypatch.setattr("urllib3.util.connection.create_connection", record)
    return timeouts


def test_a_destination_that_failed_before_gets_a_shorter_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timeouts = connecting_with(monkeypatch)
    sender = Sender(NEW, LOOPBACK)
    for failing in (False, True):
        attempt = sender.attempt(delivery("http://127.0.0.1:9/hook", failing=failing))
        assert attempt.outcome == Outcome.FAILED
    assert timeouts == [CONNECT_S, FAILING_CONNECT_S]


def test_a_url_that_cannot_be_sent_fails_its_attempt_instead_of_escaping_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host name outside Latin-1 (as a Host header cannot carry it) used to raise out of the
    attempt: never counted, its delivery made again every lease, for ever."""
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "ħost.example" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with socket.create_server(("127.0.0.1", 0)) as server:
        url = f"http://ħost.example:{server.getsockname()[1]}/hook"
        attempt = Sender(NEW, LOOPBACK).attempt(delivery(url))
    assert attempt.outcome == Outcome.FAILED and attempt.status == "UnicodeEncodeError"
