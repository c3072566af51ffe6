-- Fleet-wide pacing of one Recall endpoint family (tasks/recall/limiter.py): Recall's own sliding
-- window, kept on our side a margin wider, with reservations, all on Redis's clock; and, once
-- Recall has answered 429 below it, a second window learned from those answers.
-- KEYS[1] zset of calls made and reserved (score: ms on Redis's clock; member 'ms:seq', the
--         sequence zero-padded so that calls taken in the same ms sort in the order taken)
-- KEYS[2] the family's pause (set by a 429)   KEYS[3] a sequence making each member unique
-- KEYS[4] the learned pace, a hash: count, window (ms), at (ms of its last change); absent: none
-- ARGV[1] command   ARGV[2] count   ARGV[3] window (ms)   ARGV[4] margin (ms)   ARGV[5] per command
-- acquire and redeem return {wait ms, member}: the call goes `wait` ms from now, in the slot
-- reserved as `member`; member '' means the family is paused for `wait` ms, nothing reserved.

local RECOVER_WINDOWS = 5  -- declared windows without a 429 before the learned count grows
local FORGET_WINDOWS = 50  -- a learned pace left unchanged this long (an idle family) is dropped
local CONFIRM_WINDOWS = 2  -- a first pace is learned only from a 429 that follows another this
                          -- close: one alone (another application's burst) only pauses

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local calls, pause, seq, pace = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local command = ARGV[1]
local declared, span = tonumber(ARGV[2]), tonumber(ARGV[3]) + tonumber(ARGV[4])

-- The windows every call must fit: the declared one (so a settings change always wins) and,
-- when Recall has throttled us below it, the learned one.
local windows = {{count = declared, span = span}}
local stored = redis.call('HMGET', pace, 'count', 'window', 'at')
if stored[1] then
  windows[2] = {count = tonumber(stored[1]), span = tonumber(stored[2]), at = tonumber(stored[3])}
end
local keep = math.max(span, windows[2] and windows[2].span or 0)  -- the history any window needs

redis.call('ZREMRANGEBYSCORE', calls, '-inf', now - keep)

-- Reserve `at` for a call; the keys live as long as their latest call matters.
local function add(at)
  local member = string.format('%d:%012d', at, redis.call('INCR', seq))
  redis.call('ZADD', calls, at, member)
  local last = tonumber(redis.call('ZRANGE', calls, -1, -1, 'WITHSCORES')[2])
  redis.call('PEXPIRE', calls, last - now + keep + 1000)
  redis.call('PEXPIRE', seq, last - now + keep + 1000)
  return {at - now, member}
end

-- A new slot after every call made and reserved: in each window, a span after the call `count`
-- places back.
local function reserve()
  local taken = redis.call('ZCARD', calls)
  local at = now
  for _, window in ipairs(windows) do
    if taken >= window.count then
      local back = taken - window.count
      local ref = redis.call('ZRANGE', calls, back, back, 'WITHSCORES')
      at = math.max(at, tonumber(ref[2]) + window.span)
    end
  end
  return add(at)
end

-- The earliest time from `at` when a call fits every window that holds it: Recall judges each
-- call by the window ending at its arrival. Counted: every call made or reserved before it, and
-- the calls already placed to go before `committed` (redeemed and sleeping their last wait): a
-- call placed late into a gap must not overfill their windows, so it goes after them. Later
-- reservations are not counted: they are placed again when redeemed, behind it.
local function earliest_fit(at, committed)
  for _ = 1, 100 do
    local moved = false
    for _, window in ipairs(windows) do
      local held = redis.call('ZRANGEBYSCORE', calls, '(' .. (at - window.span), at, 'WITHSCORES')
      local n = #held / 2
      if n >= window.count then
        at = tonumber(held[2 * (n - window.count + 1)]) + window.span  -- its oldest call leaves
        moved = true
      else
        local until_ = math.min(at + window.span, committed)
        local later = redis.call('ZRANGEBYSCORE', calls, '(' .. at, '(' .. until_, 'WITHSCORES')
        for i = 2, #later, 2 do
          local placed = tonumber(later[i])
          if redis.call('ZCOUNT', calls, '(' .. (placed - window.span), placed) >= window.count then
            at, moved = placed, true  -- that call's window is full: go after it
            break
          end
        end
      end
    end
    if not moved then return at end
  end
  return at
end

local function learn(count, ms)
  redis.call('HSET', pace, 'count', count, 'window', ms, 'at', now)
  redis.call('PEXPIRE', pace, FORGET_WINDOWS * span)
  windows[2] = {count = count, span = ms, at = now}
end

-- Additive increase, proportional once large: after RECOVER_WINDOWS declared windows without a
-- 429 the learned count grows by a tenth (at least one); at the declared rate it is dropped.
local function recover()
  local window = windows[2]
  if window == nil or now - window.at < RECOVER_WINDOWS * span then return end
  local grown = window.count + math.max(1, math.floor(window.count / 10))
  if grown * span >= declared * window.span then
    redis.call('DEL', pace)
    windows[2] = nil
  else
    learn(grown, window.span)
  end
end

if command == 'acquire' then
  local paused = redis.call('PTTL', pause)
  if paused > 0 then return {paused, ''} end
  recover()
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
  recover()
  local at = redis.call('ZSCORE', calls, member)
  if not at then return reserve() end  -- so late that it left the window
  at = tonumber(at)
  if at > now + tonumber(ARGV[6]) then return {at - now, member} end
  redis.call('ZREM', calls, member)
  return add(earliest_fit(math.max(at, now), now + tonumber(ARGV[6])))
end

-- release: ARGV[5] a reserved member no call used.
if command == 'release' then
  return redis.call('ZREM', calls, ARGV[5])
end

-- pause: ARGV[5] ms (Retry-After), ARGV[6] the refused call's member ('' if unknown). Pauses
-- merge by their end: a shorter Retry-After never cuts a longer one. Recall never counted the
-- refused call, so it leaves our window too. Then the measured decrease, from the calls of ours
-- Recall took before the refused one (`ahead`, those within the tightest window in force):
-- - nothing learned yet, and another 429 came within CONFIRM_WINDOWS (else the 429 is only
--   remembered): Recall took `ahead` calls, the oldest `took` ms before the refusal, and
--   takes the next one Retry-After later: so `ahead` calls per (took + Retry-After), whatever
--   Recall's own window is (a burst Recall cut short teaches a short window, not a small count
--   per the declared one), never faster than declared;
-- - learned: the count falls to `ahead` if fewer, and by at least one on the first 429 after a
--   pause ended (the last increase was one too many), the window kept.
-- The calls refused together with the first have more calls ahead: they change nothing.
if command == 'pause' then
  local ms, member = tonumber(ARGV[5]), ARGV[6]
  local fresh = redis.call('PTTL', pause) <= 0
  if redis.call('PTTL', pause) < ms then redis.call('SET', pause, '1', 'PX', ms) end
  local learned = windows[2]
  local since = now - (learned and learned.span or span)
  local at = tonumber(redis.call('ZSCORE', calls, member))
  local ahead
  if at then
    since = at - (learned and learned.span or span)
    ahead = redis.call('ZRANK', calls, member) - redis.call('ZCOUNT', calls, '-inf', since)
    redis.call('ZREM', calls, member)
  else
    at, ahead = now, redis.call('ZCOUNT', calls, '(' .. since, now)
  end
  if learned then
    local count = math.min(ahead, learned.count)
    if fresh then count = math.min(count, learned.count - 1) end
    learn(math.max(1, count), learned.span)
    return 1
  end
  local suspect = tonumber(redis.call('HGET', pace, 'suspect'))
  if not suspect or now - suspect > CONFIRM_WINDOWS * span then
    redis.call('HSET', pace, 'suspect', now)
    redis.call('PEXPIRE', pace, CONFIRM_WINDOWS * span + ms)
    return 1
  end
  local oldest = at
  if ahead > 0 then
    local first = redis.call('ZRANGEBYSCORE', calls, '(' .. since, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    oldest = tonumber(first[2])
  end
  local took = at - oldest + ms
  local count = math.max(1, ahead)
  local window = took + math.min(500, took * 0.05)  -- a margin, as the declared window has
  learn(count, math.ceil(math.max(window, count * span / declared)))
  return 1
end

return redis.error_reply('limiter.lua: unknown command ' .. tostring(command))
