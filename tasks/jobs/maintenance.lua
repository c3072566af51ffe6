-- The store's upkeep, and the end of the jobs script (jobs.lua has its keys, arguments and
-- helpers).

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
