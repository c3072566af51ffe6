-- The inbox of accepted webhook events (tasks/inbox.py): keep an event until a worker applied it,
-- send it again only when its message is provably lost or was taken and not applied, and set it
-- aside as a dead letter once it was sent too often without being applied.
-- KEYS[1] the inbox (hash: event by id: its workspace, a newline, its JSON)
-- KEYS[2] the inbox's due-set (when to look again)
-- KEYS[3] deliveries (hash: times sent, by id)  KEYS[4] dead letters (hash: event, as kept, by id)
-- KEYS[5] messages on their way (hash: 'seq task-id' by id, until a worker takes it)
-- KEYS[6] the message counter   KEYS[7] the highest number taken   KEYS[8] the events queue
-- KEYS[9] kombu's unacked hash (by delivery tag, which is the task id)
-- ARGV[1] command, ARGV[2] look again after (seconds); the rest per command, below. Times are
-- Redis's clock.

local inbox, inbox_due, deliveries, dead, sent = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local counter, taken, queue, unacked = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local command, again = ARGV[1], tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

-- Push an event's message, noting it is on its way.
local function send(id, task_id, message)
  redis.call('HSET', sent, id, redis.call('INCR', counter) .. ' ' .. task_id)
  redis.call('LPUSH', queue, message)
end

local function keep(id, event)
  redis.call('HSET', inbox, id, event)
  redis.call('ZADD', inbox_due, now + again, id)
  redis.call('HSET', deliveries, id, 1)
end

-- True when an event's message is provably gone: no worker holds it, and the queue is empty or a
-- message sent after it has been taken (a Redis list is first in, first out).
local function lost(on_its_way)
  local seq, task_id = string.match(on_its_way, '^(%d+) (.+)$')
  if redis.call('HEXISTS', unacked, task_id) == 1 then return false end
  if (tonumber(redis.call('GET', taken)) or 0) > tonumber(seq) then return true end
  return redis.call('LLEN', queue) == 0
end

-- put: KEYS[10] the event's seen mark, KEYS[11] the webhook counters. ARGV[3] the ingest
-- message, ARGV[4] the dedupe TTL, ARGV[5] event id, ARGV[6] the event as kept (its workspace,
-- a newline, its JSON), ARGV[7] its task id, ARGV[8] and ARGV[9] the counters' fields for a new
-- event and a duplicate. The seen mark, the kept event and the message are written together or
-- not at all; 1 if new.
if command == 'put' then
  if not redis.call('SET', KEYS[10], '1', 'NX', 'EX', ARGV[4]) then
    redis.call('HINCRBY', KEYS[11], ARGV[9], 1)
    return 0
  end
  keep(ARGV[5], ARGV[6])
  send(ARGV[5], ARGV[7], ARGV[3])
  redis.call('HINCRBY', KEYS[11], ARGV[8], 1)
  return 1
end

-- claim: the events not applied whose time to look again has come. One whose message is still
-- queued or held by a worker is left alone; one whose message is lost, or was taken and not
-- applied, is to be sent again (counted), or, sent ARGV[4] times already, becomes a dead letter.
-- ARGV[3] limit. Returns {id, event, id, event, ...} to send again.
if command == 'claim' then
  local ids = redis.call('ZRANGEBYSCORE', inbox_due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
  local out = {}
  for _, id in ipairs(ids) do
    local event = redis.call('HGET', inbox, id)
    local on_its_way = redis.call('HGET', sent, id)
    if not event then
      redis.call('ZREM', inbox_due, id)
      redis.call('HDEL', deliveries, id)
      redis.call('HDEL', sent, id)
    elseif on_its_way and not lost(on_its_way) then
      redis.call('ZADD', inbox_due, now + again, id)
    elseif (tonumber(redis.call('HGET', deliveries, id)) or 0) >= tonumber(ARGV[4]) then
      redis.call('HSET', dead, id, event)
      redis.call('HDEL', inbox, id)
      redis.call('ZREM', inbox_due, id)
      redis.call('HDEL', deliveries, id)
      redis.call('HDEL', sent, id)
    else
      redis.call('ZADD', inbox_due, now + again, id)
      redis.call('HINCRBY', deliveries, id, 1)
      redis.call('HDEL', sent, id)
      table.insert(out, id)
      table.insert(out, event)
    end
  end
  return out
end

-- sent: the messages of events claimed to be sent again. ARGV[3..] triples: event id, task id,
-- message. An event applied meanwhile gets none. Returns how many were sent.
if command == 'sent' then
  local count = 0
  for i = 3, #ARGV, 3 do
    if redis.call('HEXISTS', inbox, ARGV[i]) == 1 then
      send(ARGV[i], ARGV[i + 1], ARGV[i + 2])
      count = count + 1
    end
  end
  return count
end

-- taken: a worker took an event's message. ARGV[3] event id, ARGV[4] its task id. Returns 1
-- when it was the message on its way (0: a copy, or an event already applied).
if command == 'taken' then
  local on_its_way = redis.call('HGET', sent, ARGV[3])
  if not on_its_way then return 0 end
  local seq, task_id = string.match(on_its_way, '^(%d+) (.+)$')
  if task_id ~= ARGV[4] then return 0 end
  redis.call('HDEL', sent, ARGV[3])
  if tonumber(seq) > (tonumber(redis.call('GET', taken)) or 0) then
    redis.call('SET', taken, seq)
  end
  return 1
end

-- replay: dead letters back into the inbox, each with a fresh count and its message sent.
-- ARGV[3..] triples: event id, task id, ingest message. Returns how many.
if command == 'replay' then
  local replayed = 0
  for i = 3, #ARGV, 3 do
    local event = redis.call('HGET', dead, ARGV[i])
    if event then
      redis.call('HDEL', dead, ARGV[i])
      keep(ARGV[i], event)
      send(ARGV[i], ARGV[i + 1], ARGV[i + 2])
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
  redis.call('HDEL', sent, ARGV[3])
  return 1
end

return redis.error_reply('inbox.lua: unknown command ' .. tostring(command))
