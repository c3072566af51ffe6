-- Callback deliveries (tasks/callbacks/deliveries.py): each one event to one destination, due at
-- its next attempt, paced per destination and shared out per client; the events they carry
-- (one body per event, whatever its number of destinations); and the outbox of finished jobs
-- they come from.
-- KEYS[1] the deliveries' due-set   ARGV[1] command; the rest per command, below.
-- Times are Redis's clock, in seconds. Keys that depend on what a delivery holds (its groups, its
-- event, its job) are reached through prefixes: one Redis primary is assumed.

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

-- sent: a job's news is sent on. KEYS[2] the outbox, ARGV[2] the member. Removed only while
-- still leased ahead: a destination added since (tasks/jobs/jobs.lua add_callback) put it back
-- due now, and the next sweep sends on that one too.
if command == 'sent' then
  local score = redis.call('ZSCORE', KEYS[2], ARGV[2])
  if score and tonumber(score) > now then return redis.call('ZREM', KEYS[2], ARGV[2]) end
  return 0
end

-- A finished delivery's event keeps its body while any of its deliveries is pending, then as
-- long as a finished delivery is kept.
local function settle(event, keep)
  if redis.call('EXISTS', event) == 0 then return end  -- written before events were
  if tonumber(redis.call('HGET', event, 'pending')) > 0 then
    redis.call('PERSIST', event)
  else
    redis.call('EXPIRE', event, math.ceil(tonumber(keep)))
  end
end

-- send: an event and its deliveries, each unless it exists (the same news sent on twice), and
-- the event's CALLBACK_TASK message when the event is new. KEYS[2] the event's hash, KEYS[3] its
-- job's hash, KEYS[4] the task's queue, KEYS[5..] the deliveries' hashes. ARGV[2] event id,
-- ARGV[3] its fields (JSON: job_id, attempt, state), ARGV[4] body, ARGV[5] task message ('':
-- none), ARGV[6] delay before a first attempt, ARGV[7] how long a finished event is kept,
-- ARGV[8..] per delivery: id, fields (JSON object of strings). The job's view lists the
-- deliveries while the job is at that attempt. Returns how many deliveries are new.
if command == 'send' then
  local event, job = KEYS[2], KEYS[3]
  local fields = cjson.decode(ARGV[3])
  if redis.call('EXISTS', event) == 0 then
    for name, value in pairs(fields) do redis.call('HSET', event, name, value) end
    redis.call('HSET', event, 'pending', 0)
    if ARGV[5] ~= '' then redis.call('LPUSH', KEYS[4], ARGV[5]) end
  end
  local ids, created = {}, 0
  for i = 8, #ARGV, 2 do
    local hash, id = KEYS[5 + (i - 8) / 2], ARGV[i]
    table.insert(ids, id)
    if redis.call('EXISTS', hash) == 0 then
      redis.call('HSETNX', event, 'body', ARGV[4])
      for name, value in pairs(cjson.decode(ARGV[i + 1])) do redis.call('HSET', hash, name, value) end
      local at = now + tonumber(ARGV[6])
      redis.call('HSET', hash, 'state', 'pending', 'attempts', 0, 'next_attempt_at', at)
      redis.call('ZADD', due, at, id)
      redis.call('HINCRBY', event, 'pending', 1)
      created = created + 1
    end
  end
  settle(event, ARGV[7])
  if #ids > 0 and fields.attempt and redis.call('HGET', job, 'attempts') == fields.attempt then
    local listed = {}
    if redis.call('HGET', job, 'callbacks_event') == ARGV[2] then
      listed = cjson.decode(field(job, 'callbacks') or '[]')
    end
    local seen = {}
    for _, id in ipairs(listed) do seen[id] = true end
    for _, id in ipairs(ids) do
      if not seen[id] then table.insert(listed, id); seen[id] = true end
    end
    put(job, 'callbacks', cjson.encode(listed))  -- a finished job's: kept compact (parts.lua)
    redis.call('HSET', job, 'callbacks_event', ARGV[2])
  end
  return created
end

-- Pacing. A delivery belongs to one or two groups: its destination (scheme://host:port) and,
-- for a client's URL, its client (`client:` and the owner of the API token that set it). A group
-- has at most its cap of attempts in flight: a destination ARGV[7] (1 while its last attempt
-- failed: a dead or slow receiver is probed, not hammered), a client ARGV[8] however many
-- destinations it names. In flight: the group's busy-set (ids by lease end). A delivery due
-- while one of its groups has no room is parked in that group's parked-set (ids by due time),
-- out of the due-set, so a backlog never stands in front of others' deliveries; it goes back to
-- the due-set when an attempt in that group ends, or, if its worker died, when that attempt's
-- lease does (the parked-groups set holds that time).
-- ARGV[2] delivery-hash prefix, ARGV[3] busy-set prefix, ARGV[4] parked-set prefix, ARGV[5]
-- failing-flag prefix, ARGV[6] the parked-groups set, ARGV[7] destination cap, ARGV[8] client cap.
local hashes, busy, parked, failing, parked_groups = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

-- groups: the pacing groups of a delivery with these destination and client fields.
local function groups(dest, client)
  if client and client ~= '' then return {dest, 'client:' .. client} end
  return {dest}
end

-- room: attempts the group may start now.
local function room(group)
  redis.call('ZREMRANGEBYSCORE', busy .. group, '-inf', now)
  local cap = tonumber(ARGV[7])
  if string.sub(group, 1, 7) == 'client:' then
    cap = tonumber(ARGV[8])
  elseif redis.call('EXISTS', failing .. group) == 1 then
    cap = 1
  end
  return cap - redis.call('ZCARD', busy .. group)
end

-- unpark: up to n of the group's parked deliveries back in the due-set, at their times.
local function unpark(group, n)
  if n > 0 then
    local moved = redis.call('ZPOPMIN', parked .. group, n)
    for i = 1, #moved, 2 do redis.call('ZADD', due, tonumber(moved[i + 1]), moved[i]) end
  end
  if redis.call('ZCARD', parked .. group) == 0 then
    redis.call('ZREM', parked_groups, group)
  else
    local first = redis.call('ZRANGE', busy .. group, 0, 0, 'WITHSCORES')
    redis.call('ZADD', parked_groups, first[2] and tonumber(first[2]) or now, group)
  end
end

-- claim: due deliveries to attempt now, at most ARGV[9]; ARGV[10] lease (an attempt that
-- outlives it, its worker dead, is made again). Returns the ids.
if command == 'claim' then
  local limit, lease = tonumber(ARGV[9]), tonumber(ARGV[10])
  for _, group in ipairs(redis.call('ZRANGEBYSCORE', parked_groups, '-inf', now, 'LIMIT', 0, 100)) do
    unpark(group, math.max(0, room(group)))
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
      local fields = redis.call('HMGET', hashes .. id, 'state', 'destination', 'client')
      if fields[1] ~= 'pending' then
        redis.call('ZREM', due, id)
      else
        local mine, full = groups(fields[2], fields[3]), nil
        for _, group in ipairs(mine) do
          if not full and room(group) <= 0 then full = group end
        end
        if full then
          redis.call('ZADD', parked .. full, redis.call('ZSCORE', due, id), id)
          redis.call('ZREM', due, id)
          unpark(full, 0)
        else
          for _, group in ipairs(mine) do
            redis.call('ZADD', busy .. group, now + lease, id)
            redis.call('PEXPIRE', busy .. group, math.ceil(lease * 1000) + 1000)
          end
          redis.call('ZADD', due, now + lease, id)
          table.insert(out, id)
        end
      end
    end
  end
  return out
end

-- attempted: the outcome of an attempt. ARGV[9] id, ARGV[10] outcome: 'delivered', 'failed'
-- (the receiver: its destination is marked failing when it failed as a host, no answer, a 5xx or
-- a 429; a 4xx is that delivery's own: on a shared host, one client's bad path is no one
-- else's trouble), 'refused' (counted, the destination not
-- marked: nothing reached it) or 'deferred' (this process could not resolve in time: not
-- counted, tried again after ARGV[15] seconds); ARGV[11] last status, ARGV[12] the schedule
-- (JSON list of delays, the first attempt's first), ARGV[13] how long a finished delivery is
-- kept, ARGV[14] how long a failed attempt marks its destination failing, ARGV[16] the failed
-- deliveries, ARGV[17] event-hash prefix. Returns 'delivered', 'retry', 'deferred', 'failed',
-- or false if the delivery had finished already.
if command == 'attempted' then
  local id, outcome, hash = ARGV[9], ARGV[10], hashes .. ARGV[9]
  local fields = redis.call('HMGET', hash, 'state', 'destination', 'client', 'event_id')
  if not fields[2] then return false end
  local mine = groups(fields[2], fields[3])
  for _, group in ipairs(mine) do redis.call('ZREM', busy .. group, id) end
  if outcome == 'delivered' then
    redis.call('DEL', failing .. fields[2])
  elseif outcome == 'failed' then
    local status = tonumber(ARGV[11])  -- nil: no HTTP answer (connect error, timeout, cut)
    if not status or status >= 500 or status == 429 then
      redis.call('SET', failing .. fields[2], 1, 'EX', math.ceil(tonumber(ARGV[14])))
    end
  end
  for _, group in ipairs(mine) do unpark(group, math.max(0, room(group))) end
  if fields[1] ~= 'pending' then return false end
  redis.call('HSET', hash, 'last_status', ARGV[11])
  if outcome == 'deferred' then
    local at = now + tonumber(ARGV[15])
    redis.call('HSET', hash, 'next_attempt_at', at)
    redis.call('ZADD', due, at, id)
    return 'deferred'
  end
  local attempts = redis.call('HINCRBY', hash, 'attempts', 1)
  local schedule = cjson.decode(ARGV[12])
  if outcome ~= 'delivered' and attempts < #schedule then
    local at = now + schedule[attempts + 1]
    redis.call('HSET', hash, 'next_attempt_at', at)
    redis.call('ZADD', due, at, id)
    return 'retry'
  end
  local final = outcome == 'delivered' and 'delivered' or 'failed'
  if final == 'failed' then
    redis.call('ZADD', ARGV[16], now, id)
    -- Bounded: a failed delivery older than a finished one is kept is gone with its hash.
    redis.call('ZREMRANGEBYSCORE', ARGV[16], '-inf', now - tonumber(ARGV[13]))
  end
  redis.call('HSET', hash, 'state', final)
  redis.call('HDEL', hash, 'next_attempt_at')
  redis.call('ZREM', due, id)
  redis.call('EXPIRE', hash, math.ceil(tonumber(ARGV[13])))
  local event = ARGV[17] .. (fields[4] or '')
  if redis.call('EXISTS', event) == 1 then
    redis.call('HINCRBY', event, 'pending', -1)
    settle(event, ARGV[13])
  end
  return final
end

-- retry: failed deliveries (KEYS[2]), at most ARGV[5] of them, start their schedule again, due
-- now, if their event is still their job's news: the job at the attempt and state the event
-- told of (a job retried since, or forgotten, has other news or none). ARGV[2] delivery-hash
-- prefix, ARGV[3] event-hash prefix, ARGV[4] job-hash prefix. Each id looked at leaves the set.
-- Returns {revived, looked}.
if command == 'retry' then
  local ids = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[5]) - 1)
  local revived = 0
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[2], id)
    local hash = ARGV[2] .. id
    local fields = redis.call('HMGET', hash, 'state', 'event_id', 'job_id', 'body')
    local event = ARGV[3] .. (fields[2] or '')
    local told = redis.call('HMGET', event, 'attempt', 'state')
    if not told[1] and fields[4] then  -- written before events were: its body tells
      local ok, payload = pcall(cjson.decode, fields[4])
      if ok and type(payload.data) == 'table' then
        told = {tostring(payload.data.attempts), payload.data.state}
      end
    end
    local job = redis.call('HMGET', ARGV[4] .. (fields[3] or ''), 'attempts', 'state')
    if fields[1] == 'failed' and told[1] and job[1] == told[1] and job[2] == told[2] then
      redis.call('HSET', hash, 'state', 'pending', 'attempts', 0, 'next_attempt_at', now)
      redis.call('PERSIST', hash)
      redis.call('ZADD', due, now, id)
      if redis.call('EXISTS', event) == 1 then
        redis.call('HINCRBY', event, 'pending', 1)
        redis.call('PERSIST', event)
      end
      revived = revived + 1
    end
  end
  return {revived, #ids}
end

return redis.error_reply('callbacks.lua: unknown command ' .. tostring(command))
