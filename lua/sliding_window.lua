-- sliding_window.lua: sliding-window counter that never admits more than
-- the limit over any window, with the window cut into slots.
--
-- Library: included by admit.lua, peek.lua and settle.lua; one limit = one key.
-- KEYS (per limit): a hash; field = slot index floor(time_ms / slot_ms),
--   value = units consumed during that slot; and three fields that keep the
--   common path from reading every slot: t = the sum of every slot field
--   present, o = a slot index no slot present is below (the lowest when it was
--   written), n = the highest slot index present (absent with the slots). The key's name says this layout ("sw2." in its kind segment,
--   tollgate/limiter/keys.py): a key of the earlier layout (slot fields only)
--   is never read as one of this one.
-- ARGV (per limit): kind = "sliding_window", limit (units), window_ms,
--   cost (units), param = slots per window (slot_ms = ceil(window_ms / slots)),
--   then shadow (admit) or mark (settle).
-- Units: limit and cost in the limit's unit (requests or tokens); time in ms.
-- Exactness: a slot keeps counting until window_ms after the slot ENDS, so
--   the counted sum always covers the whole last window: the limit holds over
--   every window of window_ms; at worst one slot's worth of capacity is held
--   back for up to slot_ms longer than the window.
-- Reads: one HMGET of t, o, n and the current slot while o is still counted
--   (every slot present counts, their sum is t); every field only when a slot
--   has stopped counting (then the write that follows deletes those slots),
--   or when a refusal needs the wait slot by slot. An admission into the
--   newest slot writes the slot and t with one HSET.
-- Returns (check): allowed, remaining after this cost, reset_ms (until every
--   counted slot has expired), retry_ms (until enough slots expire for this
--   cost; -1 if cost > limit), mark = the slot index charged.
-- TTL: the key lives until its newest slot stops counting. That moment is
--   the same for every write to one slot: the write that creates the newest
--   slot sets it, later writes to that slot leave it.
-- Admission (take): once a key has been seen with no slot below the oldest
--   still counted and with the current slot as its newest (SW_SEEN), an
--   admission consumes with HINCRBY of t, whose answer is the count with its
--   cost (reserved: given back by undo when the admission is refused), then
--   HINCRBY of the slot (finish), instead of HMGET then HSET.

-- What sw_geometry last worked out, and for what: the admissions of a batch (admission.lua) share now, and most
-- sliding windows of a request share window and slots, so one entry answers call after call. field: cur as the
-- hash field's name (int_memo(cur)).
local SW_GEO = {
  now = false, window_ms = false, param = false, now_ms = 0, slot_ms = 0, cur = 0, oldest = 0, field = '',
}

-- now in ms, slot_ms, the slot index of now (cur), the oldest slot index still counted, and cur's field name.
local function sw_geometry(now, window_ms, param)
  local g = SW_GEO
  if g.now == now and g.window_ms == window_ms and g.param == param then
    return g.now_ms, g.slot_ms, g.cur, g.oldest, g.field
  end
  local slots = num(param) or 1
  local slot_ms = -div(-window_ms, slots) -- ceil(window_ms / slots)
  if slot_ms < 1 then
    slot_ms = 1
  end
  local now_ms = div(now, 1000)
  local cur, oldest = div(now_ms, slot_ms), div(now_ms - window_ms, slot_ms)
  local field = int_memo(cur)
  g.now, g.window_ms, g.param, g.now_ms, g.slot_ms, g.cur, g.oldest, g.field =
    now, window_ms, param, now_ms, slot_ms, cur, oldest, field
  return now_ms, slot_ms, cur, oldest, field
end

local function sw_by_slot(a, b)
  return a[1] < b[1]
end

-- The key's state when slots below `oldest` no longer count: all (what t is
-- once the slots that stopped counting are deleted), counted (what the
-- counted slots hold), low and high (the lowest and highest counted slot, nil:
-- none), stale (the fields of slots that stopped counting, nil: none; while
-- they are present o names one of them, so every read comes here until a
-- write deletes them), raw (HGETALL's reply when every field was read, else
-- nil) and here, the units of the slot named `field`.
-- What each key was last seen holding (Redis Functions and the embedded engine keep it between calls; EVALSHA starts
-- empty): SW_SEEN.low[key] its o, SW_SEEN.high[key] its n. o only grows while the key lives (writes go to the current
-- slot or to a slot already present; a write that deletes stopped slots moves o up; a refund that deletes o's slot
-- leaves o), and a key made again starts with o at its current slot: no slot present is ever below a low seen. So
-- while low is still counted, every slot present counts and t is the count. n can go down (a refund that empties the
-- newest slot, a key deleted): a take finds it out from its slot's HINCRBY answer. Emptied at MEMO_MAX keys.
local SW_SEEN = { low = {}, high = {}, n = 0 }

local function sw_seen(key, low, high)
  local seen = SW_SEEN
  if seen.low[key] == nil then
    if seen.n >= MEMO_MAX then
      seen.low, seen.high, seen.n = {}, {}, 0
    end
    seen.n = seen.n + 1
  end
  seen.low[key], seen.high[key] = low, high
end

-- What the current call (common.lua's CALL) has taken from each key, for the admissions of a batch after the first
-- (admission.lua): SW_NOW.t[key] the key's t and SW_NOW.here[key] the units of its slot SW_NOW.field[key] (nil: not
-- known), as the key holds them once what is held back is written. A script runs alone, so what its own writes
-- answered stays true until it writes again: a take, undo or finish of a known key is done on these, and one HSET
-- writes the key when the admissions are done (sw_write_all(), admission.lua), instead of one HINCRBY each. Any other
-- read or write of the key (sw_sync()) first writes what is held and forgets the key. SW_NOW.keys lists the keys
-- holding writes back (SW_NOW.held[key]). Replaced at each batch's first take.
local SW_NOW = { n = false, t = {}, here = {}, field = {}, held = {}, keys = {}, count = 0 }

-- The memo of the current call.
local function sw_now()
  local c = SW_NOW
  if c.n ~= CALL.n then
    c.n, c.t, c.here, c.field, c.held, c.count = CALL.n, {}, {}, {}, {}, 0
  end
  return c
end

-- Writes what the current call holds back for key, if anything.
local function sw_write(c, key)
  if c.held[key] then
    c.held[key] = false
    local here = c.here[key]
    if here == nil then
      redis.call('HSET', key, 't', int(c.t[key]))
    else
      redis.call('HSET', key, 't', int(c.t[key]), c.field[key], int(here))
    end
  end
end

-- Before a read or write of key outside the memo: what is held back is written, and the key forgotten.
local function sw_sync(key)
  local c = SW_NOW
  if c.n == CALL.n and c.t[key] ~= nil then
    sw_write(c, key)
    c.t[key], c.here[key] = nil, nil
  end
end

-- Writes everything held back by the current call (when its admissions are done).
local function sw_write_all()
  local c = SW_NOW
  if c.n == CALL.n then
    for i = 1, c.count do
      sw_write(c, c.keys[i])
      c.keys[i] = nil
    end
    c.count = 0
  end
end

-- Marks key as holding a write back.
local function sw_hold(c, key)
  if not c.held[key] then
    c.held[key] = true
    c.count = c.count + 1
    c.keys[c.count] = key
  end
end

local function sw_load(key, oldest, field)
  sw_sync(key)
  local got = redis.call('HMGET', key, 't', 'o', 'n', field)
  local here = 0
  if got[4] then
    here = tonumber(got[4])
  end
  if not got[2] then
    return 0, 0, nil, nil, nil, nil, here
  end
  local low = num(got[2])
  if low >= oldest then
    local all, high = tonumber(got[1]), num(got[3])
    sw_seen(key, low, high)
    return all, all, low, high, nil, nil, here
  end
  local raw = redis.call('HGETALL', key)
  local counted, stale, high = 0, nil, nil
  low = nil
  for i = 1, #raw, 2 do
    local idx = tonumber(raw[i])
    if idx == nil then -- t, o, n
    elseif idx >= oldest then
      counted = counted + tonumber(raw[i + 1])
      if low == nil or idx < low then
        low = idx
      end
      if high == nil or idx > high then
        high = idx
      end
    else
      stale = stale or {}
      stale[#stale + 1] = raw[i]
    end
  end
  return counted, counted, low, high, stale, raw, here
end

-- Counted slots as {index, units} pairs, oldest first, from HGETALL's reply.
local function sw_live(raw, oldest)
  local live = {}
  for i = 1, #raw, 2 do
    local idx = tonumber(raw[i])
    if idx ~= nil and idx >= oldest then
      live[#live + 1] = { idx, tonumber(raw[i + 1]) }
    end
  end
  table.sort(live, sw_by_slot)
  return live
end

-- Milliseconds until slot idx stops counting.
local function sw_slot_left(idx, slot_ms, window_ms, now_ms)
  local left = (idx + 1) * slot_ms + window_ms - now_ms
  if left < 0 then
    return 0
  end
  return left
end

-- Milliseconds until every counted slot has stopped counting.
local function sw_reset(newest, slot_ms, window_ms, now_ms)
  if newest == nil then
    return 0
  end
  return sw_slot_left(newest, slot_ms, window_ms, now_ms)
end

-- Adds units (> 0) to slot cur (its field `field`, holding `here`) of a key whose counted slots hold `all`:
-- the slot and t, o and n where they move in one HSET, the stale slots deleted, and the TTL set when cur is a
-- new newest slot.
local function sw_add(key, cur, field, here, units, all, stale, low, high, slot_ms, window_ms, now_ms)
  sw_sync(key)
  local newest = high == nil or high < cur
  local slot, total = int(here + units), int(all + units)
  if not newest and low ~= nil and stale == nil then -- the common case: a slot that already counts
    redis.call('HSET', key, field, slot, 't', total)
    return
  end
  if stale then
    redis.call('HDEL', key, unpack(stale))
  end
  if low == nil or stale then
    if low == nil or low > cur then
      low = cur
    end
    if newest then
      redis.call('HSET', key, field, slot, 't', total, 'o', int_memo(low), 'n', field)
    else
      redis.call('HSET', key, field, slot, 't', total, 'o', int_memo(low))
    end
  else
    redis.call('HSET', key, field, slot, 't', total, 'n', field)
  end
  if newest then
    redis.call('PEXPIRE', key, int(ttl_ms(sw_slot_left(cur, slot_ms, window_ms, now_ms))))
    sw_seen(key, low, cur)
  else
    sw_seen(key, low, high)
  end
end

-- Refunds held back within one settle.lua call. A batch settles many requests' reservations on one key, most of
-- them refunds into the slot they were charged in that leave it units: the first of them reads the key, the next
-- ones into the same slot are applied to what it read, and one HSET writes the result (sw_flush, when the call ends
-- or before anything else reads or writes the key). The replies and the key's final state are those of applying
-- each refund on its own. key -> {field, mark, window_ms, param, all, have, total, reset}; SW_HELD.keys lists them.
local SW_HELD = { keys = {}, n = 0, map = {} }

-- Writes what is held for key (nothing when nothing is).
local function sw_flush_key(key)
  local held = SW_HELD.map[key]
  if held ~= nil then
    SW_HELD.map[key] = nil
    redis.call('HSET', key, 't', int(held.all), held.field, int(held.have))
  end
end

-- Writes every refund held back (settle.lua, when its charges are done).
local function sw_flush()
  local keys = SW_HELD.keys
  for i = 1, SW_HELD.n do
    sw_flush_key(keys[i])
    keys[i] = nil
  end
  SW_HELD.n = 0
end

-- Forgets, unwritten, what an earlier call left held (it failed part way; settle.lua, when its charges begin).
local function sw_unhold()
  if SW_HELD.n > 0 then
    SW_HELD.keys, SW_HELD.n, SW_HELD.map = {}, 0, {}
  end
end

-- A refund of a held slot, applied in memory when it leaves the slot units (the case held refunds are for):
-- applied, overdraft, remaining, reset_ms as adjust() returns them; nil otherwise.
local function sw_held_refund(held, limit, window_ms, delta, param, mark)
  if delta >= 0 or held.mark ~= mark or held.window_ms ~= window_ms or held.param ~= param then
    return nil
  end
  local have = held.have
  local back = -delta
  if back >= have then
    return nil
  end
  local total = held.total - back
  held.have, held.all, held.total = have - back, held.all - back, total
  return delta, math.max(0, total - limit), math.max(0, limit - total), held.reset
end

ALGORITHMS.sliding_window = {
  check = function(key, now, limit, window_ms, cost, param, st)
    local now_ms, slot_ms, cur, oldest, field = sw_geometry(now, window_ms, param)
    local all, total, low, newest, stale, raw, here = sw_load(key, oldest, field)
    st.retry_ms, st.mark, st.used, st.now_ms, st.slot_ms = 0, cur, total, now_ms, slot_ms
    st.all, st.stale, st.low, st.newest, st.field, st.here = all, stale, low, newest, field, here
    if count_verdict(st, total, cost, limit) then -- the wait: until enough counted slots stop counting
      local need, freed = total + cost - limit, 0
      local live = sw_live(raw or redis.call('HGETALL', key), oldest)
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
    sw_add(key, st.mark, st.field, st.here, cost, st.all, st.stale, st.low, st.newest, st.slot_ms, window_ms, st.now_ms)
  end,

  -- For an admission's cost > 0 on a key seen as SW_SEEN says: reserves the cost in t and returns st as check
  -- would, allowed; finish writes the slot once the admission is admitted, undo gives t back when it is refused.
  -- nil, with nothing written, when the key was not seen so or the cost does not fit (check answers then).
  take = function(key, now, limit, window_ms, cost, param, st)
    local now_ms, slot_ms, cur, oldest, field = sw_geometry(now, window_ms, param)
    local seen = SW_SEEN
    local low = seen.low[key]
    if low == nil or low < oldest or seen.high[key] ~= cur then
      return nil
    end
    local c = SW_NOW
    local known = nil
    if c.n == CALL.n then
      known = c.t[key]
    end
    local total
    if known ~= nil and known > 0 and c.field[key] == field then -- taken from earlier in this call: t is known
      total = known + cost
      if cost > limit or total > limit then
        return nil -- (what its HINCRBY and the one giving it back would leave)
      end
      c.t[key] = total
      sw_hold(c, key)
    else
      sw_sync(key)
      total = redis.call('HINCRBY', key, 't', int_memo(cost))
      if total == cost then -- no t: the key was gone (a key holding slots holds t > 0); this t goes again
        redis.call('HDEL', key, 't')
        seen.low[key], seen.high[key] = nil, nil
        return nil
      end
      if cost > limit or total > limit then
        redis.call('HINCRBY', key, 't', int_memo(-cost))
        if CALL.batch == CALL.n then
          c = sw_now()
          c.t[key], c.field[key] = total - cost, field
        end
        return nil
      end
      if CALL.batch == CALL.n then
        c = sw_now()
        c.t[key], c.field[key] = total, field
      end
    end
    local used = total - cost
    local reset_ms = (cur + 1) * slot_ms + window_ms - now_ms -- sw_slot_left(cur, ...): cur has not ended
    st.allowed, st.remaining, st.retry_ms, st.mark, st.used, st.reset_ms = true, limit - total, 0, cur, used, reset_ms
    st.now_ms, st.slot_ms, st.window_ms, st.field = now_ms, slot_ms, window_ms, field
    return st
  end,

  undo = function(key, cost)
    local c = SW_NOW
    local known = nil
    if c.n == CALL.n then
      known = c.t[key]
    end
    if known ~= nil then
      c.t[key] = known - cost
      sw_hold(c, key)
    else
      redis.call('HINCRBY', key, 't', int_memo(-cost))
    end
  end,

  -- The slot's share of a take. A slot it finds empty was deleted since the key was seen (a refund emptied it):
  -- n and the TTL are those of a new newest slot again. A slot known to hold units this call is added to in memory.
  finish = function(key, cost, st)
    local c = SW_NOW
    local field = st.field
    local here = nil
    if c.n == CALL.n then
      here = c.here[key]
    end
    if here ~= nil and here > 0 and c.t[key] ~= nil and c.field[key] == field then
      c.here[key] = here + cost
      sw_hold(c, key)
      return
    end
    here = redis.call('HINCRBY', key, field, int_memo(cost))
    if here == cost then
      redis.call('HSET', key, 'n', field)
      redis.call('PEXPIRE', key, int(ttl_ms(sw_slot_left(st.mark, st.slot_ms, st.window_ms, st.now_ms))))
    end
    if c.n == CALL.n and c.t[key] ~= nil and c.field[key] == field then
      c.here[key] = here
    end
  end,

  adjust = function(key, now, limit, window_ms, delta, param, mark)
    local held = SW_HELD.map[key]
    if held ~= nil then
      local applied, overdraft, remaining, reset = sw_held_refund(held, limit, window_ms, delta, param, mark)
      if applied ~= nil then
        return applied, overdraft, remaining, reset
      end
      sw_flush_key(key)
    end
    local now_ms, slot_ms, cur, oldest = sw_geometry(now, window_ms, param)
    if delta > 0 then
      local field = int_memo(cur)
      local all, total, low, newest, stale, _, here = sw_load(key, oldest, field)
      sw_add(key, cur, field, here, delta, all, stale, low, newest, slot_ms, window_ms, now_ms)
      total = total + delta
      return delta, math.max(0, total - limit), math.max(0, limit - total), sw_slot_left(cur, slot_ms, window_ms, now_ms)
    end
    local applied = 0
    local slot = num(mark) or cur
    local field = int_memo(slot)
    local all, total, _, newest, _, _, have = sw_load(key, oldest, field)
    if delta < 0 and slot >= oldest and have > 0 then
      local back = math.min(have, -delta)
      applied = -back
      total = total - back
      if back < have then -- held back: written by sw_flush, with the refunds into this slot that follow
        local reset = sw_reset(newest, slot_ms, window_ms, now_ms)
        SW_HELD.map[key] = {
          field = field, mark = mark, window_ms = window_ms, param = param,
          all = all - back, have = have - back, total = total, reset = reset,
        }
        SW_HELD.n = SW_HELD.n + 1
        SW_HELD.keys[SW_HELD.n] = key
        return applied, math.max(0, total - limit), math.max(0, limit - total), reset
      elseif all == back then -- the last units of the key: nothing left to count
        redis.call('DEL', key)
        newest = nil
      else
        -- The slot goes, and t with it; n too when it was the highest (o stays: no slot is below it).
        redis.call('HDEL', key, field)
        redis.call('HSET', key, 't', int(all - back))
        if slot == newest then
          local raw = redis.call('HGETALL', key)
          local hi = nil
          for i = 1, #raw, 2 do
            local idx = tonumber(raw[i])
            if idx ~= nil and (hi == nil or idx > hi) then
              hi = idx
            end
          end
          redis.call('HSET', key, 'n', int(hi))
          newest = hi
          if newest < oldest then
            newest = nil
          end
        end
      end
    end
    return applied, math.max(0, total - limit), math.max(0, limit - total), sw_reset(newest, slot_ms, window_ms, now_ms)
  end,
}
