-- fixed_window.lua: fixed windows, either calendar windows in UTC (minute,
-- hour, day, month) for quotas, or plain windows of window_ms aligned to
-- the Unix epoch.
--
-- Library: included by admit.lua, peek.lua and settle.lua; one limit = one key.
-- KEYS (per limit): a hash {w = start of the window in ms since the epoch,
--   n = units consumed in that window}; a stale w reads as n = 0.
-- ARGV (per limit): kind = "fixed_window", limit (units per window),
--   window_ms (used when param is ""), cost (units), param = calendar:
--   "minute" | "hour" | "day" | "month" | "" (plain window_ms), then shadow
--   (admit) or mark (settle).
-- Units: limit and cost in the limit's unit; time in ms; months follow the
--   proleptic Gregorian calendar in UTC.
-- Returns (check): allowed, remaining, reset_ms (until the window ends),
--   retry_ms (until the window ends; -1 if cost > limit), mark = window start.
-- TTL: the key expires when its window ends; set by the write that starts
--   the window (later writes in the same window leave it).
-- Admission (take): once a key has been seen holding the current window, an
--   admission consumes with one HINCRBY and reads what it was before from its
--   answer, instead of HMGET then HINCRBY; the admission gives it back (undo)
--   when it is refused. A key deleted since (an admin reset, eviction) comes
--   back as n = cost: the same call gives it w and its TTL again.

-- Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
local function days_from_civil(y, m, d)
  if m <= 2 then
    y = y - 1
  end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- Year and month of a day count since 1970-01-01.
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp + 3
  if mp >= 10 then
    m = mp - 9
  end
  if m <= 2 then
    y = y + 1
  end
  return y, m
end

local CALENDAR_MS = { minute = 60000, hour = 3600000, day = 86400000 }
-- The month of the day last asked (the calendar arithmetic costs more than the rest of an admission's limit).
local FW_MONTH = { day = false, start = 0, stop = 0 }

-- Start and end (ms since the epoch) of the window holding now_ms.
local function fw_bounds(now_ms, window_ms, calendar)
  if calendar == 'month' then
    local day = div(now_ms, 86400000)
    if FW_MONTH.day ~= day then
      local y, m = civil_from_days(day)
      local ny, nm = y, m + 1
      if nm > 12 then
        ny, nm = y + 1, 1
      end
      FW_MONTH.day, FW_MONTH.start, FW_MONTH.stop =
        day, days_from_civil(y, m, 1) * 86400000, days_from_civil(ny, nm, 1) * 86400000
    end
    return FW_MONTH.start, FW_MONTH.stop
  end
  local len = CALENDAR_MS[calendar] or window_ms
  local start = div(now_ms, len) * len
  return start, start + len
end

-- The window each key was last seen holding (key -> window start; Redis Functions and the embedded engine keep it
-- between calls, EVALSHA starts empty): a key seen holding the current window holds it until the window ends, since
-- every writer (this version or an earlier one, FCALL or EVALSHA) writes the window of Redis's one clock and the key
-- expires when the window ends. Emptied at MEMO_MAX keys.
local FW_SEEN = { map = {}, n = 0 }

local function fw_seen(key, start)
  local map = FW_SEEN.map
  if map[key] == nil then
    if FW_SEEN.n >= MEMO_MAX then
      map = {}
      FW_SEEN.map, FW_SEEN.n = map, 0
    end
    FW_SEEN.n = FW_SEEN.n + 1
  end
  map[key] = start
end

-- What the current call (common.lua's CALL) has taken from each key, for the admissions of a batch after the first
-- (admission.lua): FW_NOW.count[key] the key's n in the window starting at FW_NOW.start[key], as the key holds it once
-- what is held back is written. A script runs alone, so what its own HINCRBY answered stays true until it writes
-- again: a take or undo of a known key is done on it, and one HSET writes n when the admissions are done
-- (fw_write_all(), admission.lua). Any other read or write of the key (fw_sync()) first writes what is held and forgets
-- the key. FW_NOW.keys lists the keys holding a write back (FW_NOW.held[key]). Replaced at each batch's first take.
local FW_NOW = { n = false, count = {}, start = {}, held = {}, keys = {}, size = 0 }

local function fw_now()
  local c = FW_NOW
  if c.n ~= CALL.n then
    c.n, c.count, c.start, c.held, c.size = CALL.n, {}, {}, {}, 0
  end
  return c
end

local function fw_write(c, key)
  if c.held[key] then
    c.held[key] = false
    redis.call('HSET', key, 'n', int(c.count[key]))
  end
end

-- Before a read or write of key outside the memo: what is held back is written, and the key forgotten.
local function fw_sync(key)
  local c = FW_NOW
  if c.n == CALL.n and c.count[key] ~= nil then
    fw_write(c, key)
    c.count[key] = nil
  end
end

-- Writes everything held back by the current call (when its admissions are done).
local function fw_write_all()
  local c = FW_NOW
  if c.n == CALL.n then
    for i = 1, c.size do
      fw_write(c, c.keys[i])
      c.keys[i] = nil
    end
    c.size = 0
  end
end

-- Marks key as holding a write back.
local function fw_hold(c, key)
  if not c.held[key] then
    c.held[key] = true
    c.size = c.size + 1
    c.keys[c.size] = key
  end
end

-- Units used in the window starting at start, and whether the key holds that window (w is compared as the
-- string Redis holds: the window's start is formatted once per window, not parsed on every call).
local function fw_load(key, start)
  fw_sync(key)
  local got = redis.call('HMGET', key, 'w', 'n')
  if got[1] == int_memo(start) then
    fw_seen(key, start)
    return tonumber(got[2]) or 0, true
  end
  return 0, false
end

-- The verdict of `used` units before `cost` in the window [start, stop), into st (check's fields).
local function fw_verdict(st, now_ms, start, stop, used, current, limit, cost)
  st.reset_ms, st.retry_ms, st.mark, st.used = stop - now_ms, 0, start, used
  st.now_ms, st.stop, st.current = now_ms, stop, current
  if count_verdict(st, used, cost, limit) then
    st.retry_ms = stop - now_ms
  end
  return st
end

ALGORITHMS.fixed_window = {
  check = function(key, now, limit, window_ms, cost, param, st)
    local now_ms = div(now, 1000)
    local start, stop = fw_bounds(now_ms, window_ms, param)
    local used, current = fw_load(key, start)
    return fw_verdict(st, now_ms, start, stop, used, current, limit, cost)
  end,

  -- check and commit in one write, for an admission's cost > 0 on a key seen holding the current window (else nil:
  -- check, then commit). Consumed whatever the verdict: admission.lua gives it back with undo when it refuses.
  take = function(key, now, limit, window_ms, cost, param, st)
    local now_ms = div(now, 1000)
    local start, stop = fw_bounds(now_ms, window_ms, param)
    if FW_SEEN.map[key] ~= start then
      return nil
    end
    local c = FW_NOW
    local n = nil
    if c.n == CALL.n then
      n = c.count[key]
    end
    if n ~= nil and n > 0 and c.start[key] == start then -- taken from earlier in this call: n is known
      n = n + cost
      c.count[key] = n
      fw_hold(c, key)
    else
      fw_sync(key)
      n = redis.call('HINCRBY', key, 'n', int_memo(cost))
      if n == cost then -- the key was empty, or gone since it was seen: its window and TTL again
        redis.call('HSET', key, 'w', int_memo(start))
        redis.call('PEXPIRE', key, int(ttl_ms(stop - now_ms)))
      end
      if CALL.batch == CALL.n then
        c = fw_now()
        c.count[key], c.start[key] = n, start
      end
    end
    return fw_verdict(st, now_ms, start, stop, n - cost, true, limit, cost)
  end,

  undo = function(key, cost)
    local c = FW_NOW
    local n = nil
    if c.n == CALL.n then
      n = c.count[key]
    end
    if n ~= nil then
      c.count[key] = n - cost
      fw_hold(c, key)
    else
      redis.call('HINCRBY', key, 'n', int_memo(-cost))
    end
  end,

  commit = function(key, now, limit, window_ms, cost, param, st)
    fw_sync(key)
    if st.current then
      redis.call('HINCRBY', key, 'n', int_memo(cost))
    else
      redis.call('HSET', key, 'w', int_memo(st.mark), 'n', int(st.used + cost))
      redis.call('PEXPIRE', key, int(ttl_ms(st.stop - st.now_ms)))
      fw_seen(key, st.mark)
    end
  end,

  adjust = function(key, now, limit, window_ms, delta, param, mark)
    local now_ms = div(now, 1000)
    local start, stop = fw_bounds(now_ms, window_ms, param)
    local used = fw_load(key, start)
    local applied = 0
    if delta > 0 then
      used = used + delta
      redis.call('HSET', key, 'w', start, 'n', used)
      redis.call('PEXPIRE', key, ttl_ms(stop - now_ms))
      applied = delta
    elseif delta < 0 and tonumber(mark) == start and used > 0 then
      local back = math.min(used, -delta)
      used = used - back
      redis.call('HSET', key, 'n', used)
      applied = -back
    end
    return applied, math.max(0, used - limit), math.max(0, limit - used), stop - now_ms
  end,
}
