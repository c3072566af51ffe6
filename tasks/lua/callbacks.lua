-- Callback deliveries (tasks/callbacks/deliveries.py): each one event to one destination, due at
-- its next attempt, paced per destination; and the outbox of finished jobs they come from.
-- KEYS[1] the deliveries' due-set   ARGV[1] command; the rest per command, below.
-- Times are Redis's clock, in seconds.

local due, command = KEYS[1], ARGV[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

-- outbox: take finished jobs whose news is not sent on yet, each pushed a lease ahead so one
-- sweeper takes it. KEYS[2] the outbox. ARGV[2] limit, ARGV[3] lease. Returns the members.
if command == 'outbox' then
  local members = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
  for _, member in ipairs(members) do redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), member) end
  return members
end

-- create: a delivery, unless it exists (the same event sent on twice). KEYS[2] its hash.
-- ARGV[2] fields (JSON object of strings), ARGV[3] delay before its first attempt, ARGV[4] id.
if command == 'create' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
  for name, value in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', KEYS[2], name, value) end
  local at = now + tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], 'state', 'pending', 'attempts', 0, 'next_attempt_at', at)
  redis.call('ZADD', due, at, ARGV[4])
  return 1
end

-- claim: due deliveries to attempt now, at most ARGV[2]; at most ARGV[4] at a time to one
-- destination, so a slow or dead receiver holds back only its own. ARGV[3] lease (an attempt
-- that outlives it, its worker dead, is made again), ARGV[5] delivery-hash prefix, ARGV[6]
-- destination busy-set prefix. Returns the ids.
if command == 'claim' then
  local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, 4 * tonumber(ARGV[2]))
  local lease, cap, out = tonumber(ARGV[3]), tonumber(ARGV[4]), {}
  for _, id in ipairs(ids) do
    if #out >= tonumber(ARGV[2]) then break end
    local fields = redis.call('HMGET', ARGV[5] .. id, 'state', 'destination')
    if fields[1] ~= 'pending' then
      redis.call('ZREM', due, id)
    else
      local busy = ARGV[6] .. fields[2]
      redis.call('ZREMRANGEBYSCORE', busy, '-inf', now)
      if redis.call('ZCARD', busy) >= cap then
        local first = redis.call('ZRANGE', busy, 0, 0, 'WITHSCORES')
        redis.call('ZADD', due, math.min(tonumber(first[2]), now + 1), id)
      else
        redis.call('ZADD', busy, now + lease, id)
        redis.call('PEXPIRE', busy, math.ceil(lease * 1000) + 1000)
        redis.call('ZADD', due, now + lease, id)
        table.insert(out, id)
      end
    end
  end
  return out
end

-- attempted: the outcome of an attempt. KEYS[2] the delivery's hash, KEYS[3] its destination's
-- busy-set, KEYS[4] the failed deliveries. ARGV[2] id, ARGV[3] 'delivered' or 'failed',
-- ARGV[4] last status, ARGV[5] the schedule (JSON list of delays, the first attempt's first),
-- ARGV[6] how long a finished delivery is kept. Returns 'delivered', 'retry' or 'failed'.
if command == 'attempted' then
  local id = ARGV[2]
  redis.call('ZREM', KEYS[3], id)
  if redis.call('HGET', KEYS[2], 'state') ~= 'pending' then return false end
  local attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
  redis.call('HSET', KEYS[2], 'last_status', ARGV[4])
  local schedule = cjson.decode(ARGV[5])
  local outcome = 'retry'
  if ARGV[3] == 'delivered' then
    outcome = 'delivered'
  elseif attempts >= #schedule then
    outcome = 'failed'
    redis.call('ZADD', KEYS[4], now, id)
  end
  if outcome == 'retry' then
    local at = now + schedule[attempts + 1]
    redis.call('HSET', KEYS[2], 'next_attempt_at', at)
    redis.call('ZADD', due, at, id)
  else
    redis.call('HSET', KEYS[2], 'state', outcome)
    redis.call('HDEL', KEYS[2], 'next_attempt_at')
    redis.call('ZREM', due, id)
    redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[6])))
  end
  return outcome
end

-- retry: every failed delivery (KEYS[2]) starts its schedule again, due now. ARGV[2] the
-- delivery-hash prefix. Returns how many.
if command == 'retry' then
  local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
  local retried = 0
  for _, id in ipairs(ids) do
    local hash = ARGV[2] .. id
    if redis.call('HGET', hash, 'state') == 'failed' then
      redis.call('HSET', hash, 'state', 'pending', 'attempts', 0, 'next_attempt_at', now)
      redis.call('PERSIST', hash)
      redis.call('ZADD', due, now, id)
      retried = retried + 1
    end
    redis.call('ZREM', KEYS[2], id)
  end
  return retried
end

return redis.error_reply('callbacks.lua: unknown command ' .. tostring(command))
