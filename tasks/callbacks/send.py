"""One attempt of one callback: signed as Standard Webhooks, to the address the guard checked,
no redirect followed, 10 seconds from connection to the answer's status line and headers; its body
is never read (a 2xx is delivered, however slowly the rest comes)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook
from urllib3 import HTTPConnectionPool, Timeout
from urllib3.exceptions import HTTPError

from tasks.callbacks.guard import Guard, Refused
from tasks.callbacks.model import Delivery
from tasks.deadlines import WatchedHTTPPool, WatchedHTTPSPool, deadline

TIMEOUT_S = 10.0
USER_AGENT = "recall-transcribe/0.1 (callbacks)"


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    status: int | str  # the HTTP status, or what went wrong
    refused: bool = False  # the address was not allowed: nothing was sent


class Sender:
    """Signs and sends callback attempts."""

    def __init__(self, secret: str, guard: Guard) -> None:
        self._hook = Webhook(secret)
        self._guard = guard

    def headers(self, delivery: Delivery, when: datetime) -> dict[str, str]:
        """Standard Webhooks headers: the event's id (every attempt the same), the attempt's
        time, and the signature over both and the body."""
        return {
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": self._hook.sign(delivery.event_id, when, delivery.body),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }

    def attempt(self, delivery: Delivery) -> Attempt:
        try:
            address = self._guard.resolve(delivery.url)
        except Refused as exc:
            return Attempt(False, f"refused: {exc}", refused=True)
        parts = urlsplit(delivery.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = self.headers(delivery, datetime.now(UTC))
        shown = f"[{host}]" if ":" in host else host  # an IPv6 literal, as URLs write it
        headers["Host"] = shown if parts.port is None else f"{shown}:{port}"
        timeout = Timeout(connect=min(5.0, TIMEOUT_S), read=TIMEOUT_S)
        if parts.scheme == "https":
            pool: HTTPConnectionPool = WatchedHTTPSPool(
                str(address),
                port,
                timeout=timeout,
                retries=False,
                maxsize=1,
                server_hostname=host,
                assert_hostname=host,
                ssl_context=ssl.create_default_context(),
            )
        else:
            pool = WatchedHTTPPool(str(address), port, timeout=timeout, retries=False, maxsize=1)
        try:
            with deadline(TIMEOUT_S) as cut:
                try:
                    response = pool.urlopen(
                        "POST",
                        path,
                        body=delivery.body.encode(),
                        headers=headers,
                        redirect=False,
                        retries=False,
                        preload_content=False,
                        assert_same_host=False,
                    )
                except (HTTPError, OSError) as exc:
                    if cut.passed:
                        return Attempt(False, f"timeout after {TIMEOUT_S:g}s")
                    return Attempt(False, f"{type(exc).__name__}")
        finally:
            pool.close()
        return Attempt(200 <= response.status < 300, response.status)
