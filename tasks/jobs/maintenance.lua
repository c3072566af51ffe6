-- The store's upkeep, and the end of the jobs script (jobs.lua has its keys, arguments and
-- helpers).

local function words(text)
  local list = {}
  for word in string.gmatch(text, '%S+') do list[#list + 1] = word end
  return list
end

local function member(list, word)
  return string.find(' ' .. list .. ' ', ' ' .. word .. ' ', 1, true) ~= nil
end

-- A finished job's upkeep: its hash compacted, its transcript's owner key gone.
local function settle()
  disown(redis.call('HGET', job, 'transcript_id'), id)
  compact()
end

-- reindex: repair the listing indexes of jobs, each atomically: a job sits in the one listing
-- index of its workspace, state and error code, in no other, and in its recording's; a finished
-- job is settled (compacted unless a rollout goes on, its owner key gone); a job gone leaves
-- every index. Run by JobStore.upgrade (schema 5: jobs written before these indexes) and by
-- `recall-transcribe jobs reindex` (jobs an earlier release moved or submitted during a rolling
-- deploy); a recording's set of job ids as releases before schema 4 kept it is dropped.
-- Idempotent. ARGV[5] recording-index prefix, ARGV[6] old recording-set prefix, ARGV[7] the
-- finished states (space-separated), ARGV[8..] job ids. Returns how many jobs' entries changed.
if command == 'reindex' then
  local repaired, every = 0, redis.call('SMEMBERS', registry)
  for i = 8, #ARGV do
    id, job = ARGV[i], job_prefix .. ARGV[i]
    local f = redis.call('HMGET', job, 'state', 'created_at', 'recording_id')
    local changed, own = 0, nil
    if f[1] and f[2] then own = index_of(f[1]) end
    for _, key in ipairs(every) do
      if key ~= own then changed = changed + redis.call('ZREM', key, id) end
    end
    if own then
      changed = changed + redis.call('ZADD', own, f[2], id)
      if redis.call('SADD', registry, own) == 1 then every[#every + 1] = own end
      if f[3] then
        changed = changed + redis.call('ZADD', ARGV[5] .. f[3], f[2], id)
        redis.call('DEL', ARGV[6] .. f[3])
      end
      if member(ARGV[7], f[1]) then settle() end
    end
    if changed > 0 then repaired = repaired + 1 end
  end
  return repaired
end

-- prune: finished jobs past their retention leave Redis with their index entries (in every
-- listing index: an earlier release may have left one behind), walked from the oldest created
-- in each finished listing index: a job goes once its last change (its finish, or a later
-- archive) is older than the retention; one created before it and finished since stays, and
-- the next call goes on past it (how many such jobs head each index is kept in ARGV[10], until
-- a walk reaches the index's end and starts over). KEYS[5..] the finished jobs' listing indexes.
-- ARGV[5] age (seconds), ARGV[6] limit, ARGV[7] recording-index prefix, ARGV[8] the finished
-- states (space-separated), ARGV[9] the most entries read, shared by the indexes, ARGV[10] the
-- hash of entries passed over, by index. Returns how many.
if command == 'prune' then
  local pruned, cutoff, every = 0, now - tonumber(ARGV[5]), redis.call('SMEMBERS', registry)
  local limit, skipped = tonumber(ARGV[6]), ARGV[10]
  local reads = math.max(100, math.floor(tonumber(ARGV[9]) / math.max(1, #KEYS - 6)))
  for k = 5, #KEYS - 2 do
    local index, read = KEYS[k], 0
    local kept = tonumber(redis.call('HGET', skipped, index)) or 0
    local ended = false
    while pruned < limit and read < reads do
      local ids = redis.call('ZRANGEBYSCORE', index, '-inf', cutoff, 'LIMIT', kept, 100)
      if #ids == 0 then ended = true break end
      for _, each in ipairs(ids) do
        read = read + 1
        local hash = job_prefix .. each
        local f = redis.call('HMGET', hash, 'state', 'updated_at', 'recording_id', 'transcript_id')
        if not f[1] then
          redis.call('ZREM', index, each)
        elseif not member(ARGV[8], f[1]) or tonumber(f[2]) > cutoff then
          kept = kept + 1
        else
          for _, key in ipairs(every) do redis.call('ZREM', key, each) end
          if f[3] then redis.call('ZREM', ARGV[7] .. f[3], each) end
          disown(f[4], each)
          redis.call('DEL', hash)
          redis.call('ZREM', due, each)
          pruned = pruned + 1
        end
        if pruned >= limit or read >= reads then break end
      end
    end
    if ended then redis.call('HDEL', skipped, index) else redis.call('HSET', skipped, index, kept) end
  end
  return pruned
end

-- changed: our create or delete reached Recall and may have changed what the recording holds:
-- its version (KEYS[5]) moves, if anyone keeps it (`recording_version` starts it when a listing
-- or a refusal is to be compared with it later: no other recording pays for one). ARGV[5] how
-- long it is kept (seconds).
if command == 'changed' then
  if redis.call('EXISTS', KEYS[5]) == 0 then return 0 end
  redis.call('INCR', KEYS[5])
  redis.call('EXPIRE', KEYS[5], ARGV[5])
  return 1
end

return redis.error_reply('jobs.lua: unknown command ' .. tostring(command))
