"""Accepted webhook events, kept until a worker has applied them.

The receiver stores each new event here and pushes its ingest message in the same Lua command
(tasks/lua/inbox.lua). The message alone is not enough: kombu's Redis transport pops a message
before it records it as unacknowledged, so a Redis crash between the two loses it. A worker deletes
the event once applied; the sweeper re-sends any event still here after INBOX_RESEND_S. An event
sent INBOX_MAX_DELIVERIES times and never applied (a bug, or a body no worker can read) becomes a
dead letter: kept, counted by `recall_transcribe_inbox_dead_events`, listed and replayed by
`recall-transcribe events dead [--replay]`, never re-sent for ever.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import cast

import redis

from tasks import keys
from tasks.messages import ingest_message
from tasks.names import EVENTS_QUEUE

INBOX_KEYS = [keys.INBOX, keys.INBOX_DUE, keys.INBOX_DELIVERIES, keys.INBOX_DEAD]


def event_id_for(webhook_id: str) -> str:
    """A short fixed-size id for a webhook id (any length, any characters)."""
    return hashlib.sha256(webhook_id.encode()).hexdigest()[:32]


class Inbox:
    """Accepted events not yet applied by a worker, and the dead letters."""

    def __init__(
        self, client: redis.Redis, resend_s: float, dedupe_ttl_s: int, max_deliveries: int = 10
    ) -> None:
        self._redis = client
        self._resend_s = resend_s
        self._ttl = dedupe_ttl_s
        self._max_deliveries = max_deliveries
        script = resources.files("tasks").joinpath("lua/inbox.lua").read_text()
        self._script = client.register_script(script)

    def _run(self, command: str, extra_keys: list[str], *args: str | float) -> object:
        return self._script(keys=[*INBOX_KEYS, *extra_keys], args=[command, self._resend_s, *args])

    def put(self, webhook_id: str, event_json: str, summary: str = "") -> bool:
        """Keep and enqueue the event unless its webhook id was seen; True if it is new.
        `summary` is what Flower shows as the ingest task's arguments."""
        event_id = event_id_for(webhook_id)
        added = self._run(
            "put",
            [keys.webhook_seen(event_id), EVENTS_QUEUE, keys.METRIC_WEBHOOKS],
            ingest_message(event_json, event_id, summary),
            self._ttl,
            event_id,
            event_json,
        )
        return bool(added)

    def count_ignored(self, event_type: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hincrby(keys.EVENTS_IGNORED, event_type[:100], 1)
        pipe.hincrby(keys.METRIC_WEBHOOKS, "ignored", 1)
        pipe.execute()

    def applied(self, event_id: str) -> None:
        """The event's effects are in Redis: forget it."""
        self._run("applied", [], event_id)

    def resend_due(self, limit: int = 200) -> int:
        """Send again the events still not applied an interval after they were last sent
        (those sent too often become dead letters instead); returns how many were sent."""
        flat = cast(list[bytes], self._run("claim", [], limit, self._max_deliveries))
        messages = [
            ingest_message(flat[i + 1].decode(), flat[i].decode()) for i in range(0, len(flat), 2)
        ]
        if messages:
            self._redis.lpush(EVENTS_QUEUE, *messages)
        return len(messages)

    def dead(self) -> dict[str, str]:
        """The dead letters: event JSON by event id."""
        raw = cast(dict[bytes, bytes], self._redis.hgetall(keys.INBOX_DEAD))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def replay_dead(self) -> int:
        """Put every dead letter back in the inbox, with a fresh count, and send it; returns how
        many."""
        pairs: list[str] = []
        for event_id, event_json in self.dead().items():
            pairs += [event_id, ingest_message(event_json, event_id)]
        return int(cast(int, self._run("replay", [EVENTS_QUEUE], *pairs))) if pairs else 0
