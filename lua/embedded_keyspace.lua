-- embedded_keyspace.lua: the embedded engine's keyspace, in Lua: exactly the
-- Redis commands the limiter scripts call, answered from Lua tables with a
-- per-key expiry, so an embedded script never leaves Lua while it runs.
--
-- Not a script, and never sent to Redis: only tollgate/limiter/store/keyspace.py
-- loads it (scripts.py composes entry scripts from their "-- include:" line,
-- and no script includes this file). Defines keyspace_new() -> ks.
-- KEYS: none. ARGV: none. The commands take keys and arguments as in Redis:
--   TIME
--   GET key                 SET key value [PX ms]       DEL key [key ...]
--   PEXPIRE key ms [GT]     PTTL key
--   HMGET key field [field ...]                         HGETALL key
--   HSET key field value [field value ...]              HINCRBY key field increment
--   HDEL key field [field ...]
--   ZADD key [XX] score member [score member ...]       ZSCORE key member
--   ZCOUNT key min max      ZRANGEBYSCORE key min max [WITHSCORES] [LIMIT offset count]
--   ZREM key member [member ...]                        ZREMRANGEBYSCORE key min max
--   ZCARD key               ZRANGE key start stop [WITHSCORES] (by rank only)
-- Any other command is an error. Arguments are strings or numbers; a number
--   is taken exactly as Redis receives it from Lua (integers below 1e17 in
--   full, others as %.17g). A hash keeps its fields in insertion order (as a
--   small Redis hash does); a hash or sorted set left empty disappears.
-- Units: ks.begin(now_us) freezes time for one script at now_us (integer
--   microseconds since the Unix epoch); TIME answers it; expiry times are
--   integer ms since the epoch, and a key whose expiry is <= now is gone.
-- Expiry: lazy (a key read after its expiry is dropped then) plus a sweep:
--   every key with a TTL has an entry in a min-heap of expiry times, and
--   begin() drops at most SWEEP_BATCH keys that are due, so memory stays
--   bounded without a pause. A key's heap entry is only replaced when its
--   expiry moves earlier; an entry that fires early re-files the key.
-- Returns: ks = { call(name, ...) (redis.call), commands (NAME -> function),
--   begin(now_us), str(v) (an argument as Redis receives it), pttl(key),
--   live_keys(), size(), held(), dispatch(name, ...) }.
--   Replies as a script sees them on Redis 7 (RESP2): integer -> number,
--   bulk string -> string, nil -> false, array -> table (nil items false),
--   status -> {ok = "OK"}; an error reply is raised as {err = "..."}.

local SWEEP_BATCH = 64
local STR_MEMO_MAX = 1024 -- numbers whose argument string is remembered
local HASH = 'hash'
local ZSET = 'zset'
local WRONGTYPE = 'WRONGTYPE Operation against a key holding the wrong kind of value'
local NOT_INTEGER = 'ERR value is not an integer or out of range'

-- Redis arity: n > 0 exactly n words (the command name included), n < 0 at least -n.
local ARITY = {
  TIME = 1, GET = 2, SET = -3, DEL = -2, PEXPIRE = -3, PTTL = 2,
  HMGET = -3, HGETALL = 2, HSET = -4, HINCRBY = 4, HDEL = -3,
  ZADD = -4, ZSCORE = 3, ZCOUNT = 4, ZRANGEBYSCORE = -4, ZREM = -3, ZREMRANGEBYSCORE = 4,
  ZCARD = 2, ZRANGE = -4,
}

-- new_table(narr, nhash): a table with room for narr array items, LuaJIT's table.new when there is one (no
-- regrowth while a reply is filled), else an empty table.
local function table_new_or_empty()
  local ok, table_new = pcall(require, 'table.new')
  if ok then
    return table_new
  end
  return function()
    return {}
  end
end

local NEW_TABLE = table_new_or_empty()

local function reply_error(message)
  error({ err = message }, 0)
end

-- An argument as Redis receives it from Lua: strings unchanged, numbers formatted.
local function arg_str(v)
  local t = type(v)
  if t == 'string' then
    return v
  elseif t == 'number' then
    if v == math.floor(v) and v > -1e17 and v < 1e17 then
      return string.format('%d', v)
    end
    return string.format('%.17g', v)
  end
  reply_error('ERR Lua redis lib command arguments must be strings or integers')
end

-- Integer arguments already checked, string -> number (a TTL, an increment come back call after call,
-- and the pattern match that checks one is not compiled by LuaJIT); dropped whole at INT_MEMO_MAX.
local INT_MEMO_MAX = 1024
local INT_MEMO = { map = {}, n = 0 }

-- A strict integer, as Redis parses one (no sign "+", no leading zeros or spaces).
local function int_arg(v, message)
  local known = INT_MEMO.map[v]
  if known ~= nil then
    return known
  end
  if type(v) == 'number' then
    if v == math.floor(v) and v > -1e17 and v < 1e17 then
      return v
    end
    v = arg_str(v)
  end
  if type(v) == 'string' and #v <= 19 and (v == '0' or string.find(v, '^%-?[1-9]%d*$')) then
    local n = tonumber(v)
    if INT_MEMO.n >= INT_MEMO_MAX then
      INT_MEMO.map, INT_MEMO.n = {}, 0
    end
    INT_MEMO.map[v] = n
    INT_MEMO.n = INT_MEMO.n + 1
    return n
  end
  reply_error(message or NOT_INTEGER)
end

-- A double as Redis parses one (strtod, the whole string, not NaN).
local function float_arg(v, message)
  if type(v) ~= 'number' then
    v = arg_str(v)
    local last = string.byte(v, -1)
    if last == nil or last == 32 or (last >= 9 and last <= 13) then
      reply_error(message)
    end
    v = tonumber(v)
  end
  if v == nil or v ~= v then
    reply_error(message)
  end
  return v
end

-- A ZCOUNT / ZRANGEBYSCORE bound: value and exclusiveness ("(5", "-inf", "+inf").
local function bound_arg(v)
  if type(v) == 'string' and string.byte(v, 1) == 40 then -- '('
    return float_arg(string.sub(v, 2), 'ERR min or max is not a float'), true
  end
  return float_arg(v, 'ERR min or max is not a float'), false
end

local function in_range(score, lo, lo_ex, hi, hi_ex)
  if lo_ex then
    if score <= lo then
      return false
    end
  elseif score < lo then
    return false
  end
  if hi_ex then
    return score < hi
  end
  return score <= hi
end

local function score_str(score)
  return string.format('%.17g', score)
end

local function by_score_then_member(a, b)
  if a[1] ~= b[1] then
    return a[1] < b[1]
  end
  return a[2] < b[2]
end

-- Appends entries[first..last] ({score, member} pairs, sorted) to a range
-- reply: each member, followed by its score when with_scores; returns out.
local function push_entries(out, entries, first, last, with_scores)
  for j = first, last do
    out[#out + 1] = entries[j][2]
    if with_scores then
      out[#out + 1] = score_str(entries[j][1])
    end
  end
  return out
end

-- The lowest (score, member) of a sorted set, cached on it: the concurrency
-- script asks for the earliest lease, the live count and the expired ones on
-- every call, and while the lowest score is in the future all three follow
-- from it without a pass over the members. A write that may change the
-- minimum updates or drops the cache; the next reader rescans once. min_str
-- is the lowest score's reply string once asked for (zmin_str).
local function zmin(z)
  if not z.min_ok then
    local best_score, best_member = nil, nil
    for member, score in pairs(z.map) do
      if best_score == nil or score < best_score or (score == best_score and member < best_member) then
        best_score, best_member = score, member
      end
    end
    z.min_score, z.min_member, z.min_ok, z.min_str = best_score, best_member, true, nil
  end
  return z.min_score, z.min_member
end

-- The lowest score's reply string (after zmin), formatted once for as long as it stays the lowest: the
-- concurrency script asks for it on every call.
local function zmin_str(z)
  local s = z.min_str
  if s == nil then
    s = score_str(z.min_score)
    z.min_str = s
  end
  return s
end

local function keyspace_new()
  local floor, format, upper, byte, select, type, tremove =
    math.floor, string.format, string.upper, string.byte, select, type, table.remove
  local data = {} -- key -> string | {kind = HASH, order, map, incr_str, incr_value (see HINCRBY)} | {kind = ZSET, map, n, min_score, min_member, min_ok} (see zmin)
  local expires = {} -- key -> expiry (ms since the epoch); no entry: no TTL
  local size = 0 -- keys in data (expired ones not yet dropped included)
  local heap_at, heap_key, heap_n = {}, {}, 0 -- min-heap of (expiry, key)
  local filed = {} -- key -> expiry of its earliest entry in the heap
  local now_us, now_ms = 0, 0
  local time_s, time_s_str = -1, '' -- TIME's seconds and their string, kept while they last

  -- -- the heap of expiry times -----------------------------------------------
  local function heap_push(at, key)
    local i = heap_n + 1
    heap_n = i
    while i > 1 do
      local parent = floor(i / 2)
      local pat = heap_at[parent]
      if pat <= at then
        break
      end
      heap_at[i], heap_key[i] = pat, heap_key[parent]
      i = parent
    end
    heap_at[i], heap_key[i] = at, key
  end

  local function heap_pop()
    local at, key = heap_at[1], heap_key[1]
    local last_at, last_key = heap_at[heap_n], heap_key[heap_n]
    heap_at[heap_n], heap_key[heap_n] = nil, nil
    heap_n = heap_n - 1
    local n = heap_n
    if n > 0 then
      local i = 1
      while true do
        local child = i * 2
        if child > n then
          break
        end
        if child < n and heap_at[child + 1] < heap_at[child] then
          child = child + 1
        end
        if heap_at[child] >= last_at then
          break
        end
        heap_at[i], heap_key[i] = heap_at[child], heap_key[child]
        i = child
      end
      heap_at[i], heap_key[i] = last_at, last_key
    end
    return at, key
  end

  -- Rebuilt from the expiry table when stale entries (keys deleted or given
  -- an earlier expiry) outnumber the keys themselves.
  local function heap_rebuild()
    heap_at, heap_key, heap_n, filed = {}, {}, 0, {}
    for key, at in pairs(expires) do
      heap_push(at, key)
      filed[key] = at
    end
  end

  -- -- keys -----------------------------------------------------------------------
  local function drop(key)
    if data[key] ~= nil then
      data[key] = nil
      size = size - 1
    end
    expires[key] = nil
  end

  local function put(key, value)
    if data[key] == nil then
      size = size + 1
    end
    data[key] = value
  end

  local function set_expiry(key, at)
    expires[key] = at
    local f = filed[key]
    if f == nil or at < f then
      filed[key] = at
      heap_push(at, key)
      if heap_n > 2 * size + 1024 then
        heap_rebuild()
      end
    end
  end

  -- Drops up to budget keys whose expiry has come (all of them with math.huge).
  local function sweep(budget)
    while heap_n > 0 and heap_at[1] <= now_ms and budget > 0 do
      local at, key = heap_pop()
      budget = budget - 1
      if filed[key] == at then
        filed[key] = nil
      end
      local e = expires[key]
      if e ~= nil then
        if e <= now_ms then
          drop(key)
        elseif filed[key] == nil then -- its expiry moved later: file it again
          filed[key] = e
          heap_push(e, key)
        end
      end
    end
  end

  local function lookup(key)
    local v = data[key]
    if v ~= nil then
      local at = expires[key]
      if at ~= nil and at <= now_ms then
        drop(key)
        return nil
      end
    end
    return v
  end

  -- The value at key if it is a `kind` (HASH, ZSET), nil if none; WRONGTYPE if another.
  local function lookup_kind(key, kind)
    local v = data[key]
    if v == nil then
      return nil
    end
    local at = expires[key]
    if at ~= nil and at <= now_ms then
      drop(key)
      return nil
    end
    if type(v) ~= 'table' or v.kind ~= kind then
      reply_error(WRONGTYPE)
    end
    return v
  end

  -- arg_str with a bounded memo of the numbers seen (limits, windows, window
  -- starts come back call after call; formatting is what costs).
  local memo, memo_size = {}, 0
  local function str(v)
    if type(v) == 'string' then
      return v
    end
    local s = memo[v]
    if s == nil then
      s = arg_str(v)
      if v == v then -- not NaN
        if memo_size >= STR_MEMO_MAX then
          memo, memo_size = {}, 0
        end
        memo[v] = s
        memo_size = memo_size + 1
      end
    end
    return s
  end

  -- -- commands ---------------------------------------------------------------------
  local C = {}

  C.TIME = function()
    local s = floor(now_us / 1000000)
    if s ~= time_s then
      time_s, time_s_str = s, format('%d', s)
    end
    return { time_s_str, format('%d', now_us - s * 1000000) }
  end

  C.GET = function(key)
    local v = lookup(str(key))
    if v == nil then
      return false
    end
    if type(v) ~= 'string' then
      reply_error(WRONGTYPE)
    end
    return v
  end

  C.SET = function(key, value, ...)
    key = str(key)
    value = arg_str(value)
    local at = nil
    local n = select('#', ...)
    if n > 0 then
      local option, ms = ...
      if n ~= 2 or (option ~= 'PX' and upper(str(option)) ~= 'PX') then
        reply_error('ERR syntax error (the embedded keyspace supports SET key value [PX ms])')
      end
      ms = int_arg(ms)
      if ms <= 0 then
        reply_error("ERR invalid expire time in 'set' command")
      end
      at = now_ms + ms
    end
    put(key, value)
    if at == nil then
      expires[key] = nil
    else
      set_expiry(key, at)
    end
    return { ok = 'OK' }
  end

  C.DEL = function(...)
    local removed = 0
    for i = 1, select('#', ...) do
      local key = str((select(i, ...)))
      if lookup(key) ~= nil then
        drop(key)
        removed = removed + 1
      end
    end
    return removed
  end

  C.PEXPIRE = function(key, ms, flag, ...)
    local gt = false
    if flag ~= nil then
      if select('#', ...) > 0 or (flag ~= 'GT' and upper(str(flag)) ~= 'GT') then
        reply_error('ERR syntax error (the embedded keyspace supports PEXPIRE key ms [GT])')
      end
      gt = true
    end
    key = str(key)
    ms = int_arg(ms)
    if lookup(key) == nil then
      return 0
    end
    if gt then -- only a later expiry; a key without one counts as never expiring
      local at = expires[key]
      if at == nil or now_ms + ms <= at then
        return 0
      end
    end
    if ms <= 0 then
      drop(key)
    else
      set_expiry(key, now_ms + ms)
    end
    return 1
  end

  C.PTTL = function(key)
    key = str(key)
    if lookup(key) == nil then
      return -2
    end
    local at = expires[key]
    if at == nil then
      return -1
    end
    return at - now_ms
  end

  -- A field's value in a hash's map (nil: no hash), false when absent.
  local function field_of(map, field)
    local v = map and map[str(field)]
    if v == nil then
      return false
    end
    return v
  end

  C.HMGET = function(key, ...)
    local h = lookup_kind(str(key), HASH)
    local n = select('#', ...)
    local map = h and h.map
    -- Up to four fields (the scripts ask two or four) as parameters: LuaJIT compiles select(i, ...) for one
    -- i at a time, so a loop over it leaves its trace at every step.
    if n == 4 then
      local f1, f2, f3, f4 = ...
      return { field_of(map, f1), field_of(map, f2), field_of(map, f3), field_of(map, f4) }
    elseif n == 2 then
      local f1, f2 = ...
      return { field_of(map, f1), field_of(map, f2) }
    end
    local out = NEW_TABLE(n, 0)
    for i = 1, n do
      local field = str((select(i, ...)))
      local v = map and map[field]
      if v == nil then
        v = false
      end
      out[i] = v
    end
    return out
  end

  C.HGETALL = function(key)
    local h = lookup_kind(str(key), HASH)
    local out = {}
    if h ~= nil then
      local order, map = h.order, h.map
      for i = 1, #order do
        local field = order[i]
        out[2 * i - 1] = field
        out[2 * i] = map[field]
      end
    end
    return out
  end

  local function hash_for_write(key)
    local h = lookup_kind(key, HASH)
    if h == nil then
      h = { kind = HASH, order = {}, map = {} }
      put(key, h)
    end
    return h
  end

  C.HSET = function(key, ...)
    local n = select('#', ...)
    if n % 2 ~= 0 then
      reply_error("ERR wrong number of arguments for 'hset' command")
    end
    local h = hash_for_write(str(key))
    local order, map = h.order, h.map
    local added = 0
    local field, value, field2, value2 = ...
    for i = 1, n, 2 do
      if i > 3 then
        field, value = select(i, ...)
      elseif i == 3 then
        field, value = field2, value2
      end
      field = str(field)
      if map[field] == nil then
        order[#order + 1] = field
        added = added + 1
      end
      map[field] = arg_str(value)
    end
    return added
  end

  C.HINCRBY = function(key, field, increment)
    increment = int_arg(increment)
    field = str(field)
    local h = hash_for_write(str(key))
    local map = h.map
    local old = map[field]
    local value
    if old == nil then
      h.order[#h.order + 1] = field
      value = increment
    elseif old == h.incr_str then -- the string this command wrote last in this hash: its number is known
      value = h.incr_value + increment
    else
      value = int_arg(old, 'ERR hash value is not an integer') + increment
    end
    local s = format('%d', value)
    map[field] = s
    h.incr_str, h.incr_value = s, value
    return value
  end

  C.HDEL = function(key, ...)
    key = str(key)
    local h = lookup_kind(key, HASH)
    if h == nil then
      return 0
    end
    local order, map = h.order, h.map
    local removed = 0
    for i = 1, select('#', ...) do
      local field = str((select(i, ...)))
      if map[field] ~= nil then
        map[field] = nil
        removed = removed + 1
        for j = 1, #order do
          if order[j] == field then
            tremove(order, j)
            break
          end
        end
      end
    end
    if #order == 0 then
      drop(key)
    end
    return removed
  end

  C.ZADD = function(key, ...)
    key = str(key)
    local n = select('#', ...)
    local first = 1
    local xx = false
    while first <= n do
      local flag = select(first, ...)
      -- A score (digits, a sign, "inf") is not an option: no case conversion for it.
      local b = type(flag) == 'string' and byte(flag, 1)
      if (b ~= 88 and b ~= 120) or upper(flag) ~= 'XX' then -- 'X', 'x'
        break
      end
      xx = true
      first = first + 1
    end
    if first > n or (n - first + 1) % 2 ~= 0 then
      reply_error('ERR syntax error')
    end
    -- Every score is checked before anything is written; one pair (the usual call) needs no list of them.
    local score1, scores = nil, nil
    if n - first == 1 then
      score1 = float_arg((select(first, ...)), 'ERR value is not a valid float')
    else
      scores = {}
      for i = first, n, 2 do
        scores[#scores + 1] = float_arg((select(i, ...)), 'ERR value is not a valid float')
      end
    end
    local z = lookup_kind(key, ZSET)
    if z == nil then
      if xx then
        return 0
      end
      z = { kind = ZSET, map = {}, n = 0, min_ok = true }
      put(key, z)
    end
    local map = z.map
    local added = 0
    for i = first, n, 2 do
      local member = str((select(i + 1, ...)))
      local score = score1 or scores[(i - first) / 2 + 1]
      local old = map[member]
      if old ~= nil or not xx then
        map[member] = score
        if old == nil then
          z.n = z.n + 1
          added = added + 1
        end
        if z.min_ok then
          local ms, mm = z.min_score, z.min_member
          if ms == nil or score < ms or (score == ms and member < mm) then
            z.min_score, z.min_member, z.min_str = score, member, nil
          elseif member == mm and score ~= ms then
            z.min_ok = false -- the minimum moved up: which member is lowest now is unknown
          end
        end
      end
    end
    return added
  end

  C.ZSCORE = function(key, member)
    local z = lookup_kind(str(key), ZSET)
    local score = z and z.map[str(member)]
    if score == nil then
      return false
    end
    return score_str(score)
  end

  C.ZCOUNT = function(key, min, max)
    local lo, lo_ex = bound_arg(min)
    local hi, hi_ex = bound_arg(max)
    local z = lookup_kind(str(key), ZSET)
    local count = 0
    if z ~= nil and hi == math.huge and not hi_ex then
      local low = zmin(z)
      if in_range(low, lo, lo_ex, hi, hi_ex) then
        return z.n -- every member scores at least the lowest one
      end
    end
    if z ~= nil then
      for _, score in pairs(z.map) do
        if in_range(score, lo, lo_ex, hi, hi_ex) then
          count = count + 1
        end
      end
    end
    return count
  end

  C.ZRANGEBYSCORE = function(key, min, max, ...)
    local with_scores, offset, count = false, 0, -1
    local n = select('#', ...)
    local i = 1
    while i <= n do
      local option = upper(str((select(i, ...))))
      if option == 'WITHSCORES' then
        with_scores = true
        i = i + 1
      elseif option == 'LIMIT' and i + 2 <= n then
        local o, c = select(i + 1, ...)
        offset, count = int_arg(o), int_arg(c)
        i = i + 3
      else
        reply_error('ERR syntax error')
      end
    end
    local lo, lo_ex = bound_arg(min)
    local hi, hi_ex = bound_arg(max)
    local z = lookup_kind(str(key), ZSET)
    local out = {}
    if z == nil or offset < 0 then
      return out
    end
    if offset == 0 and count == 1 then
      -- The first member only (what the concurrency script asks): the cached minimum when it is in
      -- range and the range is open above, else one pass, no tables, no sort.
      if hi == math.huge and not hi_ex then
        local low, low_member = zmin(z)
        if in_range(low, lo, lo_ex, hi, hi_ex) then
          if with_scores then
            return { low_member, zmin_str(z) }
          end
          return { low_member }
        end
      end
      local best_score, best_member = nil, nil
      for member, score in pairs(z.map) do
        if in_range(score, lo, lo_ex, hi, hi_ex)
          and (best_score == nil or score < best_score or (score == best_score and member < best_member)) then
          best_score, best_member = score, member
        end
      end
      if best_member ~= nil then
        out[1] = best_member
        if with_scores then
          out[2] = score_str(best_score)
        end
      end
      return out
    end
    local hits = {}
    for member, score in pairs(z.map) do
      if in_range(score, lo, lo_ex, hi, hi_ex) then
        hits[#hits + 1] = { score, member }
      end
    end
    table.sort(hits, by_score_then_member)
    local last = #hits
    if count >= 0 and offset + count < last then
      last = offset + count
    end
    return push_entries(out, hits, offset + 1, last, with_scores)
  end

  C.ZCARD = function(key)
    local z = lookup_kind(str(key), ZSET)
    if z == nil then
      return 0
    end
    return z.n
  end

  -- By rank only: ZRANGE's BYSCORE, BYLEX, REV and LIMIT forms are not implemented (no script uses them).
  C.ZRANGE = function(key, start, stop, option, ...)
    local with_scores = false
    if option ~= nil then
      if select('#', ...) > 0 or (option ~= 'WITHSCORES' and upper(str(option)) ~= 'WITHSCORES') then
        reply_error('ERR syntax error (ZRANGE by rank [WITHSCORES] only, in the embedded keyspace)')
      end
      with_scores = true
    end
    start, stop = int_arg(start), int_arg(stop)
    local z = lookup_kind(str(key), ZSET)
    if z == nil then
      return {}
    end
    local n = z.n
    if start < 0 then
      start = math.max(0, n + start)
    end
    if stop < 0 then
      stop = n + stop
    end
    if stop >= n then
      stop = n - 1
    end
    if start > stop then
      return {}
    end
    if start == 0 and stop == 0 then -- the lowest member (what the concurrency script asks): the cached minimum
      local _, low_member = zmin(z)
      if with_scores then
        return { low_member, zmin_str(z) }
      end
      return { low_member }
    end
    local all = {}
    for member, score in pairs(z.map) do
      all[#all + 1] = { score, member }
    end
    table.sort(all, by_score_then_member)
    return push_entries({}, all, start + 1, stop + 1, with_scores)
  end

  C.ZREM = function(key, ...)
    key = str(key)
    local z = lookup_kind(key, ZSET)
    if z == nil then
      return 0
    end
    local map = z.map
    local removed = 0
    for i = 1, select('#', ...) do
      local member = str((select(i, ...)))
      if map[member] ~= nil then
        map[member] = nil
        removed = removed + 1
        if member == z.min_member then
          z.min_ok = false
        end
      end
    end
    z.n = z.n - removed
    if z.n == 0 then
      drop(key)
    end
    return removed
  end

  C.ZREMRANGEBYSCORE = function(key, min, max)
    local lo, lo_ex = bound_arg(min)
    local hi, hi_ex = bound_arg(max)
    key = str(key)
    local z = lookup_kind(key, ZSET)
    if z == nil then
      return 0
    end
    if lo == -math.huge and not lo_ex then
      local low = zmin(z)
      if not in_range(low, lo, lo_ex, hi, hi_ex) then
        return 0 -- nothing scores as low as the range's top: the usual case of "drop expired leases"
      end
    end
    local map = z.map
    local dead = {}
    for member, score in pairs(map) do
      if in_range(score, lo, lo_ex, hi, hi_ex) then
        dead[#dead + 1] = member
      end
    end
    for j = 1, #dead do
      map[dead[j]] = nil
    end
    if #dead > 0 then
      z.min_ok = false
    end
    z.n = z.n - #dead
    if z.n == 0 then
      drop(key)
    end
    return #dead
  end

  -- -- redis.call -------------------------------------------------------------------
  local function checked_command(name)
    if type(name) ~= 'string' then
      reply_error('ERR Lua redis lib command arguments must be strings or integers')
    end
    local command = C[upper(name)]
    if command == nil then
      reply_error(format("ERR unknown command '%s' (not implemented by the embedded keyspace)", name))
    end
    return command, upper(name)
  end

  local function call(name, ...)
    local command = C[name]
    local arity = ARITY[name]
    if command == nil then -- lower case, or unknown: the checked path
      command, name = checked_command(name)
      arity = ARITY[name]
    end
    local n = select('#', ...) + 1
    if n ~= arity and (arity > 0 or n < -arity) then
      reply_error(format("ERR wrong number of arguments for '%s' command", string.lower(name)))
    end
    return command(...)
  end

  local ks = { call = call, commands = C, str = str }

  function ks.begin(us)
    now_us = us
    now_ms = floor(us / 1000)
    if heap_n > 0 and heap_at[1] <= now_ms then
      sweep(SWEEP_BATCH)
    end
  end

  -- For Python callers (tests, inspection): (true, reply) or (false, error message).
  function ks.dispatch(name, ...)
    local ok, reply = pcall(call, name, ...)
    if ok then
      return true, reply
    end
    if type(reply) == 'table' and reply.err then
      return false, reply.err
    end
    return false, tostring(reply)
  end

  function ks.pttl(key)
    return C.PTTL(key)
  end

  -- Every live key, after dropping all the expired ones.
  function ks.live_keys()
    sweep(math.huge)
    local out = {}
    for key in pairs(data) do
      if lookup(key) ~= nil then
        out[#out + 1] = key
      end
    end
    return out
  end

  function ks.size()
    sweep(math.huge)
    return size
  end

  -- What is held right now, expired keys not yet dropped included: (keys, heap entries).
  function ks.held()
    return size, heap_n
  end

  return ks
end
