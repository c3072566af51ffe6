-- The job state machine's writes: one atomic command per transition (tasks/jobs/states.py has the
-- table, tasks/jobs/base.py runs these), plus sending steps and the sweeper's claim. A transition
-- checks the job's phase against its source phases and moves it to a target phase, both passed by
-- the caller from that table, and refuses (returns false) otherwise. Phases are compared as the
-- strings the caller passes; this script never spells one out. Every time is Redis's clock (TIME),
-- in seconds.
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

-- Append an event to the job's history (a field, a line per event), keeping the newest MAX.
local function record(history, code, message)
  local max, event, err = string.match(history, '^(%d+) (%S+) ?(.*)$')
  local f = redis.call('HMGET', job, 'created_at', 'phase', 'history')
  local phase = string.gsub(f[2], '(%a)%a*:?', '%1')  -- each word's first letter
  local line = math.floor((now - (tonumber(f[1]) or now)) * 1000) .. ' ' .. event .. ' ' .. phase
  if code then err = code .. ' ' .. string.gsub(message, '\n', ' ') end
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

-- submit. KEYS[5] every job, KEYS[6] the recording's jobs, KEYS[7] the workspace's jobs.
-- ARGV[5] fields (JSON), ARGV[6] delay, ARGV[7] deadline (seconds), ARGV[8..9] target,
-- ARGV[10] history. Returns 1 when created, 0 when it exists.
if command == 'submit' then
  if redis.call('EXISTS', job) == 1 then return 0 end
  set_fields(ARGV[5])
  redis.call('HSET', job, 'attempts', '1', 'created_at', now, 'deadline_at', now + tonumber(ARGV[7]))
  redis.call('ZADD', KEYS[5], now, id)
  redis.call('ZADD', KEYS[6], now, id)
  redis.call('ZADD', KEYS[7], now, id)
  enter(ARGV[8], ARGV[8], ARGV[9], ARGV[6])
  record(ARGV[10])
  return 1
end

-- move: the plain transitions. ARGV[5] sources, ARGV[6..7] target ('' stays), ARGV[8] delay,
-- ARGV[9] fields (JSON), ARGV[10] history. Returns the old state.
if command == 'move' then
  local old = current_in(ARGV[5])
  if not old then return false end
  hdel(job, SCRATCH)
  set_fields(ARGV[9])
  if ARGV[6] ~= '' then enter(old, ARGV[6], ARGV[7], ARGV[8]) else schedule(ARGV[8]) end
  record(ARGV[10])
  return old
end

-- created: the create call answered (or a listing found our transcript). KEYS[5] the transcript's
-- owner key. ARGV[5] sources, ARGV[6] transcript id, ARGV[7] first poll (delay), ARGV[8] lease,
-- ARGV[9..10] awaiting, ARGV[11..12] fetching, ARGV[13..14] failed, ARGV[15] history. Honours a
-- transcript event kept before the answer. Returns the new state.
if command == 'created' then
  local old = current_in(ARGV[5])
  if not old then return false end
  local transcript = ARGV[6]
  hdel(job, SCRATCH)
  redis.call('SET', KEYS[5], id)
  redis.call('HSET', job, 'transcript_id', transcript, 'transcript_created_at', now, 'polls', '0')
  local early = redis.call('HMGET', job, unpack(EARLY))
  hdel(job, EARLY)
  redis.call('HDEL', job, 'create_pending', 'create_key_at', 'refusal', 'refused_version',
             'remediations')
  if early[2] == transcript and early[1] == 'done' then
    enter(old, ARGV[11], ARGV[12], ARGV[8])
    record(ARGV[15])
    return ARGV[11]
  end
  if early[2] == transcript and early[1] == 'failed' then
    transcript_failed(old, ARGV[13], ARGV[14], early[3], ARGV[15])
    return ARGV[13]
  end
  enter(old, ARGV[9], ARGV[10], ARGV[7])
  record(ARGV[15])
  return ARGV[9]
end

-- transcript: Recall says a transcript finished (webhook or poll). ARGV[5] sources when it is the
-- job's transcript, ARGV[6] sources for keeping it until the create answer, ARGV[7] transcript
-- id, ARGV[8] 'done' or 'failed', ARGV[9] sub_code, ARGV[10] lease, ARGV[11..12] target,
-- ARGV[13] history when it finishes, ARGV[14] when it is kept.
-- Returns 'fetching', 'failed', 'kept' or 'ignored'.
if command == 'transcript' then
  local transcript = ARGV[7]
  local owned = redis.call('HGET', job, 'transcript_id')
  local old = current_in(ARGV[5])
  if old and owned == transcript then
    if ARGV[8] == 'done' then
      enter(old, ARGV[11], ARGV[12], ARGV[10])
      record(ARGV[13])
    else
      transcript_failed(old, ARGV[11], ARGV[12], ARGV[9], ARGV[13])
    end
    return ARGV[11]
  end
  if current_in(ARGV[6]) and (not owned or owned == transcript) then
    redis.call('HSET', job, EARLY[1], ARGV[8], EARLY[2], transcript, EARLY[3], ARGV[9])
    record(ARGV[14])
    return 'kept'
  end
  return 'ignored'
end

-- archive: another job's remediation archived this finished job's transcript and will delete it
-- at Recall. ARGV[5] sources, ARGV[6] transcript id, ARGV[7] history. Returns 1, or false (the
-- job is active again: the transcript must not be deleted).
if command == 'archive' then
  if not current_in(ARGV[5]) then return false end
  redis.call('HSET', job, 'archived_transcript_id', ARGV[6], 'updated_at', now)
  record(ARGV[7])
  return 1
end

-- add_callback: one more callback_url for the job (not a transition). ARGV[5] the destination
-- (JSON: url, by), ARGV[6] how many one caller (`by`) may give it: each caller spends only its
-- own share, so none can fill the job for the others. ARGV[7] the finished states, ARGV[8] who
-- gave a URL kept in `callback_url` (how a job kept its one URL before): moved into the list.
-- Added to a finished job, its news goes back in the outbox, due now (tasks/callbacks/outbox.py
-- makes only what is missing).
-- Returns 'added', 'known', 'full', or false (no such job).
if command == 'add_callback' then
  if redis.call('EXISTS', job) == 0 then return false end
  local given = cjson.decode(ARGV[5])
  local list = cjson.decode(redis.call('HGET', job, 'callback_urls') or '[]')
  local old = redis.call('HGET', job, 'callback_url')
  if old then
    table.insert(list, 1, {url = old, by = ARGV[8]})
    redis.call('HSET', job, 'callback_urls', cjson.encode(list))
    redis.call('HDEL', job, 'callback_url')
  end
  local mine = 0
  for _, known in ipairs(list) do
    if known.url == given.url then return 'known' end
    if known.by == given.by then mine = mine + 1 end
  end
  if mine >= tonumber(ARGV[6]) then return 'full' end
  table.insert(list, given)
  redis.call('HSET', job, 'callback_urls', cjson.encode(list))
  local fields = redis.call('HMGET', job, 'state', 'attempts')
  if string.find(',' .. ARGV[7] .. ',', ',' .. fields[1] .. ',', 1, true) then
    redis.call('ZADD', outbox, now, id .. ':' .. fields[2])
  end
  return 'added'
end

-- retry: an operator re-runs a failed job from the furthest point known: finished from the
-- archive when another job's remediation archived its transcript, else a known transcript is
-- awaited (or fetched) again, else the create step runs, reconciling first if a create may have
-- happened (create_pending and the create key are kept). ARGV[5] sources, ARGV[6..7] queued,
-- ARGV[8..9] awaiting, ARGV[10..11] done, ARGV[12] deadline (seconds), ARGV[13] history.
-- Returns the new phase.
if command == 'retry' then
  local old = current_in(ARGV[5])
  if not old then return false end
  drop_ticket()
  hdel(job, SCRATCH)
  local by_error = error_index(old)
  if by_error then redis.call('ZREM', by_error, id) end
  redis.call('HDEL', job, 'error', 'failures', 'last_error', 'remediations')
  redis.call('HINCRBY', job, 'attempts', 1)
  redis.call('HSET', job, 'polls', '0', 'deadline_at', now + tonumber(ARGV[12]))
  local archived = redis.call('HGET', job, 'archived_transcript_id')
  local state, phase, delay = ARGV[6], ARGV[7], 0
  if archived then
    redis.call('HSET', job, 'transcript_id', archived)
    state, phase, delay = ARGV[10], ARGV[11], 'never'
  elseif redis.call('HEXISTS', job, 'transcript_id') == 1 then
    redis.call('HSET', job, 'transcript_created_at', now)  -- the wait for it starts again
    state, phase = ARGV[8], ARGV[9]
  end
  enter(old, state, phase, delay)
  record(ARGV[13])
  return phase
end

-- send: queue step messages, recording each on its job so that it is sent once. KEYS[5] the
-- queue, KEYS[6] the message counter, KEYS[7] kombu's unacked hash, KEYS[8] the highest number
-- taken. ARGV[5] 'new' (skip a job whose message for this step is still on its way) or 'redrive'
-- (the claim checked), then for each message: job id, step, the phases it runs in, task id (also
-- its delivery tag), message. A job no longer in one of those phases gets nothing. Returns the
-- task ids sent.
if command == 'send' then
  local out = {}
  for i = 6, #ARGV, 5 do
    job = job_prefix .. ARGV[i]
    local step, task_id = ARGV[i + 1], ARGV[i + 3]
    if current_in(ARGV[i + 2]) then
      local sent = redis.call('HMGET', job, unpack(SENT))
      local on_its_way = ARGV[5] == 'new' and sent[3] == step
        and not lost(sent[1], sent[2], KEYS[5], KEYS[7], KEYS[8])
      if not on_its_way then
        redis.call('HSET', job, SENT[1], redis.call('INCR', KEYS[6]), SENT[2], task_id, SENT[3], step)
        redis.call('LPUSH', KEYS[5], ARGV[i + 4])
        table.insert(out, task_id)
      end
    end
  end
  return out
end

-- consume: a worker took a step message. KEYS[5] the highest number taken. ARGV[5] its task id.
-- Returns 1 when it is the job's current message (now taken), 0 for a stale copy.
if command == 'consume' then
  local sent = redis.call('HMGET', job, unpack(SENT))
  if sent[2] ~= ARGV[5] then return 0 end
  hdel(job, SENT)
  if tonumber(sent[1]) > (tonumber(redis.call('GET', KEYS[5])) or 0) then
    redis.call('SET', KEYS[5], sent[1])
  end
  return 1
end

-- nudge: make the job due within ARGV[5] seconds (never later than it already is).
if command == 'nudge' then
  redis.call('ZADD', due, 'XX', 'LT', now + tonumber(ARGV[5]), id)
  return 1
end

-- claim: the sweeper takes the due jobs, pushing each one lease ahead so one sweeper takes it.
-- KEYS[5] the queue, KEYS[6] kombu's unacked hash, KEYS[7] the highest message number taken.
-- ARGV[5] limit, ARGV[6] lease, ARGV[7] job-lock key prefix, ARGV[8] sources of a failure,
-- ARGV[9..10] failed, ARGV[11] the deadline's error (JSON), ARGV[12] its history.
-- Returns {seconds until the next due job (-1: none), id, phase, recording, ...}: the jobs whose
-- step must be sent. A finished or vanished job leaves the due-set; a job past its deadline
-- fails; a job whose step still runs (its lock held, kept alive by a heartbeat) is looked at
-- again when that lock would expire; a job whose message is still queued or held by a worker is
-- not sent again until that message is taken or provably lost.
if command == 'claim' then
  local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
  local lease = tonumber(ARGV[6])
  local out = {-1}
  for _, each in ipairs(ids) do
    id, job = each, job_prefix .. each
    local f = redis.call('HMGET', job, 'state', 'phase', 'recording_id', 'deadline_at', unpack(SENT))
    local held = f[1] and redis.call('PTTL', ARGV[7] .. each) or 0
    if f[1] and not f[2] then  -- written before phases: looked at once JobStore.upgrade ran
      redis.call('ZADD', due, now + lease, each)
    elseif not current_in(ARGV[8]) then
      redis.call('ZREM', due, each)
    elseif held > 0 then
      redis.call('ZADD', due, now + held / 1000, each)
    elseif f[4] and now >= tonumber(f[4]) then
      fail(f[1], ARGV[9], ARGV[10], ARGV[11])
      record(ARGV[12])
    elseif f[5] and not lost(f[5], f[6], KEYS[5], KEYS[6], KEYS[7]) then
      redis.call('ZADD', due, now + lease, each)
    else
      redis.call('ZADD', due, now + lease, each)
      table.insert(out, each)
      table.insert(out, f[2])
      table.insert(out, f[3])
    end
  end
  local next_due = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if next_due[2] then out[1] = tostring(math.max(0, tonumber(next_due[2]) - now)) end
  return out
end

-- reindex: put jobs written before the listing indexes into them (JobStore.upgrade), and drop
-- their recording's set of job ids as those releases kept it. ARGV[5] recording-index prefix,
-- ARGV[6] old recording-set prefix, ARGV[7..] job ids. Returns how many were not indexed yet.
if command == 'reindex' then
  local indexed = 0
  for i = 7, #ARGV do
    id, job = ARGV[i], job_prefix .. ARGV[i]
    local f = redis.call('HMGET', job, 'state', 'created_at', 'recording_id')
    if f[1] and f[2] then
      indexed = indexed + redis.call('ZADD', index_prefix .. f[1], f[2], id)
      local by_error = error_index(f[1])
      if by_error then redis.call('ZADD', by_error, f[2], id) end
      if f[3] then
        redis.call('ZADD', ARGV[5] .. f[3], f[2], id)
        redis.call('DEL', ARGV[6] .. f[3])
      end
    end
  end
  return indexed
end

-- prune: finished jobs past their retention leave Redis with their index entries (the state
-- sets are scored by when a job entered its state). KEYS[5] every job. ARGV[5] age (seconds),
-- ARGV[6] limit, ARGV[7] recording-index prefix, ARGV[8] transcript-owner prefix, ARGV[9]
-- workspace-set prefix, ARGV[10..] the finished states. Returns how many.
if command == 'prune' then
  local pruned = 0
  for i = 10, #ARGV do
    local set = state_prefix .. ARGV[i]
    local ids = redis.call('ZRANGEBYSCORE', set, '-inf', now - tonumber(ARGV[5]), 'LIMIT', 0,
                           tonumber(ARGV[6]))
    for _, each in ipairs(ids) do
      local hash = job_prefix .. each
      job = hash
      local by_error = error_index(ARGV[i])
      if by_error then redis.call('ZREM', by_error, each) end
      redis.call('ZREM', index_prefix .. ARGV[i], each)
      local fields = redis.call('HMGET', hash, 'recording_id', 'transcript_id', 'workspace')
      if fields[1] then redis.call('ZREM', ARGV[7] .. fields[1], each) end
      redis.call('ZREM', ARGV[9] .. (fields[3] or 'default'), each)
      if fields[2] and redis.call('GET', ARGV[8] .. fields[2]) == each then
        redis.call('DEL', ARGV[8] .. fields[2])
      end
      redis.call('DEL', hash)
      redis.call('ZREM', KEYS[5], each)
      redis.call('ZREM', set, each)
      redis.call('ZREM', due, each)
      pruned = pruned + 1
    end
  end
  return pruned
end

return redis.error_reply('jobs.lua: unknown command ' .. tostring(command))
