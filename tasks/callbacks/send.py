"""One attempt of one callback: signed as Standard Webhooks, to the address the guard checked,
no redirect followed, 10 seconds from connection to the answer's status line and headers; its body
is never read (a 2xx is delivered, however slowly the rest comes).

Signed with every secret of CALLBACK_SECRET (`v1,<sig> v1,<sig>`, as Standard Webhooks allows),
so that during a rotation a receiver verifies with either the new secret or the old one."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook
from urllib3 import HTTPConnectionPool, Timeout
from urllib3.exceptions import HTTPError

from tasks.callbacks.guard import Busy, Guard, Refused, Resolver
from tasks.callbacks.model import OPERATOR, Delivery, Outcome
from tasks.deadlines import WatchedHTTPPool, WatchedHTTPSPool, deadline
from tasks.settings import Settings

TIMEOUT_S = 10.0  # an attempt, connection to answer (CALLBACK_TIMEOUT_S)
CONNECT_S = 5.0
FAILING_CONNECT_S = 2.0  # a destination whose last attempt failed: likely to fail again
USER_AGENT = "recall-transcribe/0.1 (callbacks)"


@dataclass(frozen=True)
class Attempt:
    outcome: Outcome
    status: int | str  # the HTTP status, or what went wrong

    @property
    def delivered(self) -> bool:
        return self.outcome == Outcome.DELIVERED

    @property
    def refused(self) -> bool:
        """Nothing was sent: the address was not allowed, or the name did not resolve."""
        return self.outcome == Outcome.REFUSED


class Sender:
    """Signs and sends callback attempts: the operator's URLs checked by `guard`, clients' by
    `client_guard` (the same when not given)."""

    def __init__(
        self,
        secrets: str,
        guard: Guard,
        client_guard: Guard | None = None,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._hooks = [Webhook(s.strip()) for s in secrets.split(",") if s.strip()]
        self._guard = guard
        self._client_guard = client_guard or guard
        self._timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> Sender:
        """The two guards share one resolver, and so its threads."""
        resolver = Resolver()
        return cls(
            ",".join(settings.callback_secrets),
            Guard(settings.callback_networks, resolver),
            Guard(settings.client_callback_networks, resolver),
            settings.CALLBACK_TIMEOUT_S,
        )

    def headers(self, delivery: Delivery, when: datetime) -> dict[str, str]:
        """Standard Webhooks headers: the event's id (every attempt the same), the attempt's
        time, and a signature over both and the body per secret."""
        signatures = (hook.sign(delivery.event_id, when, delivery.body) for hook in self._hooks)
        return {
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": " ".join(signatures),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }

    def attempt(self, delivery: Delivery) -> Attempt:
        guard = self._guard if delivery.client == OPERATOR else self._client_guard
        try:
            address = guard.resolve(delivery.url, delivery.client)
        except Refused as exc:
            return Attempt(Outcome.REFUSED, f"refused: {exc}")
        except Busy as exc:
            return Attempt(Outcome.DEFERRED, f"deferred: {exc}")
        parts = urlsplit(delivery.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = self.headers(delivery, datetime.now(UTC))
        shown = f"[{host}]" if ":" in host else host  # an IPv6 literal, as URLs write it
        headers["Host"] = shown if parts.port is None else f"{shown}:{port}"
        connect = FAILING_CONNECT_S if delivery.failing else CONNECT_S
        timeout = Timeout(connect=min(connect, self._timeout_s), read=self._timeout_s)
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
            with deadline(self._timeout_s) as cut:
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
                except (HTTPError, OSError, ValueError) as exc:  # ValueError: a URL unsendable
                    if cut.passed:
                        return Attempt(Outcome.FAILED, f"timeout after {self._timeout_s:g}s")
                    return Attempt(Outcome.FAILED, f"{type(exc).__name__}")
                # A cut may read as the end of the headers: what came before it is no answer.
                if cut.passed:
                    return Attempt(Outcome.FAILED, f"timeout after {self._timeout_s:g}s")
        finally:
            pool.close()
        delivered = 200 <= response.status < 300
        return Attempt(Outcome.DELIVERED if delivered else Outcome.FAILED, response.status)
