-- The job state machine's writes: one atomic command per transition (tasks/jobs/states.py has the
-- table, tasks/jobs/base.py runs these), plus sending steps and the sweeper's claim. A transition
-- checks the job's phase against its source phases and moves it to a target phase, both passed by
-- the caller from that table, and refuses (returns false) otherwise. Phases are compared as the
-- strings the caller passes; this script never spells one out. Every time is Redis's clock (TIME),
-- in seconds. One script in four files, joined in this order and run as one (tasks/scripts.py):
-- this one, what every command shares; transitions.lua; sending.lua (sending, taking and claiming
-- steps); maintenance.lua (the store's upkeep).
--
-- KEYS[1]  the due-set            KEYS[2]  the job's hash ('' for claim and prune)
-- KEYS[3]  the outbox: `job id:attempt` of every job that finished, until its news is sent on
-- KEYS[4]  quota tickets to give back: reserved for a step that will not run (tasks/recall/)
-- KEYS[5..] per command, then (last) the job-duration histogram and failures by code (metrics)
-- ARGV[1]  command    ARGV[2]  two key prefixes, space-separated: the state sets (by last change),
-- then the listing indexes by state (by creation; `{prefix}{state}:error:{code}` holds the jobs
-- in that state with that error)    ARGV[3]  job-hash key prefix
-- ARGV[4]  job id                 ARGV[5..] per command, below. A target is two arguments: the
-- state, then the phase. A delay is seconds from now; '' keeps the due time, 'never' leaves.
-- A history is `MAX EVENT[ CODE MESSAGE]`, the event to record (tasks/jobs/history.py).
-- The state sets (prefix .. state) and, in claim and prune, the jobs walked are reached through
-- the prefixes: one Redis primary is assumed.

local due, job, outbox, unused = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local command, job_prefix, id = ARGV[1], ARGV[3], ARGV[4]
local state_prefix, index_prefix = string.match(ARGV[2], '^(%S+) (%S+)$')
local durations, failures = KEYS[#KEYS - 1], KEYS[#KEYS]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

-- A step's scratch: for its next run only; every transition clears it.
local SCRATCH = {'quota_ticket', 'listing', 'listing_next', 'listing_at', 'listing_version'}
-- A transcript event that came before the create answer.
local EARLY = {'early_event', 'early_transcript_id', 'early_sub_code'}
-- The step message sent and not yet taken by a worker.
local SENT = {'sent_seq', 'sent_id', 'sent_step'}

local function hdel(key, fields) redis.call('HDEL', key, unpack(fields)) end

-- A quota slot reserved for the job's next step run, which will not come: give it back.
local function drop_ticket()
  local ticket = redis.call('HGET', job, 'quota_ticket')
  if ticket then
    redis.call('RPUSH', unused, (redis.call('HGET', job, 'workspace') or 'default') .. '\n' .. ticket)
    redis.call('HDEL', job, 'quota_ticket')
  end
end

-- The job's state if its phase is one of `sources` (comma-separated), else nil.
local function current_in(sources)
  local fields = redis.call('HMGET', job, 'state', 'phase')
  if not fields[1] or not fields[2] then return nil end  -- gone, or not upgraded yet
  if string.find(',' .. sources .. ',', ',' .. fields[2] .. ',', 1, true) then return fields[1] end
  return nil
end

-- Set fields from a JSON object of strings; `false` deletes a field.
local function set_fields(json)
  for name, value in pairs(cjson.decode(json)) do
    if value == false then redis.call('HDEL', job, name) else redis.call('HSET', job, name, value) end
  end
end

-- A job finished: a failure's code, and at its first finish only the time since submission in its
-- power-of-two bucket (`e` .. exponent, 'inf' past 2^17 s), into the fleet's counters.
local function count_finish()
  local f = redis.call('HMGET', job, 'state', 'attempts', 'created_at', 'workspace', 'error')
  local workspace = f[4] or 'default'
  local label, code = f[1] .. '|' .. workspace, cjson.decode(f[5] or '{}').code or 'internal'
  if f[1] == 'failed' then redis.call('HINCRBY', failures, code .. '|' .. workspace, 1) end
  if f[2] ~= '1' or not f[3] then return end
  local seconds, exponent = now - tonumber(f[3]), 0
  while exponent <= 17 and 2 ^ exponent < seconds do exponent = exponent + 1 end
  redis.call('HINCRBY', durations, label .. (exponent > 17 and '|inf' or '|e' .. exponent), 1)
  redis.call('HINCRBYFLOAT', durations, label .. '|sum', seconds)
end

-- The bytes of an error message a history keeps (tasks/jobs/history.py cuts the messages it
-- passes to 200 characters): Recall's sub_code is cut here.
local MAX_MESSAGE = 200

-- `text` cut to at most `bytes` bytes, never inside a UTF-8 character.
local function cut(text, bytes)
  if #text <= bytes then return text end
  while bytes > 0 and math.floor(string.byte(text, bytes + 1) / 64) == 2 do bytes = bytes - 1 end
  return string.sub(text, 1, bytes)
end

-- Append an event to the job's history (a field, a line per event), keeping the newest MAX.
local function record(history, code, message)
  local max, event, err = string.match(history, '^(%d+) (%S+) ?(.*)$')
  local f = redis.call('HMGET', job, 'created_at', 'phase', 'history')
  local phase = string.gsub(f[2], '(%a)%a*:?', '%1')  -- each word's first letter
  local line = math.floor((now - (tonumber(f[1]) or now)) * 1000) .. ' ' .. event .. ' ' .. phase
  if code then err = code .. ' ' .. string.gsub(cut(message, MAX_MESSAGE), '[\r\n]', ' ') end
  if err ~= '' then line = line .. ' ' .. err end
  local kept, count = string.gsub(f[3] and f[3] .. '\n' .. line or line, '\n', '\n')
  for _ = tonumber(max), count do kept = string.sub(kept, string.find(kept, '\n', 1, true) + 1) end
  redis.call('HSET', job, 'history', kept)
end

-- When the job is next looked at: `delay` seconds from now, never after its deadline.
local function schedule(delay)
  if delay == nil or delay == '' then return end
  if delay == 'never' then  -- finished: it leaves the due-set, and its news the outbox
    drop_ticket()
    redis.call('ZREM', due, id)
    redis.call('ZADD', outbox, now, id .. ':' .. redis.call('HGET', job, 'attempts'))
    count_finish()
    return
  end
  local at = now + tonumber(delay)
  local deadline = tonumber(redis.call('HGET', job, 'deadline_at'))
  if deadline and at > deadline then at = deadline end
  redis.call('ZADD', due, at, id)
end

-- The listing index of the job's error in `state` (nil without an error).
local function error_index(state)
  local error_json = redis.call('HGET', job, 'error')
  if not error_json then return nil end
  return index_prefix .. state .. ':error:' .. tostring(cjson.decode(error_json).code)
end

-- Enter a phase, moving the job between the state sets and listing indexes. A new phase is
-- progress: the retry budgets start again, and a step message on its way is stale.
local function enter(old, state, phase, delay)
  if phase ~= redis.call('HGET', job, 'phase') then
    redis.call('HDEL', job, 'failures', unpack(SENT))
  end
  local by_error = error_index(old)
  if by_error then redis.call('ZREM', by_error, id) end
  redis.call('HSET', job, 'state', state, 'phase', phase, 'updated_at', now)
  redis.call('ZREM', state_prefix .. old, id)
  redis.call('ZADD', state_prefix .. state, now, id)
  local created = redis.call('HGET', job, 'created_at')
  redis.call('ZREM', index_prefix .. old, id)
  redis.call('ZADD', index_prefix .. state, created, id)
  by_error = error_index(state)
  if by_error then redis.call('ZADD', by_error, created, id) end
  schedule(delay)
end

local function fail(old, state, phase, error_json)
  redis.call('HSET', job, 'error', error_json)
  enter(old, state, phase, 'never')
end

-- Fail the job as Recall reported its transcript failed, and record it with `history`.
local function transcript_failed(old, state, phase, sub_code, history)
  sub_code = cut(sub_code, MAX_MESSAGE)  -- Recall's word for it: a short code, or cut to one
  local message = 'Recall reported the transcript failed (sub_code: ' .. sub_code .. ')'
  fail(old, state, phase, cjson.encode({code = 'transcript_failed', sub_code = sub_code,
    message = message}))
  record(history, 'transcript_failed', message)
end

-- True when a step message is provably gone: no worker holds it (kombu's unacked hash, by its
-- delivery tag) and it is not in the queue, because the queue is empty or a message sent after
-- it has been taken (a Redis list is first in, first out).
local function lost(seq, task_id, queue, unacked, consumed)
  if redis.call('HEXISTS', unacked, task_id) == 1 then return false end
  if (tonumber(redis.call('GET', consumed)) or 0) > tonumber(seq) then return true end
  return redis.call('LLEN', queue) == 0
end
