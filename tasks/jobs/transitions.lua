-- The job's transitions: a part of the jobs script (jobs.lua has its keys, arguments and helpers).

-- submit. KEYS[5] the recording's jobs.
-- ARGV[5] fields (JSON), ARGV[6] delay, ARGV[7] deadline (seconds), ARGV[8..9] target,
-- ARGV[10] history, ARGV[11] the jobs of the recording that stand for this one ('' none,
-- 'automatic' a webhook or reconcile job, 'any' any job) in the same workspace. Returns 1 when
-- created, 0 when it exists, or the id of the recording's job that stands for it.
if command == 'submit' then
  if redis.call('EXISTS', job) == 1 then return 0 end
  if ARGV[11] ~= '' then
    local workspace = cjson.decode(ARGV[5]).workspace
    for _, other in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
      local f = redis.call('HMGET', job_prefix .. other, 'state', 'workspace', 'source')
      local source = f[3]
      local raw = not source and field(job_prefix .. other, 'metadata')
      if raw then  -- a record from before `source` was kept: its metadata's
        local metadata = cjson.decode(raw)
        source = type(metadata) == 'table' and metadata.source or nil
        if source == 'recording.done' then source = 'webhook' end
      end
      if f[1] and (f[2] or 'default') == workspace
          and (ARGV[11] == 'any' or source == 'webhook' or source == 'reconcile') then
        return other
      end
    end
  end
  set_fields(ARGV[5])
  redis.call('HSET', job, 'attempts', '1', 'created_at', now, 'deadline_at', now + tonumber(ARGV[7]))
  redis.call('ZADD', KEYS[5], now, id)
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

-- created: the create call answered (or a listing found our transcript); the transcript's owner
-- key names the job until it finishes. ARGV[5] sources, ARGV[6] transcript id, ARGV[7] first poll (delay), ARGV[8] lease,
-- ARGV[9..10] awaiting, ARGV[11..12] fetching, ARGV[13..14] failed, ARGV[15] history. Honours a
-- transcript event kept before the answer. Returns the new state.
if command == 'created' then
  local old = current_in(ARGV[5])
  if not old then return false end
  local transcript = ARGV[6]
  hdel(job, SCRATCH)
  redis.call('SET', owner_prefix .. transcript, id)
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
  expand()
  finished = true  -- written to a finished job: compacted again once recorded
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

-- `given` added to the job's destinations `list` unless known, or the caller's share is spent.
local function add_callback(given, list)
  local mine = 0
  for _, known in ipairs(list) do
    if known.url == given.url then return 'known' end
    if known.by == given.by then mine = mine + 1 end
  end
  if mine >= tonumber(ARGV[6]) then return 'full' end
  table.insert(list, given)
  redis.call('HSET', job, 'callback_urls', cjson.encode(list))
  return 'added'
end

if command == 'add_callback' then
  if redis.call('EXISTS', job) == 0 then return false end
  expand()
  local list = cjson.decode(redis.call('HGET', job, 'callback_urls') or '[]')
  local old = redis.call('HGET', job, 'callback_url')
  if old then
    table.insert(list, 1, {url = old, by = ARGV[8]})
    redis.call('HSET', job, 'callback_urls', cjson.encode(list))
    redis.call('HDEL', job, 'callback_url')
  end
  local added = add_callback(cjson.decode(ARGV[5]), list)
  local fields = redis.call('HMGET', job, 'state', 'attempts')
  if string.find(',' .. ARGV[7] .. ',', ',' .. fields[1] .. ',', 1, true) then
    if added == 'added' then redis.call('ZADD', outbox, now, id .. ':' .. fields[2]) end
    compact()
  end
  return added
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
  expand()
  drop_ticket()
  hdel(job, SCRATCH)
  redis.call('ZREM', index_of(old), id)  -- the index with its error, before the error goes
  local history, spelled = redis.call('HGET', job, 'history'), error_text()
  if history and spelled then  -- the line that met the error says so, once it is gone
    history = string.gsub('\n' .. history .. '\n', '(\n%d+ %S+ %S+) ' .. OWN .. '\n',
      function(line) return line .. ' ' .. spelled .. '\n' end)
    redis.call('HSET', job, 'history', string.sub(history, 2, -2))
  end
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
    redis.call('SET', owner_prefix .. redis.call('HGET', job, 'transcript_id'), id)
    state, phase = ARGV[8], ARGV[9]
  end
  enter(old, state, phase, delay)
  record(ARGV[13])
  return phase
end
