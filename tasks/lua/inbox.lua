-- The inbox of accepted webhook events (tasks/inbox.py): keep an event until a worker applied it.
-- KEYS[1] the inbox (hash: event JSON by id)   KEYS[2] the inbox's due-set (when to re-send)
-- ARGV[1] command, ARGV[2] now; the rest per command, below.

local inbox, inbox_due, command, now = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])

-- put: KEYS[3] the event's seen mark, KEYS[4] the events queue, KEYS[5] the webhook counters.
-- ARGV[3] the ingest message, ARGV[4] the dedupe TTL, ARGV[5] event id, ARGV[6] event JSON,
-- ARGV[7] re-send at. The seen mark, the kept event and the message are written together or not
-- at all; 1 if new.
if command == 'put' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[4]) then
    redis.call('HINCRBY', KEYS[5], 'duplicate', 1)
    return 0
  end
  redis.call('HSET', inbox, ARGV[5], ARGV[6])
  redis.call('ZADD', inbox_due, ARGV[7], ARGV[5])
  redis.call('LPUSH', KEYS[4], ARGV[3])
  redis.call('HINCRBY', KEYS[5], 'enqueued', 1)
  return 1
end

-- claim: the events still not applied whose re-send time has come, each pushed one lease ahead.
-- ARGV[3] lease, ARGV[4] limit. Returns {id, event, id, event, ...}.
if command == 'claim' then
  local ids = redis.call('ZRANGEBYSCORE', inbox_due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
  local out = {}
  for _, id in ipairs(ids) do
    local event = redis.call('HGET', inbox, id)
    if event then
      redis.call('ZADD', inbox_due, now + tonumber(ARGV[3]), id)
      table.insert(out, id)
      table.insert(out, event)
    else
      redis.call('ZREM', inbox_due, id)
    end
  end
  return out
end

return redis.error_reply('inbox.lua: unknown command ' .. tostring(command))
