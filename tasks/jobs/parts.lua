-- A finished job's hash keeps each value over PART bytes in parts `{name}.0`, `{name}.1`, ...
-- (jobs.lua `compact`), so that Redis keeps the hash in its compact encoding: one value over
-- `hash-max-listpack-value` (64 bytes by default) would make the whole hash a hash table. These
-- read and write such values; joined before the jobs script and the callbacks' (tasks/scripts.py).

local PART = 64

-- A field of a job's hash, whole whether it is kept in parts or not (false: none).
local function field(key, name)
  local value = redis.call('HGET', key, name)
  if value then return value end
  local parts, n = {}, 0
  while true do
    local part = redis.call('HGET', key, name .. '.' .. n)
    if not part then break end
    n = n + 1
    parts[n] = part
  end
  return n > 0 and table.concat(parts) or false
end

-- Append to `out` the fields that keep `value`: `name` itself, or its parts when it is longer
-- than PART (unless `whole`).
local function split(out, name, value, whole)
  if whole or #value <= PART then
    table.insert(out, name)
    table.insert(out, value)
    return out
  end
  for i = 0, math.ceil(#value / PART) - 1 do
    table.insert(out, name .. '.' .. i)
    table.insert(out, string.sub(value, i * PART + 1, (i + 1) * PART))
  end
  return out
end

-- Write a field of a finished job's hash, in parts when it is longer than PART.
local function put(key, name, value)
  redis.call('HDEL', key, name)
  local n = 0
  while redis.call('HDEL', key, name .. '.' .. n) == 1 do n = n + 1 end
  redis.call('HSET', key, unpack(split({}, name, value, false)))
end
