"""Where callbacks may go, checked on the address a name resolves to at each attempt."""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import socket
import threading
import time
from typing import Any, ClassVar

import pytest

from harness import wait_for
from tasks.callbacks import guard
from tasks.callbacks.guard import Busy, Guard, Refused
from tasks.callbacks.model import Delivery, Outcome
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
        ("http://8.8.8.8/hook", "outside the allowed networks"),
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


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",  # decimal
        "0177.0.0.1",  # octal
        "0x7f.0.0.1",  # hex
        "127.1",  # short
        "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # full-width digits
        "127.0.0.1.",  # trailing dot: a name, resolved (here by a resolver that plays along)
        "0.0.0.0",
        "[::]",
        "[::1]",
        "[::ffff:127.0.0.1]",  # IPv4-mapped
        "[::7f00:1]",  # IPv4-compatible
        "[64:ff9b::a9fe:a9fe]",  # NAT64 around 169.254.169.254
        "[2002:a9fe:a9fe::]",  # 6to4 around 169.254.169.254
        "169.254.169.254",
        "[fe80::1]",
        "[fd12:3456::1]",  # ULA
        "100.64.0.1",  # CGNAT
    ],
)
def test_every_address_form_the_review_tried_is_still_refused(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    """The forms of REVIEW "Held": literals are read as the C library reads them (no resolver),
    names resolve to loopback here, and neither gets past the guard, at submission or attempt."""
    resolving_to(monkeypatch, "127.0.0.1")
    url = f"https://{host}/hook"
    with pytest.raises(Refused):
        Guard([]).resolve(url, "client")
    if host.strip("[]") in {"0.0.0.0", "169.254.169.254", "100.64.0.1"} or ":" in host:
        with pytest.raises(Refused):  # an address written as one is refused when given, too
            Guard([]).check(url, "client")
    with pytest.raises(Refused, match="credentials"):
        Guard([]).check(f"https://user@{host}/hook")


@pytest.fixture
def fast_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "RESOLVE_TIMEOUT_S", 0.3)


def hanging_names(monkeypatch: pytest.MonkeyPatch, slow: str) -> threading.Event:
    """Names ending in `slow` hang (a nameserver that drops queries) until the test ends; other
    names resolve to a public address at once. Returns the event that releases them."""
    release, real = threading.Event(), socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host.endswith(slow):
            release.wait(20)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if host.endswith(".example"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]
        return real(host, port, *args, **kwargs)  # the connection's own, to a checked address

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return release


def in_threads(count: int, run: Any) -> list[threading.Thread]:
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


def test_an_address_literal_never_waits_on_a_resolver_whose_threads_all_hang(
    monkeypatch: pytest.MonkeyPatch, fast_timeout: None
) -> None:
    """As the review reproduced it: lookups of names whose nameserver drops queries fill every
    lookup thread; a delivery to 127.0.0.1 still goes at once."""
    release = hanging_names(monkeypatch, ".slow.example")
    resolver = guard.Resolver(threads=4, per_client=2)
    sender = Sender("whsec_dGVzdA==", Guard([ipaddress.ip_network("127.0.0.1/32")], resolver))

    def hang(i: int) -> None:
        with contextlib.suppress(Busy, Refused):
            resolver.lookup(f"n{i}.slow.example", 443, f"client-{i // 2}")

    threads = in_threads(4, hang)
    try:
        wait_for(lambda: len(resolver._running) == 4, 5, what="every lookup thread hung")
        with pytest.raises(Busy, match="every lookup thread"):  # a name now: put off
            resolver.lookup("fine.example", 443, "another")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answering)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        try:
            started = time.monotonic()
            url = f"http://127.0.0.1:{server.server_address[1]}/hook"
            attempt = sender.attempt(delivery(url))
            assert attempt.delivered and time.monotonic() - started < 2
        finally:
            server.shutdown()
            server.server_close()
            Answering.hosts.clear()
    finally:
        release.set()
        for thread in threads:
            thread.join(5)


def test_one_clients_hanging_lookups_hold_only_its_own_share(
    monkeypatch: pytest.MonkeyPatch, fast_timeout: None
) -> None:
    """A client's slow names take at most its share of lookup threads; its further names are
    put off at once (not after a wait), and another client's names resolve."""
    release = hanging_names(monkeypatch, ".slow.example")
    resolver = guard.Resolver(threads=4, per_client=2)
    busy: list[str] = []

    def hang(i: int) -> None:
        try:
            resolver.lookup(f"n{i}.slow.example", 443, "greedy")
        except Busy as exc:
            busy.append(str(exc))
        except Refused:
            pass

    threads = in_threads(2, hang)
    try:
        wait_for(lambda: len(resolver._running) == 2, 5, what="the client's share taken")
        started = time.monotonic()
        more = in_threads(4, lambda i: hang(i + 2))
        wait_for(lambda: len(busy) == 4, 5, what="the client's other lookups put off")
        assert time.monotonic() - started < 0.25  # at once, not after RESOLVE_TIMEOUT_S
        assert all("this client's lookups" in why for why in busy)
        assert resolver.lookup("other.example", 443, "patient") == [
            ipaddress.ip_address("93.184.216.34")
        ]
    finally:
        release.set()
        for thread in [*threads, *more]:
            thread.join(5)


def test_a_lookup_that_outlives_its_wait_puts_the_attempt_off_and_answers_the_next(
    monkeypatch: pytest.MonkeyPatch, fast_timeout: None
) -> None:
    """getaddrinfo cannot be given a timeout. An attempt waits RESOLVE_TIMEOUT_S for it, then
    is put off (`deferred`: this process's wait, not the destination's answer); the lookup goes
    on, and what it finally answers is what the next attempt of that name gets."""
    release, never = threading.Event(), threading.Event()
    asked: list[str] = []

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        (release if len(asked) == 1 else never).wait(20)  # a second lookup would hang
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    sender = Sender("whsec_dGVzdA==", Guard([]))
    try:
        started = time.monotonic()
        first = sender.attempt(delivery("https://slow.example/"))
        assert time.monotonic() - started < 2
        assert first.outcome == Outcome.DEFERRED and "did not resolve within" in str(first.status)
        release.set()
        time.sleep(0.1)  # the lookup ends, with the nameserver's answer
        second = sender.attempt(delivery("https://slow.example/"))
        assert second.refused and "Temporary failure" in str(second.status)
        assert asked == ["slow.example"]
    finally:
        never.set()


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
