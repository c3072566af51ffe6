"""Recall's webhooks as Recall sends them: the events, signed with a workspace's secret, and
delivered to a receiver."""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import requests
from standardwebhooks.webhooks import Webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk="
WEBHOOK_PATH = "/webhooks/recall"


def recording_done(recording_id: str, bot_id: str | None = None) -> dict[str, Any]:
    return {
        "event": "recording.done",
        "data": {
            "data": {"code": "done", "sub_code": None, "updated_at": "2025-07-17T00:00:00Z"},
            "recording": {"id": recording_id, "metadata": {}},
            "bot": {"id": bot_id or str(uuid.uuid4()), "metadata": {}},
        },
    }


def transcript_event(
    name: str,
    recording_id: str,
    transcript_id: str,
    metadata: dict[str, Any] | None = None,
    sub_code: str | None = None,
) -> dict[str, Any]:
    event = recording_done(recording_id)
    event["event"] = name
    event["data"]["data"]["sub_code"] = sub_code
    event["data"]["transcript"] = {"id": transcript_id, "metadata": metadata or {}}
    return event


def signed(
    event: dict[str, Any] | bytes,
    secret: str = SECRET,
    msg_id: str | None = None,
    timestamp: datetime | None = None,
    legacy: bool = False,
) -> tuple[bytes, dict[str, str]]:
    """A webhook body and the headers Recall would send with it."""
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    when = timestamp or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, when, body.decode())
    prefix = "svix" if legacy else "webhook"
    return body, {
        "Content-Type": "application/json",
        f"{prefix}-id": msg_id,
        f"{prefix}-timestamp": str(int(when.timestamp())),
        f"{prefix}-signature": signature,
    }


def post_webhook(
    receiver_url: str,
    event: dict[str, Any] | bytes,
    secret: str = SECRET,
    msg_id: str | None = None,
    path: str = WEBHOOK_PATH,
    session: requests.Session | None = None,
) -> requests.Response:
    """Deliver one signed event to a receiver once; its answer."""
    body, headers = signed(event, secret, msg_id)
    post = (session or requests).post
    return post(f"{receiver_url}{path}", data=body, headers=headers, timeout=10)


def deliver_recordings_done(
    receiver_url: str,
    recording_ids: list[str],
    threads: int = 16,
    secret: str = SECRET,
    path: str = WEBHOOK_PATH,
) -> None:
    """A signed `recording.done` for each recording, `threads` at once, each sent again (as
    Recall would) until the receiver takes it."""
    sessions: dict[int, requests.Session] = {}

    def deliver(recording_id: str) -> None:
        session = sessions.setdefault(threading.get_ident(), requests.Session())
        event = recording_done(recording_id, f"bot-{recording_id}")
        for _ in range(50):
            answer = post_webhook(receiver_url, event, secret, f"msg_{recording_id}", path, session)
            if answer.status_code < 300:
                return
            time.sleep(0.1)
        raise RuntimeError(f"recording.done for {recording_id} never accepted")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(deliver, recording_ids))
