-- Sending, taking and claiming steps: a part of the jobs script (jobs.lua has its keys,
-- arguments and helpers).

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
