-- shaping.lua: a leaky bucket as a queue (request shaping). A request over
-- the rate is not refused: it is given the next free release time of its
-- scope and waits until then, so requests leave at exactly limit per window,
-- in the order the store saw them, whatever the number of gateway processes.
--
-- Library: included by admit.lua, peek.lua, settle.lua and extend.lua; one
--   limit = one key.
-- KEYS (per limit): a string holding the release time of the next request of
--   the scope, in integer microseconds since the Unix epoch (absent: now).
-- ARGV (per limit): kind = "shaping", limit (requests per window), window_ms,
--   cost (requests, 1), param = max_delay_ms (the longest a request may wait
--   for its turn), then shadow (admit) or mark (settle).
-- Units: one request holds floor(window_ms * 1000 / limit) us of the queue.
-- Returns (check): allowed (its release time is at most max_delay_ms away),
--   remaining (requests that still fit in the queue after this one),
--   reset_ms (until the queue is empty), retry_ms: for an admitted request
--   the wait before its release (the caller sleeps it), for a refused one
--   how long until it would fit (-1: cost > limit), mark = 0.
-- TTL: the key expires when the queue is empty (its release time passed).

local function shaping_interval(limit, window_ms, cost)
  if cost <= 0 or limit <= 0 then
    return 0
  end
  return math.floor(window_ms * 1000 * cost / limit)
end

-- Requests that still fit in a queue whose next release is next_at.
local function shaping_room(next_at, now, max_wait, step)
  if step <= 0 then
    return 0
  end
  return math.max(0, math.floor((max_wait - (next_at - now)) / step) + 1)
end

ALGORITHMS.shaping = {
  check = function(key, now, limit, window_ms, cost, param, st)
    local max_wait = (tonumber(param) or 0) * 1000
    local step = shaping_interval(limit, window_ms, 1)
    local next_at = load_time(key, now)
    local wait = next_at - now
    st.mark, st.used, st.new_at = 0, 0, next_at + shaping_interval(limit, window_ms, cost)
    if step > 0 then
      st.used = math.ceil(wait / step)
    end
    if cost > limit then
      st.allowed = false
      st.remaining = shaping_room(next_at, now, max_wait, step)
      st.reset_ms = ms_ceil(wait)
      st.retry_ms = -1
    elseif wait <= max_wait then
      st.allowed = true
      st.remaining = shaping_room(st.new_at, now, max_wait, step)
      st.reset_ms = ms_ceil(st.new_at - now)
      st.retry_ms = ms_ceil(wait)
    else
      st.allowed = false
      st.remaining = 0
      st.reset_ms = ms_ceil(wait)
      st.retry_ms = ms_ceil(wait - max_wait)
    end
    return st
  end,

  commit = function(key, now, limit, window_ms, cost, param, st)
    store_time(key, st.new_at, now)
  end,

  -- A refund (a later slot group refused, a request abandoned) gives its turn
  -- back only as far as now: requests already given later turns keep them.
  adjust = function(key, now, limit, window_ms, delta, param, mark)
    local next_at = load_time(key, now)
    local applied = 0
    if delta > 0 then
      next_at = next_at + shaping_interval(limit, window_ms, delta)
      applied = delta
    elseif delta < 0 and next_at > now then
      local back = shaping_interval(limit, window_ms, -delta)
      if next_at - back >= now then
        next_at = next_at - back
        applied = delta
      else
        local step = shaping_interval(limit, window_ms, 1)
        if step > 0 then
          applied = -math.floor((next_at - now) / step)
        end
        next_at = now
      end
    end
    store_time(key, next_at, now)
    local max_wait = (tonumber(param) or 0) * 1000
    local step = shaping_interval(limit, window_ms, 1)
    local overdraft = 0
    if step > 0 and next_at - now > max_wait then
      overdraft = math.ceil((next_at - now - max_wait) / step)
    end
    return applied, overdraft, shaping_room(next_at, now, max_wait, step), ms_ceil(next_at - now)
  end,
}
