-- Fleet-wide pacing of one Recall endpoint family (tasks/limiter.py): Recall's own sliding window,
-- kept on our side a margin wider, with reservations, on Redis's clock so every host agrees.
-- KEYS[1] zset of call times (ms), past and reserved   KEYS[2] the family's pause (set by a 429)
-- KEYS[3] a sequence making each member unique
-- ARGV[1] count   ARGV[2] window (ms)   ARGV[3] margin (ms)
-- Returns {wait ms, reserved}: reserved = 1 means the slot `wait` ms from now is the caller's
-- (0: go now); reserved = 0 means the family is paused for `wait` ms (nothing reserved).

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local count, window, margin = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local span = window + margin

local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return {paused, 0} end

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
local taken = redis.call('ZCARD', KEYS[1])
local at = now
if taken >= count then
  -- The earliest time when the last `span` holds fewer than `count` calls: a span after the call
  -- `count` places back (calls are kept in time order, reservations included).
  local ref = redis.call('ZRANGE', KEYS[1], taken - count, taken - count, 'WITHSCORES')
  at = math.max(now, tonumber(ref[2]) + span)
end
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], at, at .. ':' .. seq)
redis.call('PEXPIRE', KEYS[1], at - now + span + 1000)
redis.call('PEXPIRE', KEYS[3], at - now + span + 1000)
return {at - now, 1}
