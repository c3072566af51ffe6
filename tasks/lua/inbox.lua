-- The inbox of accepted webhook events (tasks/inbox.py): keep an event until a worker applied it,
-- and set it aside as a dead letter once it was sent too often without being applied.
-- KEYS[1] the inbox (hash: event JSON by id)   KEYS[2] the inbox's due-set (when to re-send)
-- KEYS[3] deliveries (hash: times sent, by id)  KEYS[4] dead letters (hash: event JSON by id)
-- ARGV[1] command, ARGV[2] re-send after (seconds); the rest per command, below. Times are
-- Redis's clock.

local inbox, inbox_due, deliveries, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local command, resend = ARGV[1], tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local function keep(id, event)
  redis.call('HSET', inbox, id, event)
  redis.call('ZADD', inbox_due, now + resend, id)
  redis.call('HSET', deliveries, id, 1)
end

-- put: KEYS[5] the event's seen mark, KEYS[6] the events queue, KEYS[7] the webhook counters.
-- ARGV[3] the ingest message, ARGV[4] the dedupe TTL, ARGV[5] event id, ARGV[6] event JSON.
-- The seen mark, the kept event and the message are written together or not at all; 1 if new.
if command == 'put' then
  if not redis.call('SET', KEYS[5], '1', 'NX', 'EX', ARGV[4]) then
    redis.call('HINCRBY', KEYS[7], 'duplicate', 1)
    return 0
  end
  keep(ARGV[5], ARGV[6])
  redis.call('LPUSH', KEYS[6], ARGV[3])
  redis.call('HINCRBY', KEYS[7], 'enqueued', 1)
  return 1
end

-- claim: the events still not applied whose re-send time has come, each pushed one interval
-- ahead and counted; one already sent ARGV[4] times becomes a dead letter instead. ARGV[3]
-- limit. Returns {id, event, id, event, ...} to send again.
if command == 'claim' then
  local ids = redis.call('ZRANGEBYSCORE', inbox_due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
  local out = {}
  for _, id in ipairs(ids) do
    local event = redis.call('HGET', inbox, id)
    if not event then
      redis.call('ZREM', inbox_due, id)
      redis.call('HDEL', deliveries, id)
    elseif (tonumber(redis.call('HGET', deliveries, id)) or 0) >= tonumber(ARGV[4]) then
      redis.call('HSET', dead, id, event)
      redis.call('HDEL', inbox, id)
      redis.call('ZREM', inbox_due, id)
      redis.call('HDEL', deliveries, id)
    else
      redis.call('ZADD', inbox_due, now + resend, id)
      redis.call('HINCRBY', deliveries, id, 1)
      table.insert(out, id)
      table.insert(out, event)
    end
  end
  return out
end

-- replay: dead letters back into the inbox, each with a fresh count and its message sent.
-- KEYS[5] the events queue. ARGV[3..] pairs: event id, ingest message. Returns how many.
if command == 'replay' then
  local replayed = 0
  for i = 3, #ARGV, 2 do
    local event = redis.call('HGET', dead, ARGV[i])
    if event then
      redis.call('HDEL', dead, ARGV[i])
      keep(ARGV[i], event)
      redis.call('LPUSH', KEYS[5], ARGV[i + 1])
      replayed = replayed + 1
    end
  end
  return replayed
end

-- applied: ARGV[3] event id. Its effects are in Redis: forget it.
if command == 'applied' then
  redis.call('HDEL', inbox, ARGV[3])
  redis.call('ZREM', inbox_due, ARGV[3])
  redis.call('HDEL', deliveries, ARGV[3])
  return 1
end

return redis.error_reply('inbox.lua: unknown command ' .. tostring(command))
