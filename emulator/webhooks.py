"""Signed webhook delivery with Svix's retry schedule (scaled down for tests when asked)."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

import requests
from standardwebhooks.webhooks import Webhook

from emulator.scheduler import Scheduler

log = logging.getLogger(__name__)

# Svix: after the first attempt, retries after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
RETRY_SCHEDULE_S = (5, 300, 1800, 7200, 18000, 36000, 36000)


class WebhookSender:
    """Delivers events to the configured URLs; a non-2xx answer or no answer is retried."""

    def __init__(
        self,
        scheduler: Scheduler,
        urls: list[str],
        secret: str | None,
        retry_scale: float = 1.0,
        legacy_headers: bool = False,
    ) -> None:
        self._scheduler = scheduler
        self.urls = urls
        self._hook = Webhook(secret) if secret else None
        self.retry_scale = retry_scale
        self.legacy_headers = legacy_headers
        self._session = requests.Session()
        self._lock = threading.Lock()
        self.log: deque[dict[str, Any]] = deque(maxlen=100_000)

    def send(self, event: dict[str, Any], delay: float = 0.0, copies: int = 1) -> str:
        """Queue an event for every URL; `copies` > 1 delivers the same message id again."""
        msg_id = f"msg_{uuid.uuid4().hex}"
        body = json.dumps(event)
        data = event.get("data", {})
        about = {
            "event": event.get("event"),
            "subject": (data.get("transcript") or data.get("recording") or {}).get("id"),
        }
        for url in self.urls:
            for copy in range(copies):
                attempt = functools.partial(self._attempt, url, msg_id, body, about, 0)
                self._scheduler.call_later(delay + 0.05 * copy, attempt)
        return msg_id

    def _headers(self, msg_id: str, body: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._hook is None:
            return headers
        now = datetime.now(UTC)
        prefix = "svix" if self.legacy_headers else "webhook"
        headers[f"{prefix}-id"] = msg_id
        headers[f"{prefix}-timestamp"] = str(int(now.timestamp()))
        headers[f"{prefix}-signature"] = self._hook.sign(msg_id, now, body)
        return headers

    def _attempt(
        self, url: str, msg_id: str, body: str, about: dict[str, Any], attempt: int
    ) -> None:
        status: int | None = None
        try:
            response = self._session.post(
                url, data=body.encode(), headers=self._headers(msg_id, body), timeout=15
            )
            status = response.status_code
        except requests.RequestException as exc:
            log.info("webhook %s to %s: %s", msg_id, url, type(exc).__name__)
        with self._lock:
            self.log.append(
                {
                    "id": msg_id,
                    **about,
                    "url": url,
                    "attempt": attempt,
                    "status": status,
                    "at": time.time(),
                }
            )
        if status is not None and 200 <= status < 300:
            return
        if attempt < len(RETRY_SCHEDULE_S):
            delay = RETRY_SCHEDULE_S[attempt] * self.retry_scale
            self._scheduler.call_later(
                delay, lambda: self._attempt(url, msg_id, body, about, attempt + 1)
            )
