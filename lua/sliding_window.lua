-- sliding_window.lua: sliding-window counter that never admits more than
-- the limit over any window, with the window cut into slots.
--
-- Library: included by admit.lua, peek.lua and settle.lua; one limit = one key.
-- KEYS (per limit): a hash; field = slot index floor(time_ms / slot_ms),
--   value = units consumed during that slot.
-- ARGV (per limit): kind = "sliding_window", limit (units), window_ms,
--   cost (units), param = slots per window (slot_ms = ceil(window_ms / slots)),
--   then shadow (admit) or mark (settle).
-- Units: limit and cost in the limit's unit (requests or tokens); time in ms.
-- Exactness: a slot keeps counting until window_ms after the slot ENDS, so
--   the counted sum always covers the whole last window: the limit holds over
--   every window of window_ms; at worst one slot's worth of capacity is held
--   back for up to slot_ms longer than the window.
-- Returns (check): allowed, remaining after this cost, reset_ms (until every
--   counted slot has expired), retry_ms (until enough slots expire for this
--   cost; -1 if cost > limit), mark = the slot index charged.
-- TTL: the key lives until its newest slot stops counting. That moment is
--   the same for every write to one slot: the write that creates the newest
--   slot sets it, later writes to that slot leave it.

local function sw_geometry(now, window_ms, param)
  local slots = tonumber(param) or 1
  local slot_ms = math.max(1, math.ceil(window_ms / slots))
  local now_ms = math.floor(now / 1000)
  local cur = math.floor(now_ms / slot_ms)
  local oldest = math.floor((now_ms - window_ms) / slot_ms)
  return now_ms, slot_ms, cur, oldest
end

local function sw_by_slot(a, b)
  return a[1] < b[1]
end

-- The total the counted slots hold, the newest counted slot (nil: none),
-- the stale fields (nil: none) and the raw reply, read slot by slot only on
-- the rare paths that need it (sw_live). No table per slot: this runs on
-- every admission.
local function sw_read(key, oldest)
  local raw = redis.call('HGETALL', key)
  local stale, total, newest = nil, 0, nil
  for i = 1, #raw, 2 do
    local idx = tonumber(raw[i])
    if idx >= oldest then
      total = total + tonumber(raw[i + 1])
      if newest == nil or idx > newest then
        newest = idx
      end
    else
      stale = stale or {}
      stale[#stale + 1] = raw[i]
    end
  end
  return total, newest, stale, raw
end

-- Counted slots as {index, units} pairs, oldest first.
local function sw_live(raw, oldest)
  local live = {}
  for i = 1, #raw, 2 do
    local idx = tonumber(raw[i])
    if idx >= oldest then
      live[#live + 1] = { idx, tonumber(raw[i + 1]) }
    end
  end
  table.sort(live, sw_by_slot)
  return live
end

-- Milliseconds until slot idx stops counting.
local function sw_slot_left(idx, slot_ms, window_ms, now_ms)
  return math.max(0, (idx + 1) * slot_ms + window_ms - now_ms)
end

-- Milliseconds until every counted slot has stopped counting.
local function sw_reset(newest, slot_ms, window_ms, now_ms)
  if newest == nil then
    return 0
  end
  return sw_slot_left(newest, slot_ms, window_ms, now_ms)
end

ALGORITHMS.sliding_window = {
  check = function(key, now, limit, window_ms, cost, param)
    local now_ms, slot_ms, cur, oldest = sw_geometry(now, window_ms, param)
    local total, newest, stale, raw = sw_read(key, oldest)
    local st = {
      allowed = false, remaining = 0, reset_ms = 0, retry_ms = 0, mark = cur, used = total,
      now_ms = now_ms, slot_ms = slot_ms, cur = cur, stale = stale, newest = newest,
    }
    if count_verdict(st, total, cost, limit) then -- the wait: until enough counted slots stop counting
      local need, freed = total + cost - limit, 0
      local live = sw_live(raw, oldest)
      for i = 1, #live do
        freed = freed + live[i][2]
        if freed >= need then
          st.retry_ms = sw_slot_left(live[i][1], slot_ms, window_ms, now_ms)
          break
        end
      end
    end
    if st.allowed and cost > 0 then
      st.reset_ms = sw_slot_left(cur, slot_ms, window_ms, now_ms)
    else
      st.reset_ms = sw_reset(newest, slot_ms, window_ms, now_ms)
    end
    return st
  end,

  commit = function(key, now, limit, window_ms, cost, param, st)
    redis.call('HINCRBY', key, int(st.cur), int(cost))
    if st.stale then
      redis.call('HDEL', key, unpack(st.stale))
    end
    if st.newest ~= st.cur then
      redis.call('PEXPIRE', key, int(ttl_ms(sw_slot_left(st.cur, st.slot_ms, window_ms, st.now_ms))))
    end
  end,

  adjust = function(key, now, limit, window_ms, delta, param, mark)
    local now_ms, slot_ms, cur, oldest = sw_geometry(now, window_ms, param)
    local applied = 0
    if delta > 0 then
      redis.call('HINCRBY', key, int(cur), int(delta))
      redis.call('PEXPIRE', key, int(ttl_ms(sw_slot_left(cur, slot_ms, window_ms, now_ms))))
      applied = delta
    elseif delta < 0 then
      local slot = tonumber(mark) or cur
      if slot >= oldest then
        local have = tonumber(redis.call('HGET', key, slot)) or 0
        local back = math.min(have, -delta)
        if back > 0 then
          if back == have then
            redis.call('HDEL', key, slot)
          else
            redis.call('HINCRBY', key, slot, -back)
          end
          applied = -back
        end
      end
    end
    local total, newest = sw_read(key, oldest)
    return applied, math.max(0, total - limit), math.max(0, limit - total), sw_reset(newest, slot_ms, window_ms, now_ms)
  end,
}
