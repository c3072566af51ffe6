"""Where callbacks may go: public addresses over https, and the networks an operator allows
(`CALLBACK_ALLOWED_NETWORKS` for its own URLs, `CALLBACK_CLIENT_ALLOWED_NETWORKS` for clients'),
where plain http is allowed too.

A callback URL names a host; what it resolves to is checked at every attempt, every address it
resolves to, and the attempt then connects to the address checked, never resolving again, so DNS
rebinding gets nothing. Refused unless allowed: loopback, private, shared (CGNAT), link-local
(cloud metadata lives there: 169.254.169.254, fd00:ec2::254), multicast, reserved and documentation
ranges, and IPv6 forms that embed an IPv4 address (mapped, compatible, SIIT, 6to4, Teredo,
NAT64); outside the allowed networks an IPv6 address must be global unicast (2000::/3).

Name resolution is shared fairly (`Resolver`): an address literal, in any form the C library
reads as one, never waits on a resolver; lookups run on threads of their own, a few at once per
client and one per name, so a name whose nameserver drops queries holds only its own. When this
process cannot resolve in time (no thread free for the client, or a lookup still running after
RESOLVE_TIMEOUT_S) the attempt is put off (`Busy`), never counted against its destination; a
lookup that outlives its wait keeps its answer for the next attempt.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_EMBEDDING = [
    ipaddress.ip_network(net)
    for net in ("2002::/16", "2001::/32", "64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0/96")
]
_UNICAST = ipaddress.ip_network("2000::/3")  # every other IPv6 block is special or unassigned
RESOLVE_TIMEOUT_S = 5.0
LOOKUPS = 32  # lookups running at once in one process
LOOKUPS_PER_CLIENT = 2  # ... for one client's names
LATE_KEPT_S = 60.0  # how long the answer of a lookup that outlived its wait is kept
LATE_KEPT = 1024


class Refused(Exception):
    """A callback URL, or what its host resolves to, that callbacks may not reach."""


class Busy(Exception):
    """This process could not resolve the host in time: the attempt is put off, not counted."""


@dataclass
class _Lookup:
    """One getaddrinfo on a thread of its own, which attempts of the same name wait on."""

    client: str
    done: threading.Event = field(default_factory=threading.Event)
    found: list[Address] | None = None
    error: str = "does not resolve"
    missed: bool = False  # a waiter gave up on it: its answer is kept for the next attempt

    def outcome(self) -> list[Address]:
        if self.found is None:
            raise Refused(self.error)  # one each: waiters raise it on threads of their own
        return self.found


class Resolver:
    """Bounded, deduplicated lookups (see the module docstring)."""

    def __init__(self, threads: int = LOOKUPS, per_client: int = LOOKUPS_PER_CLIENT) -> None:
        self._threads = threads
        self._per_client = per_client
        self._lock = threading.Lock()
        self._running: dict[tuple[str, int], _Lookup] = {}
        self._by_client: Counter[str] = Counter()
        self._late: dict[tuple[str, int], tuple[float, _Lookup]] = {}

    def lookup(self, host: str, port: int, client: str) -> list[Address]:
        """Every address `host` resolves to; `Refused` if it does not resolve, `Busy` if this
        process could not resolve it in time."""
        literal = _literal(host)
        if literal is not None:
            return [literal]
        name = (host.lower(), port)
        with self._lock:
            now = time.monotonic()
            for kept, (at, _) in list(self._late.items()):
                if now - at > LATE_KEPT_S:
                    del self._late[kept]
            late = self._late.pop(name, None)
            running = late[1] if late else self._running.get(name)
            if running is None:
                if len(self._running) >= self._threads:
                    raise Busy(f"{host}: every lookup thread is busy")
                if self._by_client[client] >= self._per_client:
                    raise Busy(f"{host}: this client's lookups are all still running")
                running = self._start(name, client)
        if not running.done.wait(RESOLVE_TIMEOUT_S):
            with self._lock:
                running.missed = not running.done.is_set()
            if running.missed:
                raise Busy(f"{host} did not resolve within {RESOLVE_TIMEOUT_S:g} s")
        return running.outcome()

    def _start(self, name: tuple[str, int], client: str) -> _Lookup:
        running = _Lookup(client)
        thread = threading.Thread(
            target=self._run, args=(name, running), name="callback-dns", daemon=True
        )
        self._running[name] = running
        self._by_client[client] += 1
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: as busy as can be
            del self._running[name]
            self._by_client[client] -= 1
            raise Busy(f"{name[0]}: no thread to resolve it on") from None
        return running

    def _run(self, name: tuple[str, int], running: _Lookup) -> None:
        host, port = name
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            running.found = [ipaddress.ip_address(str(f[4][0]).split("%")[0]) for f in found]
        except (OSError, UnicodeError, ValueError) as exc:
            running.error = f"{host} does not resolve ({exc})"
        finally:  # whatever happened, the thread is given back
            with self._lock:
                del self._running[name]
                self._by_client[running.client] -= 1
                if not self._by_client[running.client]:
                    del self._by_client[running.client]
                running.done.set()
                if running.missed:
                    if len(self._late) >= LATE_KEPT:
                        del self._late[next(iter(self._late))]
                    self._late[name] = (time.monotonic(), running)


def _literal(host: str) -> Address | None:
    """The address `host` writes, in any form getaddrinfo reads without a lookup (dotted, short,
    decimal, octal or hex IPv4, full-width digits too, as Python's IDNA encoding maps them;
    IPv6, a zone dropped), else None."""
    if ":" in host:
        try:
            return ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host.encode("idna").decode()))
    except (OSError, UnicodeError, ValueError):
        return None


def _written_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Guard:
    """Checks callback URLs and the addresses they resolve to."""

    def __init__(self, allowed: list[Network], resolver: Resolver | None = None) -> None:
        self._allowed = allowed
        self._resolver = resolver or Resolver()

    def allowed(self, address: Address, scheme: str) -> bool:
        if any(address in network for network in self._allowed):
            return True
        if scheme != "https":
            return False  # plain http only inside the allowed networks
        if address.version == 6 and (
            address not in _UNICAST or any(address in network for network in _EMBEDDING)
        ):
            return False
        return address.is_global and not address.is_multicast

    def check(self, url: str, client: str = "") -> None:
        """Refuse a URL callbacks may never use: not http(s), no host, credentials before the
        host, an address that is not allowed written as one, or plain http to an address
        outside the allowed networks. Any other https host is a name to the jobs API's document,
        checked at each attempt (`resolve`), where it matters: what it resolves to then (the
        C library's other forms of address, `https://2130706433/`, are refused there)."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises on a port that is not one)
        except ValueError as exc:
            raise Refused(f"not a URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused("a callback URL must be http(s):// with a host")
        if parts.username is not None or parts.password is not None:
            raise Refused("a callback URL may not carry credentials before its host")
        if parts.scheme == "http" or _written_address(parts.hostname):
            try:
                self.resolve(url, client)
            except Busy as exc:
                raise Refused(f"{exc}; try again") from None

    def resolve(self, url: str, client: str = "") -> Address:
        """The address to connect to for `url`: every address its host resolves to must be
        allowed, else `Refused`; `Busy` when this process could not resolve it in time."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise Refused(f"not a URL ({exc})") from None
        host, scheme = parts.hostname or "", parts.scheme
        addresses = self._resolver.lookup(host, port, client)
        for address in addresses:
            if not self.allowed(address, scheme):
                named = "" if host == str(address) else f"{host} resolves to "
                why = "outside the allowed networks" if scheme == "http" else "not a public address"
                raise Refused(f"{named}{address}: {why}")
        if not addresses:
            raise Refused(f"{host} does not resolve")
        return addresses[0]
