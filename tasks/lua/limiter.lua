-- Fleet-wide pacing of one Recall endpoint family (tasks/limiter.py): GCRA with reservations, on
-- Redis's clock so every worker host agrees.
-- KEYS[1] the family's theoretical arrival time (ms)   KEYS[2] the family's pause (set by a 429)
-- ARGV[1] emission interval (ms)   ARGV[2] tolerance (ms): (burst - 1) x interval
-- Returns {wait ms, reserved}: reserved = 1 means a slot `wait` ms from now is the caller's
-- (0: go now); reserved = 0 means the family is paused for `wait` ms (nothing reserved).

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])

local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return {paused, 0} end

local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
local next_tat = tat + interval
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil(next_tat - now + tolerance) + 1000)
return {wait, 1}
