-- One stretch of a listing page (tasks/jobs/listing.py): walks the smallest of the indexes given,
-- newest first from a position, and keeps the jobs that are in every other index too. Reads at
-- most a budget of entries, so a page of a rare combination costs a bounded walk per call.
--
-- KEYS[1..]  the indexes (sorted sets of job ids by creation time); a job must be in all of them
-- ARGV[1]  the highest score: the position's ('+inf' or `(x` when there is no position)
-- ARGV[2]  the position's job id ('': none); entries of exactly ARGV[1] come after it when their
--          id sorts below it (the order Redis gives equal scores)
-- ARGV[3]  the lowest score ('-inf', `x` or `(x`)
-- ARGV[4]  how many matches are wanted       ARGV[5]  how many entries may be read
-- Returns {read, exhausted (1: the range is walked to its end), last score, last id,
-- id, score, id, score, ...}: the matches, newest first, and the last entry read.

local walk, others = KEYS[1], {}
local smallest = redis.call('ZCARD', KEYS[1])
for i = 2, #KEYS do
  local size = redis.call('ZCARD', KEYS[i])
  if size < smallest then walk, smallest = KEYS[i], size end
end
for _, key in ipairs(KEYS) do
  if key ~= walk then table.insert(others, key) end
end

local high, after, low = ARGV[1], ARGV[2], ARGV[3]
local wanted, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local read, found, last = 0, {}, {high, after}

-- Looks at a batch of (id, score) entries; true once enough matches are found.
local function take(entries, skip_from)
  for i = 1, #entries, 2 do
    local id, score = entries[i], entries[i + 1]
    read = read + 1
    last = {score, id}
    local keep = skip_from == nil or id < skip_from
    for _, key in ipairs(others) do
      if not keep then break end
      keep = redis.call('ZSCORE', key, id) ~= false
    end
    if keep then
      table.insert(found, id)
      table.insert(found, score)
      if #found / 2 >= wanted then return true end
    end
  end
  return false
end

local enough, exhausted = false, 0
if after ~= '' then  -- the position's own score first: the ids after it
  local ties = redis.call('ZREVRANGEBYSCORE', walk, high, high, 'WITHSCORES', 'LIMIT', 0, budget)
  enough = take(ties, after)
  high = '(' .. high
end
if not enough and read < budget then
  local asked = budget - read
  local entries = redis.call('ZREVRANGEBYSCORE', walk, high, low, 'WITHSCORES', 'LIMIT', 0, asked)
  enough = take(entries, nil)
  if not enough and #entries / 2 < asked then exhausted = 1 end
end
local out = {read, exhausted, last[1], last[2]}
for _, value in ipairs(found) do table.insert(out, value) end
return out
