"""Accepted webhook events, kept until a worker has applied them.

The receiver stores each new event here and pushes its ingest message in the same Lua script. The
message alone is not enough: kombu's Redis transport pops a message before it records it as
unacknowledged, so a Redis crash between the two loses it. A worker deletes the event once applied;
the sweeper re-sends any event still here after a lease.

Keys: `rt:webhook:{id}` (seen marks, kept for the dedupe TTL), `rt:inbox` (hash of event JSON by
id) and `rt:inbox:due` (zset: when to re-send if still not applied).
"""

from __future__ import annotations

import hashlib
import time
from typing import cast

import redis

from worker.app import EVENTS_QUEUE
from worker.messages import task_message_json

INGEST_TASK = "recall.ingest_event"
INBOX = "rt:inbox"
INBOX_DUE = "rt:inbox:due"
IGNORED_COUNTS = "rt:stats:events_ignored"

# KEYS: seen mark, queue, inbox, inbox due. ARGV: message, ttl, id, event, due. The seen mark,
# the kept event and the message are written together or not at all.
_PUT_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[3])
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# KEYS: inbox, inbox due. ARGV: now, lease, limit. Returns [id, event, id, event, ...].
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local event = redis.call('HGET', KEYS[1], id)
  if event then
    redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, event)
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
"""


class Inbox:
    """Accepted events not yet applied by a worker."""

    def __init__(self, client: redis.Redis, lease_s: float, dedupe_ttl_s: int) -> None:
        self._redis = client
        self._lease = lease_s
        self._ttl = dedupe_ttl_s
        self._put_once = client.register_script(_PUT_ONCE)
        self._claim = client.register_script(_CLAIM)

    def put(self, webhook_id: str, event_json: str) -> bool:
        """Keep and enqueue the event unless its webhook id was seen; True if it is new."""
        event_id = hashlib.sha256(webhook_id.encode()).hexdigest()[:32]
        added = self._put_once(
            keys=[f"rt:webhook:{event_id}", EVENTS_QUEUE, INBOX, INBOX_DUE],
            args=[
                _ingest_message(event_id, event_json),
                self._ttl,
                event_id,
                event_json,
                time.time() + self._lease,
            ],
        )
        return bool(added)

    def count_ignored(self, event_type: str) -> None:
        self._redis.hincrby(IGNORED_COUNTS, event_type[:100], 1)

    def applied(self, event_id: str) -> None:
        """The event's effects are in Redis: forget it."""
        pipe = self._redis.pipeline()
        pipe.hdel(INBOX, event_id)
        pipe.zrem(INBOX_DUE, event_id)
        pipe.execute()

    def resend_due(self, limit: int = 200) -> int:
        """Send again the events still not applied a lease after they were last sent (pushing
        them one lease ahead); returns how many."""
        flat = cast(
            list[bytes],
            self._claim(keys=[INBOX, INBOX_DUE], args=[time.time(), self._lease, limit]),
        )
        messages = [
            _ingest_message(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)
        ]
        if messages:
            self._redis.lpush(EVENTS_QUEUE, *messages)
        return len(messages)


def _ingest_message(event_id: str, event_json: str) -> str:
    """The ingest task's message for a kept event, its JSON text embedded as it came."""
    return task_message_json(INGEST_TASK, f'[{event_json},"{event_id}"]', EVENTS_QUEUE)
