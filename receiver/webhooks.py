"""`POST /webhooks/recall`: verify the signature, parse, dedupe and enqueue atomically, answer."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tasks.app import INGEST_TASK
from tasks.events import InvalidEvent, parse_event
from worker.app import EVENTS_QUEUE
from worker.messages import task_message

log = logging.getLogger(__name__)

IGNORED_COUNTER = "rt:stats:events_ignored"

# KEYS: dedupe key, queue, counters. ARGV: message, ttl, event type.
# The dedupe mark and the message are written together or not at all.
_ENQUEUE_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
  return 1
end
return 0
"""


class SignatureError(Exception):
    """The webhook is not signed by any of our secrets, or its timestamp is off."""


class Verifier:
    """Standard Webhooks / Svix verification with every secret of a rotation."""

    def __init__(self, secrets: list[str]) -> None:
        self._hooks = [Webhook(secret) for secret in secrets]

    @property
    def enabled(self) -> bool:
        return bool(self._hooks)

    def verify(self, body: bytes, headers: dict[str, str]) -> None:
        if not self._hooks:
            return
        for hook in self._hooks:
            try:
                hook.verify(body, headers, json_parse=False)
                return
            except (WebhookVerificationError, ValueError, TypeError, IndexError):
                continue
        raise SignatureError("missing or invalid webhook signature")


def webhook_headers(headers: Any) -> dict[str, str]:
    """The `webhook-*` headers, taken from the legacy `svix-*` ones when those are what came."""
    out = {}
    for name in ("id", "timestamp", "signature"):
        value = headers.get(f"webhook-{name}") or headers.get(f"svix-{name}")
        if value:
            out[f"webhook-{name}"] = value
    return out


class Inbox:
    """Pushes an ingest task onto the events queue unless its webhook id was seen."""

    def __init__(self, client: redis.Redis, dedupe_ttl_s: int) -> None:
        self._redis = client
        self._ttl = dedupe_ttl_s
        self._enqueue_once = client.register_script(_ENQUEUE_ONCE)

    def put(self, webhook_id: str, event_type: str, event: dict[str, Any]) -> bool:
        """True if enqueued now, False if this webhook id was already taken."""
        message = task_message(INGEST_TASK, [event], EVENTS_QUEUE)
        key = f"rt:webhook:{hashlib.sha256(webhook_id.encode()).hexdigest()[:32]}"
        added = self._enqueue_once(
            keys=[key, EVENTS_QUEUE, "rt:stats:events"], args=[message, self._ttl, event_type]
        )
        return bool(added)

    def count_ignored(self, event_type: str) -> None:
        self._redis.hincrby(IGNORED_COUNTER, event_type[:100], 1)


bp = Blueprint("webhooks", __name__)


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


@bp.post("/webhooks/recall")
def receive() -> tuple[Response, int]:
    verifier: Verifier = current_app.extensions["verifier"]
    inbox: Inbox = current_app.extensions["inbox"]
    body = request.get_data(cache=False)
    headers = webhook_headers(request.headers)
    try:
        verifier.verify(body, headers)
    except SignatureError as exc:
        return _error(401, str(exc))
    try:
        raw = json.loads(body)
        event = parse_event(raw)
    except (ValueError, InvalidEvent) as exc:
        return _error(400, f"malformed event: {exc}")
    webhook_id = headers.get("webhook-id") or hashlib.sha256(body).hexdigest()
    try:
        if not event.handled:
            inbox.count_ignored(event.event)
            return jsonify(status="ignored"), 200
        added = inbox.put(webhook_id, event.event, raw)
    except redis.RedisError as exc:
        log.error("webhook %s not enqueued, answering 503: %s", webhook_id, type(exc).__name__)
        return _error(503, "queue unavailable, retry later")
    return jsonify(status="enqueued" if added else "duplicate"), 200
