-- gcra.lua: GCRA token bucket (generic cell rate algorithm) with a cost per
-- call, so one script serves request rates and LLM token budgets alike.
--
-- Library: included by admit.lua, peek.lua and settle.lua; one limit = one key.
-- KEYS (per limit): a string holding the theoretical arrival time (TAT) in
--   integer microseconds since the Unix epoch.
-- ARGV (per limit): kind = "gcra", limit (units per window; also the burst),
--   window_ms, cost (units), param (unused, ""), then shadow (admit) or mark
--   (settle).
-- Units: one unit "costs" floor(window_ms * 1000 * cost / limit) us of TAT;
--   the bucket holds at most window_ms of TAT ahead of now (a full burst).
-- Returns (check): allowed, remaining (whole units left after this cost),
--   reset_ms (until the bucket is full again), retry_ms (until this cost
--   fits; -1 if cost > limit), mark = 0.
-- TTL: the key expires when the TAT is reached, i.e. when it equals "empty".

-- Whole units still available when the TAT is tat.
local function gcra_left(limit, tau, tat, now)
  if limit <= 0 then
    return 0
  end
  return math.max(0, math.floor((tau - (tat - now)) * limit / tau))
end

-- Units the TAT holds ahead of now, rounded up: past the limit after an overdraft.
local function gcra_used(limit, tau, tat, now)
  if limit <= 0 or tat <= now then
    return 0
  end
  return math.ceil((tat - now) * limit / tau)
end

local function gcra_increment(limit, tau, cost)
  if cost <= 0 or limit <= 0 then
    return 0
  end
  return math.floor(cost * tau / limit)
end

ALGORITHMS.gcra = {
  check = function(key, now, limit, window_ms, cost, param, st)
    local tau = window_ms * 1000
    local tat = load_time(key, now)
    local inc = gcra_increment(limit, tau, cost)
    local new_tat = tat + inc
    st.retry_ms, st.mark, st.used, st.inc, st.new_tat = 0, 0, gcra_used(limit, tau, tat, now), inc, new_tat
    if cost > limit then
      st.allowed = false
      st.remaining = gcra_left(limit, tau, tat, now)
      st.reset_ms = ms_ceil(tat - now)
      st.retry_ms = -1
    elseif new_tat - now <= tau then
      st.allowed = true
      st.remaining = gcra_left(limit, tau, new_tat, now)
      st.reset_ms = ms_ceil(new_tat - now)
    else
      st.allowed = false
      st.remaining = gcra_left(limit, tau, tat, now)
      st.reset_ms = ms_ceil(tat - now)
      st.retry_ms = ms_ceil(new_tat - tau - now)
    end
    return st
  end,

  commit = function(key, now, limit, window_ms, cost, param, st)
    if st.inc > 0 then
      store_time(key, st.new_tat, now)
    end
  end,

  adjust = function(key, now, limit, window_ms, delta, param, mark)
    local tau = window_ms * 1000
    local tat = load_time(key, now)
    local applied = 0
    if delta > 0 and limit > 0 then
      tat = tat + gcra_increment(limit, tau, delta)
      store_time(key, tat, now)
      applied = delta
    elseif delta < 0 and tat > now and limit > 0 then
      local back = gcra_increment(limit, tau, -delta)
      if tat - back >= now then
        applied = delta
        tat = tat - back
      else
        applied = -math.floor((tat - now) * limit / tau)
        tat = now
      end
      store_time(key, tat, now)
    end
    local overdraft = 0
    if limit > 0 and tat - now > tau then
      overdraft = math.ceil((tat - now - tau) * limit / tau)
    end
    return applied, overdraft, gcra_left(limit, tau, tat, now), ms_ceil(tat - now)
  end,
}
