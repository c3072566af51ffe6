"""`POST /webhooks/recall[/{workspace}]`: verify the signature with that workspace's secrets,
parse, dedupe and enqueue atomically, answer. `/webhooks/recall` is the workspace `default`."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tasks.events import InvalidEvent, parse_event_json
from tasks.inbox import Inbox
from tasks.metrics import Metrics
from tasks.names import DEFAULT

log = logging.getLogger(__name__)


class SignatureError(Exception):
    """The webhook is not signed by any of our secrets, or its timestamp is off."""


class Verifier:
    """Standard Webhooks / Svix verification with every secret of a rotation."""

    def __init__(self, secrets: list[str]) -> None:
        self._hooks = [Webhook(secret) for secret in secrets]

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


bp = Blueprint("webhooks", __name__)


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


@bp.post("/webhooks/recall")
def receive_default() -> tuple[Response, int]:
    return receive(DEFAULT)


@bp.post("/webhooks/recall/<workspace>")
def receive(workspace: str) -> tuple[Response, int]:
    verifier: Verifier | None = current_app.extensions["verifiers"].get(workspace)
    if verifier is None:
        return _error(404, f"no workspace {workspace[:40]!r} takes webhooks here")
    inbox: Inbox = current_app.extensions["inbox"]
    metrics: Metrics = current_app.extensions["metrics"].for_workspace(workspace)
    body = request.get_data(cache=False)
    headers = webhook_headers(request.headers)
    try:
        verifier.verify(body, headers)
    except SignatureError as exc:
        metrics.webhook("unauthorized")
        return _error(401, str(exc))
    metrics.webhook_verified()
    try:
        event = parse_event_json(body)
        text = body.decode()  # kept as sent (pydantic-core has checked it is UTF-8 JSON)
    except (ValueError, InvalidEvent) as exc:
        metrics.webhook("malformed")
        return _error(400, f"malformed event: {exc}")
    webhook_id = headers.get("webhook-id") or hashlib.sha256(body).hexdigest()
    try:
        if not event.handled:
            inbox.count_ignored(event.event, workspace)
            return _status("ignored"), 200
        recording = event.data.recording
        summary = repr([event.event, recording.id if recording else None, workspace])
        added = inbox.put(webhook_id, text, summary, workspace)
    except redis.RedisError as exc:
        log.error("webhook %s not enqueued, answering 503: %s", webhook_id, type(exc).__name__)
        metrics.webhook("unavailable")  # counted only if Redis is back by then
        return _error(503, "queue unavailable, retry later")
    return _status("enqueued" if added else "duplicate"), 200


def _status(status: str) -> Response:
    """`{"status": ...}`, without the JSON provider (this is the hot path)."""
    return Response(f'{{"status":"{status}"}}', mimetype="application/json")
