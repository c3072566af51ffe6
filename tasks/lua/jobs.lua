-- The job state machine's writes: one atomic command per transition (tasks/states.py has the table,
-- tasks/jobs.py calls these). Each command checks the job's phase against the transition's source
-- phases, which the caller passes from that table, and refuses (returns false) otherwise.
--
-- KEYS[1]  the due-set            KEYS[2]  the job's hash ('' for claim)   KEYS[3]  per command
-- ARGV[1]  command                ARGV[2]  now (epoch seconds)
-- ARGV[3]  state-set key prefix   ARGV[4]  job-hash key prefix            ARGV[5]  job id
-- ARGV[6..] per command, below.
-- The state sets (prefix .. state) are written directly: one Redis primary is assumed.

local due, job = KEYS[1], KEYS[2]
local command, now, state_prefix, job_prefix, id = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]

local function phase(state, step)
  if state == 'done' or state == 'failed' then return state end
  return state .. ':' .. (step or '')
end

-- The job's current phase if it is one of `sources` (comma-separated), else nil.
local function current_in(sources)
  local fields = redis.call('HMGET', job, 'state', 'step')
  if not fields[1] then return nil end
  local now_phase = phase(fields[1], fields[2])
  if string.find(',' .. sources .. ',', ',' .. now_phase .. ',', 1, true) then return fields[1] end
  return nil
end

-- Set fields from a JSON object of strings; `false` deletes a field.
local function set_fields(json)
  for name, value in pairs(cjson.decode(json)) do
    if value == false then redis.call('HDEL', job, name) else redis.call('HSET', job, name, value) end
  end
end

-- Schedule the next look at the job: a time, < 0 to leave the due-set (finished jobs), nil keeps.
local function schedule(at)
  if at == nil then return end
  if at < 0 then redis.call('ZREM', due, id) else redis.call('ZADD', due, at, id) end
end

-- Enter a state (and step: '' keeps it), moving the job between the state sets. A new phase is
-- progress: the retry budgets start again.
local function enter(old, state, step, due_at)
  if state ~= old or (step ~= '' and step ~= redis.call('HGET', job, 'step')) then
    redis.call('HDEL', job, 'failures')
  end
  redis.call('HSET', job, 'state', state, 'updated_at', ARGV[2])
  if step ~= '' then redis.call('HSET', job, 'step', step) end
  redis.call('ZREM', state_prefix .. old, id)
  redis.call('ZADD', state_prefix .. state, now, id)
  schedule(due_at)
end

local function fail(old, error_json)
  redis.call('HSET', job, 'error', error_json)
  enter(old, 'failed', '', -1)
end

local function transcript_failed(sub_code)
  return cjson.encode({code = 'transcript_failed', sub_code = sub_code,
    message = 'Recall reported the transcript failed (sub_code: ' .. sub_code .. ')'})
end

-- A done transcript: fetch it.
local function to_fetching(old, lease)
  enter(old, 'fetching', 'fetch', now + lease)
end

-- submit. KEYS[3] every job, KEYS[4] the recording's jobs. ARGV[6] fields (JSON), ARGV[7] due at.
-- Returns 1 when created, 0 when the job already exists.
if command == 'submit' then
  if redis.call('EXISTS', job) == 1 then return 0 end
  set_fields(ARGV[6])
  redis.call('HSET', job, 'state', 'queued', 'step', 'create', 'attempts', '1',
             'created_at', ARGV[2], 'updated_at', ARGV[2])
  redis.call('ZADD', KEYS[3], now, id)
  redis.call('ZADD', state_prefix .. 'queued', now, id)
  redis.call('SADD', KEYS[4], id)
  schedule(tonumber(ARGV[7]))
  return 1
end

-- move: the plain transitions. ARGV[6] sources, ARGV[7] state ('' stays), ARGV[8] step ('' keeps),
-- ARGV[9] due at ('' keeps, < 0 leaves the due-set), ARGV[10] fields (JSON). Returns the old state.
if command == 'move' then
  local old = current_in(ARGV[6])
  if not old then return false end
  -- A step's scratch (a reserved quota slot, a listing cut short) is for its next run only.
  redis.call('HDEL', job, 'quota_ticket', 'listing', 'listing_next', 'listing_at',
             'listing_version')
  set_fields(ARGV[10])
  if ARGV[7] ~= '' then
    enter(old, ARGV[7], ARGV[8], tonumber(ARGV[9]))
  else
    schedule(tonumber(ARGV[9]))
  end
  return old
end

-- created: the create call answered (or a listing found our transcript). KEYS[3] the transcript's
-- owner key. ARGV[6] sources, ARGV[7] transcript id, ARGV[8] first poll at, ARGV[9] lease.
-- Honours a transcript event kept before the answer. Returns the new state.
if command == 'created' then
  local old = current_in(ARGV[6])
  if not old then return false end
  local transcript = ARGV[7]
  redis.call('HDEL', job, 'quota_ticket', 'listing', 'listing_next', 'listing_at',
             'listing_version')
  redis.call('SET', KEYS[3], id)
  redis.call('HSET', job, 'transcript_id', transcript, 'transcript_created_at', ARGV[2],
             'polls', '0')
  local early = redis.call('HMGET', job, 'early_event', 'early_transcript_id', 'early_sub_code')
  redis.call('HDEL', job, 'create_pending', 'create_key_at', 'early_event', 'early_transcript_id',
             'early_sub_code', 'refusal', 'refused_version')
  if early[2] == transcript and early[1] == 'done' then
    to_fetching(old, tonumber(ARGV[9]))
    return 'fetching'
  end
  if early[2] == transcript and early[1] == 'failed' then
    fail(old, transcript_failed(early[3]))
    return 'failed'
  end
  enter(old, 'awaiting', 'await', tonumber(ARGV[8]))
  return 'awaiting'
end

-- transcript: Recall says a transcript finished (webhook or poll). ARGV[6] sources when it is the
-- job's transcript, ARGV[7] sources for keeping it until the create answer, ARGV[8] transcript id,
-- ARGV[9] 'done' or 'failed', ARGV[10] sub_code, ARGV[11] lease.
-- Returns 'fetching', 'failed', 'kept' or 'ignored'.
if command == 'transcript' then
  local transcript = ARGV[8]
  local owned = redis.call('HGET', job, 'transcript_id')
  local old = current_in(ARGV[6])
  if old and owned == transcript then
    if ARGV[9] == 'done' then
      to_fetching(old, tonumber(ARGV[11]))
      return 'fetching'
    end
    fail(old, transcript_failed(ARGV[10]))
    return 'failed'
  end
  if current_in(ARGV[7]) and (not owned or owned == transcript) then
    redis.call('HSET', job, 'early_event', ARGV[9], 'early_transcript_id', transcript,
               'early_sub_code', ARGV[10])
    return 'kept'
  end
  return 'ignored'
end

-- retry: an operator re-runs a failed job from the furthest point known: a known transcript is
-- awaited (or fetched) again, else the create step runs, reconciling first if a create may have
-- happened (create_pending and the create key are kept). ARGV[6] sources. Returns the new state.
if command == 'retry' then
  local old = current_in(ARGV[6])
  if not old then return false end
  redis.call('HDEL', job, 'error', 'failures', 'last_error', 'quota_ticket')
  redis.call('HINCRBY', job, 'attempts', 1)
  redis.call('HSET', job, 'polls', '0')
  if redis.call('HEXISTS', job, 'transcript_id') == 1 then
    enter(old, 'awaiting', 'await', now)
    return 'awaiting'
  end
  enter(old, 'queued', 'create', now)
  return 'queued'
end

-- claim: the sweeper takes the due jobs, pushing each one lease ahead so one sweeper takes it.
-- ARGV[6] limit, ARGV[7] lease, ARGV[8] job-lock key prefix. Returns {id, step, recording, ...};
-- finished or vanished jobs leave the due-set; a job whose step still runs (its lock held, kept
-- alive by a heartbeat) is looked at again when that lock would expire.
if command == 'claim' then
  local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))
  local out = {}
  for _, each in ipairs(ids) do
    local fields = redis.call('HMGET', job_prefix .. each, 'state', 'step', 'recording_id')
    local held = redis.call('PTTL', ARGV[8] .. each)
    if not fields[1] or fields[1] == 'done' or fields[1] == 'failed' then
      redis.call('ZREM', due, each)
    elseif held > 0 then
      redis.call('ZADD', due, now + held / 1000, each)
    else
      redis.call('ZADD', due, now + tonumber(ARGV[7]), each)
      table.insert(out, each)
      table.insert(out, fields[2])
      table.insert(out, fields[3])
    end
  end
  return out
end

-- prune: finished jobs past their retention leave Redis with their index entries (the state
-- sets are scored by when a job entered its state). KEYS[3] every job. ARGV[6] cutoff, ARGV[7]
-- limit, ARGV[8] recording-set prefix, ARGV[9] transcript-owner prefix. Returns how many.
if command == 'prune' then
  local pruned = 0
  for _, state in ipairs({'done', 'failed'}) do
    local ids = redis.call('ZRANGEBYSCORE', state_prefix .. state, '-inf', ARGV[6], 'LIMIT', 0,
                           tonumber(ARGV[7]))
    for _, each in ipairs(ids) do
      local hash = job_prefix .. each
      local fields = redis.call('HMGET', hash, 'recording_id', 'transcript_id')
      if fields[1] then redis.call('SREM', ARGV[8] .. fields[1], each) end
      if fields[2] and redis.call('GET', ARGV[9] .. fields[2]) == each then
        redis.call('DEL', ARGV[9] .. fields[2])
      end
      redis.call('DEL', hash)
      redis.call('ZREM', KEYS[3], each)
      redis.call('ZREM', state_prefix .. state, each)
      redis.call('ZREM', due, each)
      pruned = pruned + 1
    end
  end
  return pruned
end

return redis.error_reply('jobs.lua: unknown command ' .. tostring(command))
