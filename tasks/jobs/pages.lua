-- One stretch of a listing page (tasks/jobs/listing.py): walks the union of the indexes given
-- (a job sits in one of them at most), newest first from a position, merging them, and keeps the
-- jobs that are also in one of the other indexes given, if any. Reads at most a budget of
-- entries from each index, so a page of a rare combination costs a bounded walk per call.
--
-- KEYS[1..ARGV[6]]  the indexes walked (sorted sets of job ids by creation time)
-- KEYS[ARGV[6]+1..] the indexes a job must be in one of (none: every job walked is kept)
-- ARGV[1]  the highest score: the position's ('+inf' or `(x` when there is no position)
-- ARGV[2]  the position's job id ('': none); entries of exactly ARGV[1] come after it when their
--          id sorts below it (the order Redis gives equal scores)
-- ARGV[3]  the lowest score ('-inf', `x` or `(x`)
-- ARGV[4]  how many matches are wanted       ARGV[5]  how many entries may be read per index
-- Returns {read, exhausted (1: the range is walked to its end), last score, last id,
-- id, score, id, score, ...}: the matches, newest first, and the last entry read.

local walked = tonumber(ARGV[6])
local high, after, low = ARGV[1], ARGV[2], ARGV[3]
local wanted, budget = tonumber(ARGV[4]), tonumber(ARGV[5])

-- True when entry a comes before entry b, newest first (ids descending among equal scores).
local function before(a, b)
  if a.score ~= b.score then return a.score > b.score end
  return a.id > b.id
end

-- Each index's next entries after the position; `frontier`: the last entry of those that may
-- hold more, past which the merge is not yet known.
local entries, frontier = {}, nil
for k = 1, walked do
  local got = {}
  if after ~= '' then  -- the position's own score first: the ids after it (all of them: jobs
    -- created in the same microsecond are few)
    local ties = redis.call('ZREVRANGEBYSCORE', KEYS[k], high, high, 'WITHSCORES')
    for i = 1, #ties, 2 do
      if ties[i] < after and #got < budget then
        got[#got + 1] = {id = ties[i], score = tonumber(ties[i + 1]), raw = ties[i + 1]}
      end
    end
  end
  local from = after ~= '' and '(' .. high or high
  if #got < budget then
    local rest = redis.call('ZREVRANGEBYSCORE', KEYS[k], from, low, 'WITHSCORES', 'LIMIT', 0, budget - #got)
    for i = 1, #rest, 2 do
      got[#got + 1] = {id = rest[i], score = tonumber(rest[i + 1]), raw = rest[i + 1]}
    end
  end
  for _, entry in ipairs(got) do entries[#entries + 1] = entry end
  if #got >= budget and (frontier == nil or before(got[#got], frontier)) then
    frontier = got[#got]
  end
end
table.sort(entries, before)

local read, found, last, stopped = 0, {}, {high, after}, false
for _, entry in ipairs(entries) do
  if frontier and before(frontier, entry) then stopped = true break end
  read = read + 1
  last = {entry.raw, entry.id}
  local keep = #KEYS == walked
  for k = walked + 1, #KEYS do
    if keep then break end
    keep = redis.call('ZSCORE', KEYS[k], entry.id) ~= false
  end
  if keep then
    found[#found + 1] = entry.id
    found[#found + 1] = entry.raw
    if #found / 2 >= wanted then stopped = true break end
  end
end
local exhausted = (frontier == nil and not stopped) and 1 or 0
local out = {read, exhausted, last[1], last[2]}
for _, value in ipairs(found) do out[#out + 1] = value end
return out
