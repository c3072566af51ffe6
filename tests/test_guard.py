"""Where callbacks may go, checked on the address a name resolves to at each attempt."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
import time
from typing import Any, ClassVar

import pytest

from tasks.callbacks import guard
from tasks.callbacks.guard import Guard, Refused
from tasks.callbacks.model import Delivery
from tasks.callbacks.send import Sender

LOOPBACK_ALLOWED = Guard([ipaddress.ip_network("127.0.0.1/32")])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.100.100.200",  # Alibaba's metadata, in shared address space
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fe80::1",
        "::ffff:127.0.0.1",
        "2002:7f00:1::",  # 6to4 around 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
        "::a00:1",  # IPv4-compatible 10.0.0.1
        "::ffff:0:a00:1",  # SIIT around 10.0.0.1
        "fec0::1",  # site-local (deprecated, still routed inside some networks)
        "100::1",  # discard-only
    ],
)
def test_private_loopback_link_local_and_metadata_addresses_are_refused(address: str) -> None:
    assert not Guard([]).allowed(ipaddress.ip_address(address), "https")


def test_public_addresses_over_https_and_allowed_networks_over_http_go_through() -> None:
    assert Guard([]).allowed(ipaddress.ip_address("8.8.8.8"), "https")
    assert Guard([]).allowed(ipaddress.ip_address("2606:4700:4700::1111"), "https")
    assert not Guard([]).allowed(ipaddress.ip_address("8.8.8.8"), "http")
    assert LOOPBACK_ALLOWED.allowed(ipaddress.ip_address("127.0.0.1"), "http")
    assert not LOOPBACK_ALLOWED.allowed(ipaddress.ip_address("127.0.0.2"), "http")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "http"),
        ("https://user:pw@example.com/", "credentials"),
        ("http://8.8.8.8/hook", "outside CALLBACK_ALLOWED_NETWORKS"),
        ("https://[", "not a URL"),
        ("https://10.0.0.1/hook", "not a public address"),  # a literal needs no lookup
        ("https://[fd00:ec2::254]/", "not a public address"),
    ],
)
def test_urls_callbacks_may_never_use_are_refused_when_given(url: str, why: str) -> None:
    with pytest.raises(Refused, match=why):
        LOOPBACK_ALLOWED.check(url)


def resolving_to(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> list[str]:
    """Make every name resolve to `addresses`; returns the names looked up."""
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        family = socket.AF_INET6 if ":" in addresses[0] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def delivery(url: str) -> Delivery:
    return Delivery(id="d", job_id="j", event_id="msg_1", url=url, destination="x", body="{}")


def test_a_name_that_resolves_to_a_private_address_gets_no_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: the name is resolved at the attempt, every address it gives is checked,
    and nothing connects when one is refused."""
    asked = resolving_to(monkeypatch, "93.184.216.34", "127.0.0.1")

    def no_connection(*args: Any, **kwargs: Any) -> None:
        pytest.fail("a connection was made")

    monkeypatch.setattr(socket, "create_connection", no_connection)
    sender = Sender("whsec_dGVzdA==", Guard([]))
    attempt = sender.attempt(delivery("https://rebinding.example/hook"))
    assert attempt.refused and not attempt.delivered and "127.0.0.1" in str(attempt.status)
    assert asked == ["rebinding.example"]


def test_the_attempt_connects_to_the_address_checked_not_to_a_second_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = resolving_to(monkeypatch, "127.0.0.1")
    connected: list[Any] = []

    def record(address: Any, *args: Any, **kwargs: Any) -> None:
        connected.append(address)
        raise OSError("nothing listens")

    monkeypatch.setattr("urllib3.util.connection.create_connection", record)
    sender = Sender("whsec_dGVzdA==", LOOPBACK_ALLOWED)
    attempt = sender.attempt(delivery("http://callbacks.example:9/hook"))
    assert not attempt.delivered and asked == ["callbacks.example"]
    assert [address[0] for address in connected] == ["127.0.0.1"]


def test_a_host_that_resolves_too_slowly_fails_the_attempt_within_the_resolve_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """getaddrinfo cannot be given a timeout; a resolver that hangs must not stretch an attempt
    past its lease (the delivery would be attempted twice at once)."""
    release = threading.Event()

    def hanging(*args: Any, **kwargs: Any) -> list[Any]:
        release.wait(30)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    monkeypatch.setattr(guard, "RESOLVE_TIMEOUT_S", 0.2)
    started = time.monotonic()
    attempt = Sender("whsec_dGVzdA==", Guard([])).attempt(delivery("https://slow.example/"))
    release.set()
    assert time.monotonic() - started < 2
    assert attempt.refused and "did not resolve within" in str(attempt.status)


class Answering(http.server.BaseHTTPRequestHandler):
    """Answers 200 at once, then trickles its body; remembers the Host header."""

    hosts: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Answering.hosts.append(self.headers["Host"])
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b"x")
        self.wfile.flush()
        time.sleep(3)  # the rest never matters

    def log_message(self, *args: Any) -> None:
        pass


def test_an_ipv6_literal_is_named_in_brackets_and_a_2xx_counts_however_slow_its_body() -> None:
    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6

    server = Server(("::1", 0), Answering)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        port = server.server_address[1]
        sender = Sender("whsec_dGVzdA==", Guard([ipaddress.ip_network("::1/128")]))
        started = time.monotonic()
        attempt = sender.attempt(delivery(f"http://[::1]:{port}/hook"))
        assert attempt.delivered and attempt.status == 200
        assert time.monotonic() - started < 2
        assert Answering.hosts == [f"[::1]:{port}"]
    finally:
        server.shutdown()
        server.server_close()
