-- include: common.lua sliding_window.lua gcra.lua fixed_window.lua concurrency.lua shaping.lua
-- admit.lua: checks a list of limits and consumes them all-or-nothing: if
-- any limit that is not in shadow mode refuses, nothing at all is consumed.
--
-- KEYS: one counter key per limit, in order (all in one hash slot on Cluster).
-- ARGV: 6 values per limit, in KEYS order:
--   kind      "sliding_window" | "gcra" | "fixed_window" | "concurrency"
--   limit     units per window (requests, tokens) or leases held at once
--   window_ms window length in ms (lease TTL for concurrency)
--   cost      units this request consumes (1 for a concurrency lease)
--   param     slots (sliding_window), calendar (fixed_window), lease id
--             (concurrency), "" (gcra)
--   shadow    "1": evaluated and reported but never refuses; still consumed
--             when the request is admitted, since the traffic did happen
-- Units: time in ms, except now (us).
-- Returns: { admitted (1/0), now_us, then 6 integers per limit:
--   allowed (1/0), limit, remaining, reset_ms, retry_after_ms (0 when
--   allowed; -1: the cost exceeds the limit), mark (for settle.lua) }
-- A refused call writes nothing. Time comes from TIME, once.

local now = now_us()
local n = #KEYS
local states = {}
local admitted = 1
for i = 1, n do
  local alg, limit, window_ms, cost, param, shadow = limit_argv(ARGV, i)
  local st = alg.check(KEYS[i], now, limit, window_ms, cost, param)
  states[i] = st
  if not st.allowed and shadow ~= '1' then
    admitted = 0
  end
end

if admitted == 1 then
  for i = 1, n do
    local alg, limit, window_ms, cost, param = limit_argv(ARGV, i)
    if cost > 0 then
      alg.commit(KEYS[i], now, limit, window_ms, cost, param, states[i])
    end
  end
end

local out = { admitted, now }
for i = 1, n do
  push_verdict(out, tonumber(ARGV[(i - 1) * 6 + 2]), states[i])
end
return out
