-- Fleet-wide pacing of one Recall endpoint family (tasks/recall/limiter.py): Recall's own sliding
-- window, kept on our side a margin wider, with reservations, all on Redis's clock.
-- KEYS[1] zset of calls made and reserved (score: ms on Redis's clock)
-- KEYS[2] the family's pause (set by a 429)   KEYS[3] a sequence making each member unique
-- ARGV[1] command   ARGV[2] count   ARGV[3] window (ms)   ARGV[4] margin (ms)   ARGV[5] per command
-- acquire and redeem return {wait ms, member}: the call goes `wait` ms from now, in the slot
-- reserved as `member`; member '' means the family is paused for `wait` ms, nothing reserved.

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local calls, pause, seq = KEYS[1], KEYS[2], KEYS[3]
local command = ARGV[1]
local count, span = tonumber(ARGV[2]), tonumber(ARGV[3]) + tonumber(ARGV[4])

redis.call('ZREMRANGEBYSCORE', calls, '-inf', now - span)

-- Reserve `at` for a call; the keys live as long as their latest call matters.
local function add(at)
  local member = at .. ':' .. redis.call('INCR', seq)
  redis.call('ZADD', calls, at, member)
  local last = tonumber(redis.call('ZRANGE', calls, -1, -1, 'WITHSCORES')[2])
  redis.call('PEXPIRE', calls, last - now + span + 1000)
  redis.call('PEXPIRE', seq, last - now + span + 1000)
  return {at - now, member}
end

-- A new slot after every call made and reserved: a span after the call `count` places back.
local function reserve()
  local taken = redis.call('ZCARD', calls)
  local at = now
  if taken >= count then
    local ref = redis.call('ZRANGE', calls, taken - count, taken - count, 'WITHSCORES')
    at = math.max(now, tonumber(ref[2]) + span)
  end
  return add(at)
end

-- The earliest time from `at` when a call fits the window that ends with it, counting every
-- call made or reserved before it: Recall judges each call by the window ending at its arrival.
local function earliest_fit(at)
  for _ = 1, 100 do
    local held = redis.call('ZRANGEBYSCORE', calls, '(' .. (at - span), at, 'WITHSCORES')
    local n = #held / 2
    if n < count then return at end
    at = tonumber(held[2 * (n - count + 1)]) + span  -- when the oldest of them leaves
  end
  return at
end

if command == 'acquire' then
  local paused = redis.call('PTTL', pause)
  if paused > 0 then return {paused, ''} end
  return reserve()
end

-- redeem: ARGV[5] the member a ticket reserved. A slot still ahead stays the caller's; a slot
-- due or past is moved to when the call really goes (a job can come back late), the earliest
-- moment it fits; a pause gives the slot back.
if command == 'redeem' then
  local member = ARGV[5]
  local paused = redis.call('PTTL', pause)
  if paused > 0 then
    redis.call('ZREM', calls, member)
    return {paused, ''}
  end
  local at = redis.call('ZSCORE', calls, member)
  if not at then return reserve() end  -- so late that it left the window
  at = tonumber(at)
  if at > now + tonumber(ARGV[6]) then return {at - now, member} end
  redis.call('ZREM', calls, member)
  return add(earliest_fit(math.max(at, now)))
end

-- release: ARGV[5] a reserved member no call used.
if command == 'release' then
  return redis.call('ZREM', calls, ARGV[5])
end

-- pause: ARGV[5] ms. Pauses merge by their end: a shorter Retry-After never cuts a longer one.
if command == 'pause' then
  local ms = tonumber(ARGV[5])
  if redis.call('PTTL', pause) < ms then redis.call('SET', pause, '1', 'PX', ms) end
  return 1
end

return redis.error_reply('limiter.lua: unknown command ' .. tostring(command))
