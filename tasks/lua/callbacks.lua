-- Callback deliveries (tasks/callbacks/deliveries.py): each one event to one destination, due at
-- its next attempt, paced per destination; and the outbox of finished jobs they come from.
-- KEYS[1] the deliveries' due-set   ARGV[1] command; the rest per command, below.
-- Times are Redis's clock, in seconds.

local due, command = KEYS[1], ARGV[1]
local SCAN = 2000  -- due deliveries one claim looks at, at most
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

-- Pacing per destination: at most ARGV cap attempts in flight to one destination (1 while its
-- last attempt failed: a dead or slow receiver is probed, not hammered), tracked in its busy-set
-- (ids by lease end). A delivery due while its destination has no room is parked in the
-- destination's parked-set (ids by due time), out of the due-set, so a backlog to one
-- destination never stands in front of the others; it goes back to the due-set when an attempt
-- there ends, or, if its worker died, when that attempt's lease does (the parked-destinations
-- set holds that time).

-- room: attempts the destination may start now.
local function room(busy, failing, cap)
  redis.call('ZREMRANGEBYSCORE', busy, '-inf', now)
  if redis.call('EXISTS', failing) == 1 then cap = 1 end
  return cap - redis.call('ZCARD', busy)
end

-- unpark: up to n of the destination's parked deliveries back in the due-set, at their times.
local function unpark(dest, parked, busy, parked_dests, n)
  if n > 0 then
    local moved = redis.call('ZPOPMIN', parked, n)
    for i = 1, #moved, 2 do redis.call('ZADD', due, tonumber(moved[i + 1]), moved[i]) end
  end
  if redis.call('ZCARD', parked) == 0 then
    redis.call('ZREM', parked_dests, dest)
  else
    local first = redis.call('ZRANGE', busy, 0, 0, 'WITHSCORES')
    redis.call('ZADD', parked_dests, first[2] and tonumber(first[2]) or now, dest)
  end
end

-- claim: due deliveries to attempt now, at most ARGV[2]. ARGV[3] lease (an attempt that
-- outlives it, its worker dead, is made again), ARGV[4] cap, ARGV[5] delivery-hash prefix,
-- ARGV[6] busy-set prefix, ARGV[7] parked-set prefix, ARGV[8] failing-flag prefix, ARGV[9] the
-- parked-destinations set. Returns the ids.
if command == 'claim' then
  local limit, lease, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local hashes, busy, parked, failing, parked_dests = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
  for _, dest in ipairs(redis.call('ZRANGEBYSCORE', parked_dests, '-inf', now, 'LIMIT', 0, 100)) do
    local free = room(busy .. dest, failing .. dest, cap)
    unpark(dest, parked .. dest, busy .. dest, parked_dests, math.max(0, free))
  end
  -- Every id looked at leaves the due-set's head (claimed: a lease ahead; parked; or gone), so
  -- each batch is new; at most SCAN looked at per call.
  local out, looked = {}, 0
  while #out < limit and looked < SCAN do
    local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, 100)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
      if #out >= limit then break end
      looked = looked + 1
      local fields = redis.call('HMGET', hashes .. id, 'state', 'destination')
      if fields[1] ~= 'pending' then
        redis.call('ZREM', due, id)
      else
        local dest = fields[2]
        if room(busy .. dest, failing .. dest, cap) <= 0 then
          redis.call('ZADD', parked .. dest, redis.call('ZSCORE', due, id), id)
          redis.call('ZREM', due, id)
          unpark(dest, parked .. dest, busy .. dest, parked_dests, 0)
        else
          redis.call('ZADD', busy .. dest, now + lease, id)
          redis.call('PEXPIRE', busy .. dest, math.ceil(lease * 1000) + 1000)
          redis.call('ZADD', due, now + lease, id)
          table.insert(out, id)
        end
      end
    end
  end
  return out
end

-- attempted: the outcome of an attempt. KEYS[2] the delivery's hash, KEYS[3] its destination's
-- busy-set, KEYS[4] the failed deliveries, KEYS[5] the destination's parked-set, KEYS[6] its
-- failing flag, KEYS[7] the parked-destinations set. ARGV[2] id, ARGV[3] 'delivered' or
-- 'failed', ARGV[4] last status, ARGV[5] the schedule (JSON list of delays, the first
-- attempt's first), ARGV[6] how long a finished delivery is kept, ARGV[7] the destination,
-- ARGV[8] cap, ARGV[9] how long a failed attempt keeps the destination at one attempt at a
-- time. Returns 'delivered', 'retry' or 'failed'.
if command == 'attempted' then
  local id = ARGV[2]
  redis.call('ZREM', KEYS[3], id)
  if ARGV[3] == 'delivered' then
    redis.call('DEL', KEYS[6])
  else
    redis.call('SET', KEYS[6], 1, 'EX', math.ceil(tonumber(ARGV[9])))
  end
  local free = room(KEYS[3], KEYS[6], tonumber(ARGV[8]))
  unpark(ARGV[7], KEYS[5], KEYS[3], KEYS[7], math.max(0, free))
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
