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
-- ARGV[1]  command    ARGV[2]  five keys, space-separated: the prefix of the state sets of
-- unfinished jobs (by last change); the prefix of the listing indexes (by creation: a job sits in
-- `{prefix}{workspace}:{state}`, or `...:{state}:{error code}` with an error); the set of every
-- listing index written; the prefix of the transcript-owner keys; the flag of a rollout going
-- on (no compaction meanwhile: an earlier release's workers read jobs whole)
-- ARGV[3]  job-hash key prefix
-- ARGV[4]  job id                 ARGV[5..] per command, below. A target is two arguments: the
-- state, then the phase. A delay is seconds from now; '' keeps the due time, 'never' leaves.
-- A history is `MAX EVENT[ CODE MESSAGE]`, the event to record (tasks/jobs/history.py).
-- The state sets (prefix .. state), the listing indexes and, in claim and prune, the jobs walked
-- are reached through the prefixes: one Redis primary is assumed.
--
-- A finished job's hash is compacted (`compact`): fields no finished job reads are dropped and
-- each value over 64 bytes is kept in 64-byte parts `{name}.0`, `{name}.1`, ..., so that Redis
-- keeps the hash in its compact encoding (`hash-max-listpack-value`). `field` reads a value
-- either way; a command that writes to a finished job expands it first and compacts it after.

local due, job, outbox, unused = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local command, job_prefix, id = ARGV[1], ARGV[3], ARGV[4]
local state_prefix, index_prefix, registry, owner_prefix, rollout =
  string.match(ARGV[2], '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
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

-- Compacting a finished job's hash (parts.lua has PART, `field` and `split`). RAW: fields read
-- as they are, by this script or the callbacks' (never long). DROPPED: what only an unfinished
-- job reads (a retry starts them again).
local RAW = {recording_id = true, transcript_id = true, archived_transcript_id = true,
  workspace = true, state = true, phase = true, attempts = true, created_at = true,
  updated_at = true, source = true, callbacks_event = true}
local DROPPED = {id = true, deadline_at = true, polls = true, transcript_created_at = true,
  last_error = true, derived_key = true}
local finished = false  -- set once this command finished the job (schedule 'never'): compact it

-- True while an earlier release's workers may still run (JobStore.upgrade sets the flag, the
-- repair after the rollout deletes it): they read jobs whole, errors with their message, and
-- histories without `!`, so nothing is compacted meanwhile.
local function rolling() return redis.call('EXISTS', rollout) == 1 end

-- A hash's fields (HGETALL's list) as a table, each value in parts joined (a value written
-- whole since, if any, wins: parts are only ever written by `rewrite`).
local function joined(all)
  local plain, parts = {}, {}
  for i = 1, #all, 2 do
    local name, n = string.match(all[i], '^(.+)%.(%d+)$')
    if name then
      parts[name] = parts[name] or {}
      parts[name][tonumber(n) + 1] = all[i + 1]
    else
      plain[all[i]] = all[i + 1]
    end
  end
  for name, list in pairs(parts) do plain[name] = plain[name] or table.concat(list) end
  return plain
end

-- Rewrite the job's hash with `fields` (a table), values over PART in parts unless `whole`.
local function rewrite(fields, whole)
  local out = {}
  for name, value in pairs(fields) do split(out, name, value, whole or RAW[name]) end
  redis.call('DEL', job)
  if #out > 0 then redis.call('HSET', job, unpack(out)) end
end

-- A finished job's hash, compacted: written anew, so Redis encodes it compactly again; a key
-- derived from the recording and provider is derived again (tasks/jobs/record.py `decode`).
local function compact()
  if rolling() then return end
  local fields = joined(redis.call('HGETALL', job))
  if not fields.state then return end
  if fields.derived_key then fields.idempotency_key = nil end
  for name in pairs(DROPPED) do fields[name] = nil end
  if fields.metadata == '{}' then fields.metadata = nil end
  rewrite(fields, false)
end

-- The owner key of the job's transcript (`transcript`: its id, if any) goes, while it names it.
local function disown(transcript, owner)
  if transcript and redis.call('GET', owner_prefix .. transcript) == owner then
    redis.call('DEL', owner_prefix .. transcript)
  end
end

-- A compacted job's values made whole again, before a command writes to it.
local function expand()
  local all = redis.call('HGETALL', job)
  for i = 1, #all, 2 do
    if string.find(all[i], '.', 1, true) then return rewrite(joined(all), true) end
  end
end

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

-- The job's error code (nil without an error).
local function error_code()
  local error_json = field(job, 'error')
  return error_json and tostring(cjson.decode(error_json).code) or nil
end

-- The listing index the job sits in while in `state` (its workspace's), with `code` (its error
-- code when not given; false: none).
local function index_of(state, code)
  local key = index_prefix .. (redis.call('HGET', job, 'workspace') or 'default') .. ':' .. state
  if code == nil then code = error_code() end
  return code and key .. ':' .. code or key
end

-- A job finished: a failure's code, and at its first finish only the time since submission in its
-- power-of-two bucket (`e` .. exponent, 'inf' past 2^17 s), into the fleet's counters.
local function count_finish()
  local f = redis.call('HMGET', job, 'state', 'attempts', 'created_at', 'workspace')
  local workspace = f[4] or 'default'
  local label, code = f[1] .. '|' .. workspace, error_code() or 'internal'
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

-- A message as a history keeps it: cut, on one line.
local function clean(message)
  return (string.gsub(cut(message, MAX_MESSAGE), '[\r\n]', ' '))
end

-- The job's error as a history line spells it (`CODE MESSAGE`, or `CODE SUB_CODE` for a failed
-- transcript's; nil without one).
local function error_text()
  local raw = field(job, 'error')
  if not raw then return nil end
  local err = cjson.decode(raw)
  return tostring(err.code) .. ' ' .. clean(tostring(err.message or err.sub_code or ''))
end

-- What a history line holds instead of the error that failed the job, kept once, in `error`
-- (tasks/jobs/history.py reads it back; a retry, which clears the error, spells it out).
local OWN = '!'

-- Append an event to the job's history (a field, a line per event), keeping the newest MAX.
local function record(history, code, message)
  local max, event, err = string.match(history, '^(%d+) (%S+) ?(.*)$')
  local f = redis.call('HMGET', job, 'created_at', 'phase')
  f[3] = field(job, 'history')
  local phase = string.gsub(f[2], '(%a)%a*:?', '%1')  -- each word's first letter
  local line = math.floor((now - (tonumber(f[1]) or now)) * 1000) .. ' ' .. event .. ' ' .. phase
  if code then err = code .. ' ' .. clean(message) end
  if finished and err ~= '' and err == error_text() and not rolling() then err = OWN end
  if err ~= '' then line = line .. ' ' .. err end
  local kept, count = string.gsub(f[3] and f[3] .. '\n' .. line or line, '\n', '\n')
  for _ = tonumber(max), count do kept = string.sub(kept, string.find(kept, '\n', 1, true) + 1) end
  redis.call('HSET', job, 'history', kept)
  if finished then compact() end
end

-- When the job is next looked at: `delay` seconds from now, never after its deadline.
local function schedule(delay)
  if delay == nil or delay == '' then return end
  if delay == 'never' then  -- finished: it leaves the due-set, its news the outbox, and its
    drop_ticket()          -- transcript's owner key (Recall's metadata names the job)
    finished = true
    disown(redis.call('HGET', job, 'transcript_id'), id)
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

-- Enter a phase, moving the job between the state sets and listing indexes. A new phase is
-- progress: the retry budgets start again, and a step message on its way is stale. A finished
-- job leaves the state sets: its listing index is its only entry among all jobs.
local function enter(old, state, phase, delay)
  if phase ~= redis.call('HGET', job, 'phase') then
    redis.call('HDEL', job, 'failures', unpack(SENT))
  end
  redis.call('ZREM', index_of(old, false), id)  -- with its error code or without: the fields
  redis.call('ZREM', index_of(old), id)         -- a transition sets come before it enters
  redis.call('HSET', job, 'state', state, 'phase', phase, 'updated_at', now)
  redis.call('ZREM', state_prefix .. old, id)
  if delay ~= 'never' then redis.call('ZADD', state_prefix .. state, now, id) end
  local index = index_of(state)
  redis.call('ZADD', index, redis.call('HGET', job, 'created_at'), id)
  redis.call('SADD', registry, index)
  schedule(delay)
end

local function fail(old, state, phase, error_json)
  redis.call('HSET', job, 'error', error_json)
  enter(old, state, phase, 'never')
end

-- Fail the job as Recall reported its transcript failed, and record it with `history`: the
-- error's message is Recall's sub_code in a sentence, made where it is shown (JobError), or here
-- while an earlier release may read it (the same sentence as tasks/jobs/views.py's).
local function transcript_failed(old, state, phase, sub_code, history)
  sub_code = cut(sub_code, MAX_MESSAGE)  -- Recall's word for it: a short code, or cut to one
  local err = {code = 'transcript_failed', sub_code = sub_code}
  if rolling() then
    err.message = 'Recall reported the transcript failed (sub_code: ' .. sub_code .. ')'
  end
  fail(old, state, phase, cjson.encode(err))
  record(history, 'transcript_failed', sub_code)
end

-- True when a step message is provably gone: no worker holds it (kombu's unacked hash, by its
-- delivery tag) and it is not in the queue, because the queue is empty or a message sent after
-- it has been taken (a Redis list is first in, first out).
local function lost(seq, task_id, queue, unacked, consumed)
  if redis.call('HEXISTS', unacked, task_id) == 1 then return false end
  if (tonumber(redis.call('GET', consumed)) or 0) > tonumber(seq) then return true end
  return redis.call('LLEN', queue) == 0
end
