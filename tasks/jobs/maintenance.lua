-- The store's upkeep, and the end of the jobs script (jobs.lua has its keys, arguments and
-- helpers).

-- Every listing-index key the job's id may sit in: each state's index, and the error indexes of
-- each state for the codes in `codes` (a table) and the job's own code.
local function indexes(states, codes, own)
  local all = {}
  for _, state in ipairs(states) do
    all[#all + 1] = index_prefix .. state
    for _, code in ipairs(codes) do all[#all + 1] = index_prefix .. state .. ':error:' .. code end
    if own then all[#all + 1] = index_prefix .. state .. ':error:' .. own end
  end
  return all
end

local function words(text)
  local list = {}
  for word in string.gmatch(text, '%S+') do list[#list + 1] = word end
  return list
end

-- The job's error code (nil without an error), as error_index spells it.
local function error_code(error_json)
  if not error_json then return nil end
  return tostring(cjson.decode(error_json).code)
end

-- reindex: repair the listing indexes of jobs, each atomically: a job sits in its state's index
-- (and that state's index of its error code) and in no other state's or code's, and in its
-- recording's and workspace's; a job gone leaves every state and code index. Run once by
-- JobStore.upgrade (jobs written before the indexes; their recording's set of job ids as those
-- releases kept it is dropped) and by `recall-transcribe jobs reindex` (jobs an earlier release
-- moved or submitted during a rolling deploy). Idempotent. ARGV[5] recording-index prefix,
-- ARGV[6] old recording-set prefix, ARGV[7] workspace-set prefix, ARGV[8] every state
-- (space-separated), ARGV[9] every error code (space-separated), ARGV[10..] job ids. Returns how
-- many jobs' entries it changed.
if command == 'reindex' then
  local repaired, states, codes = 0, words(ARGV[8]), words(ARGV[9])
  for i = 10, #ARGV do
    id, job = ARGV[i], job_prefix .. ARGV[i]
    local f = redis.call('HMGET', job, 'state', 'created_at', 'recording_id', 'error', 'workspace')
    local changed = 0
    if f[1] and f[2] then
      local own = error_code(f[4])
      local keep = {[index_prefix .. f[1]] = true}
      if own then keep[index_prefix .. f[1] .. ':error:' .. own] = true end
      for _, key in ipairs(indexes(states, codes, own)) do
        if not keep[key] then changed = changed + redis.call('ZREM', key, id) end
      end
      for key in pairs(keep) do changed = changed + redis.call('ZADD', key, f[2], id) end
      if f[3] then
        changed = changed + redis.call('ZADD', ARGV[5] .. f[3], f[2], id)
        redis.call('DEL', ARGV[6] .. f[3])
      end
      if f[5] then changed = changed + redis.call('ZADD', ARGV[7] .. f[5], f[2], id) end
    elseif not f[1] then  -- gone: an entry an earlier release's prune left behind
      for _, key in ipairs(indexes(states, codes, nil)) do
        changed = changed + redis.call('ZREM', key, id)
      end
    end
    if changed > 0 then repaired = repaired + 1 end
  end
  return repaired
end

-- prune: finished jobs past their retention leave Redis with their index entries (the state
-- sets are scored by when a job entered its state), every state's listing index and those of
-- its error code included (an earlier release may have moved it without them). KEYS[5] every
-- job. ARGV[5] age (seconds), ARGV[6] limit, ARGV[7] recording-index prefix, ARGV[8]
-- transcript-owner prefix, ARGV[9] workspace-set prefix, ARGV[10] every state
-- (space-separated), ARGV[11..] the finished states. Returns how many.
if command == 'prune' then
  local pruned, states = 0, words(ARGV[10])
  for i = 11, #ARGV do
    local set = state_prefix .. ARGV[i]
    local ids = redis.call('ZRANGEBYSCORE', set, '-inf', now - tonumber(ARGV[5]), 'LIMIT', 0,
                           tonumber(ARGV[6]))
    for _, each in ipairs(ids) do
      local hash = job_prefix .. each
      job = hash
      local fields = redis.call('HMGET', hash, 'recording_id', 'transcript_id', 'workspace', 'error')
      for _, key in ipairs(indexes(states, {}, error_code(fields[4]))) do
        redis.call('ZREM', key, each)
      end
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
