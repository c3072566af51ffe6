"""Where callbacks may go: public addresses over https, and the networks an operator allows
(`CALLBACK_ALLOWED_NETWORKS`), where plain http is allowed too.

A callback URL names a host; what it resolves to is checked at every attempt, every address it
resolves to, and the attempt then connects to the address checked, never resolving again, so DNS
rebinding gets nothing. Refused unless allowed: loopback, private, shared (CGNAT), link-local
(cloud metadata lives there: 169.254.169.254, fd00:ec2::254), multicast, reserved and documentation
ranges, and IPv6 forms that embed an IPv4 address (mapped, compatible, SIIT, 6to4, Teredo,
NAT64); outside the allowed networks an IPv6 address must be global unicast (2000::/3). A host
that takes longer than `RESOLVE_TIMEOUT_S` to resolve is refused for this attempt.
"""

from __future__ import annotations

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as Late
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_EMBEDDING = [
    ipaddress.ip_network(net)
    for net in ("2002::/16", "2001::/32", "64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0/96")
]
_UNICAST = ipaddress.ip_network("2000::/3")  # every other IPv6 block is special or unassigned
RESOLVE_TIMEOUT_S = 5.0
# getaddrinfo cannot be given a timeout: it runs here, and the attempt stops waiting for it.
_resolver = ThreadPoolExecutor(8, thread_name_prefix="callback-dns")


class Refused(Exception):
    """A callback URL, or what its host resolves to, that callbacks may not reach."""


class Guard:
    """Checks callback URLs and the addresses they resolve to."""

    def __init__(self, allowed: list[Network]) -> None:
        self._allowed = allowed

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

    def check(self, url: str) -> None:
        """Refuse a URL callbacks may never use: not http(s), no host, credentials before the
        host, or plain http to an address outside the allowed networks. An https URL's host is
        checked at each attempt (`resolve`), where it matters: what it resolves to then."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises on a port that is not one)
        except ValueError as exc:
            raise Refused(f"not a URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused("a callback URL must be http(s):// with a host")
        if parts.username is not None or parts.password is not None:
            raise Refused("a callback URL may not carry credentials before its host")
        if parts.scheme == "http":
            self.resolve(url)
            return
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return  # a name: what it resolves to is checked at each attempt
        if not self.allowed(literal, parts.scheme):
            raise Refused(f"{literal} is not a public address")

    def resolve(self, url: str) -> Address:
        """The address to connect to for `url`: every address its host resolves to must be
        allowed, else `Refused`."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise Refused(f"not a URL ({exc})") from None
        host, scheme = parts.hostname or "", parts.scheme
        lookup = _resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            found = lookup.result(RESOLVE_TIMEOUT_S)
        except Late:
            raise Refused(f"{host} did not resolve within {RESOLVE_TIMEOUT_S:g} s") from None
        except (OSError, UnicodeError) as exc:
            raise Refused(f"{host} does not resolve ({exc})") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]
        for address in addresses:
            if not self.allowed(address, scheme):
                where = "outside CALLBACK_ALLOWED_NETWORKS" if scheme == "http" else "not public"
                raise Refused(f"{host} resolves to {address}, {where}")
        if not addresses:
            raise Refused(f"{host} does not resolve")
        return addresses[0]
