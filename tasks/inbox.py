"""Accepted webhook events, kept until a worker has applied them.

The receiver stores each new event here and pushes its ingest message in the same Lua command
(tasks/lua/inbox.lua). The message alone is not enough: kombu's Redis transport pops a message
before it records it as unacknowledged, so a Redis crash between the two loses it. A worker deletes
the event once applied; the sweeper re-sends any event still here after INBOX_RESEND_S.
"""

from __future__ import annotations

import hashlib
import time
from importlib import resources
from typing import cast

import redis

from tasks import keys
from tasks.messages import ingest_message
from tasks.names import EVENTS_QUEUE


def event_id_for(webhook_id: str) -> str:
    """A short fixed-size id for a webhook id (any length, any characters)."""
    return hashlib.sha256(webhook_id.encode()).hexdigest()[:32]


class Inbox:
    """Accepted events not yet applied by a worker."""

    def __init__(self, client: redis.Redis, resend_s: float, dedupe_ttl_s: int) -> None:
        self._redis = client
        self._lease = resend_s
        self._ttl = dedupe_ttl_s
        script = resources.files("tasks").joinpath("lua/inbox.lua").read_text()
        self._script = client.register_script(script)

    def put(self, webhook_id: str, event_json: str, summary: str = "") -> bool:
        """Keep and enqueue the event unless its webhook id was seen; True if it is new.
        `summary` is what Flower shows as the ingest task's arguments."""
        event_id = event_id_for(webhook_id)
        now = time.time()
        added = self._script(
            keys=[
                keys.INBOX,
                keys.INBOX_DUE,
                keys.webhook_seen(event_id),
                EVENTS_QUEUE,
                keys.METRIC_WEBHOOKS,
            ],
            args=[
                "put",
                now,
                ingest_message(event_json, event_id, summary),
                self._ttl,
                event_id,
                event_json,
                now + self._lease,
            ],
        )
        return bool(added)

    def count_ignored(self, event_type: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hincrby(keys.EVENTS_IGNORED, event_type[:100], 1)
        pipe.hincrby(keys.METRIC_WEBHOOKS, "ignored", 1)
        pipe.execute()

    def applied(self, event_id: str) -> None:
        """The event's effects are in Redis: forget it."""
        pipe = self._redis.pipeline()
        pipe.hdel(keys.INBOX, event_id)
        pipe.zrem(keys.INBOX_DUE, event_id)
        pipe.execute()

    def resend_due(self, limit: int = 200) -> int:
        """Send again the events still not applied a lease after they were last sent (pushing
        them one lease ahead); returns how many."""
        flat = cast(
            list[bytes],
            self._script(
                keys=[keys.INBOX, keys.INBOX_DUE],
                args=["claim", time.time(), self._lease, limit],
            ),
        )
        messages = [
            ingest_message(flat[i + 1].decode(), flat[i].decode()) for i in range(0, len(flat), 2)
        ]
        if messages:
            self._redis.lpush(EVENTS_QUEUE, *messages)
        return len(messages)
