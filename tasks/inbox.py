"""Accepted webhook events, kept until a worker has applied them.

The receiver stores each new event here and pushes its ingest message in the same Lua command
(tasks/inbox.lua). The message alone is not enough: kombu's Redis transport pops a message before it
records it as unacknowledged, so a Redis crash between the two loses it. A worker deletes the event
once applied; the sweeper looks at any event still here after INBOX_RESEND_S, and sends it again if
its message is provably lost (as steps are: tasks/jobs/sending.py) or was taken by a worker and not
applied. A message waiting in a backlog is never copied. An event sent INBOX_MAX_DELIVERIES times
and never applied (a bug, or a body no worker can read) becomes a dead letter: kept, counted by
`recall_transcribe_inbox_dead_events`, listed and replayed by `recall-transcribe events dead
[--replay]`, never re-sent for ever.
"""

from __future__ import annotations

import hashlib
from typing import cast

import redis
from redis.client import Pipeline

from tasks import keys, scripts
from tasks.messages import ingest_message
from tasks.metrics import labelled
from tasks.names import DEFAULT, EVENTS_QUEUE
from tasks.replicas import replicated
from tasks.settings import Settings

INBOX_KEYS = [
    keys.INBOX,
    keys.INBOX_DUE,
    keys.INBOX_DELIVERIES,
    keys.INBOX_DEAD,
    keys.INBOX_SENT,
    keys.INBOX_SEQ,
    keys.INBOX_TAKEN,
    EVENTS_QUEUE,
    keys.KOMBU_UNACKED,
]


def event_id_for(webhook_id: str, workspace: str = DEFAULT) -> str:
    """A short fixed-size id for a workspace's webhook id (any length, any characters; never a
    NUL, which no HTTP header carries, so a workspace's ids never meet another's)."""
    scoped = webhook_id if workspace == DEFAULT else f"{workspace}\x00{webhook_id}"
    return hashlib.sha256(scoped.encode()).hexdigest()[:32]


def kept(workspace: str, event_json: str) -> str:
    """An event as the inbox keeps it: its workspace, a newline, its JSON as it came."""
    return f"{workspace}\n{event_json}"


def unkept(text: str) -> tuple[str, str]:
    """(workspace, event JSON) of a kept event; an event kept before workspaces existed is bare
    JSON (no workspace name starts with `{`), and the default workspace's."""
    if text.startswith("{"):
        return DEFAULT, text
    workspace, _, event_json = text.partition("\n")
    return workspace, event_json


class Inbox:
    """Accepted events not yet applied by a worker, and the dead letters."""

    def __init__(
        self,
        client: redis.Redis,
        resend_s: float,
        dedupe_ttl_s: int,
        max_deliveries: int = 10,
        min_replicas: int = 0,
    ) -> None:
        self._redis = client
        self._resend_s = resend_s
        self._ttl = dedupe_ttl_s
        self._max_deliveries = max_deliveries
        self._replicas = min_replicas
        self._script = scripts.register(client, __name__, "inbox.lua")

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> Inbox:
        return cls(
            client,
            settings.INBOX_RESEND_S,
            settings.WEBHOOK_DEDUPE_TTL_S,
            settings.INBOX_MAX_DELIVERIES,
            settings.REDIS_MIN_REPLICAS,
        )

    def _run(
        self,
        command: str,
        extra_keys: list[str],
        *args: str | float,
        client: redis.Redis | Pipeline | None = None,
    ) -> object:
        return self._script(
            keys=[*INBOX_KEYS, *extra_keys], args=[command, self._resend_s, *args], client=client
        )

    def put(
        self, webhook_id: str, event_json: str, summary: str = "", workspace: str = DEFAULT
    ) -> bool:
        """Keep and enqueue a workspace's event unless its webhook id was seen; True if it is
        new. `summary` is what Flower shows as the ingest task's arguments. With
        REDIS_MIN_REPLICAS, it returns only once that many replicas have the event (a duplicate
        too: its count is a write, and replication keeps order), else raises `NotReplicated`."""
        event_id = event_id_for(webhook_id, workspace)
        message, task_id = ingest_message(event_json, event_id, workspace, summary)
        args: list[str | float] = [message, self._ttl, event_id, kept(workspace, event_json)]
        args += [task_id, labelled("enqueued", workspace), labelled("duplicate", workspace)]
        added = replicated(
            self._redis,
            self._replicas,
            lambda pipe: self._run(
                "put", [keys.webhook_seen(event_id), keys.METRIC_WEBHOOKS], *args, client=pipe
            ),
        )
        return bool(added)

    def count_ignored(self, event_type: str, workspace: str = DEFAULT) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hincrby(keys.EVENTS_IGNORED, event_type[:100], 1)
        pipe.hincrby(keys.METRIC_WEBHOOKS, labelled("ignored", workspace), 1)
        pipe.execute()

    def taken(self, event_id: str, task_id: str) -> None:
        """A worker took the event's message (it is no longer on its way)."""
        self._run("taken", [], event_id, task_id)

    def applied(self, event_id: str) -> None:
        """The event's effects are in Redis: forget it."""
        self._run("applied", [], event_id)

    def resend_due(self, limit: int = 200) -> int:
        """Send again the events not applied whose message is provably lost, or was taken and
        not applied within an interval (those sent too often become dead letters instead); a
        message still queued, however long the backlog, is left alone. Returns how many."""
        flat = cast(list[bytes], self._run("claim", [], limit, self._max_deliveries))
        triples: list[str] = []
        for i in range(0, len(flat), 2):
            event_id = flat[i].decode()
            workspace, event_json = unkept(flat[i + 1].decode())
            message, task_id = ingest_message(event_json, event_id, workspace)
            triples += [event_id, task_id, message]
        return int(cast(int, self._run("sent", [], *triples))) if triples else 0

    def dead(self) -> dict[str, tuple[str, str]]:
        """The dead letters: (workspace, event JSON) by event id."""
        raw = cast(dict[bytes, bytes], self._redis.hgetall(keys.INBOX_DEAD))
        return {k.decode(): unkept(v.decode()) for k, v in raw.items()}

    def replay_dead(self) -> int:
        """Put every dead letter back in the inbox, with a fresh count, and send it; returns how
        many."""
        triples: list[str] = []
        for event_id, (workspace, event_json) in self.dead().items():
            message, task_id = ingest_message(event_json, event_id, workspace)
            triples += [event_id, task_id, message]
        return int(cast(int, self._run("replay", [], *triples))) if triples else 0
