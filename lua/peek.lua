-- include: common.lua sliding_window.lua gcra.lua fixed_window.lua concurrency.lua shaping.lua
-- peek.lua: reads the current state of limits without consuming anything
-- (for the admin API and for tests).
--
-- KEYS: one counter key per limit (all in one hash slot on Cluster).
-- ARGV: 6 values per limit, laid out as in admit.lua; cost and shadow are
--   ignored (a cost of 0 is checked).
-- Units: time in ms, except now (us).
-- Returns: { 1, now_us, then 6 integers per limit: allowed (1/0: a cost of
--   0 fits), remaining, reset_ms, retry_after_ms, mark, used (units counted
--   now, more than limit after an overdraft) }.
-- Writes nothing.

local now = now_us()
local out = { 1, now }
for i = 1, #KEYS do
  local alg, limit, window_ms, _, param = limit_argv(ARGV, i)
  local st = alg.check(KEYS[i], now, limit, window_ms, 0, param, scratch(i))
  local j = 2 + (i - 1) * 6
  push_verdict(out, j, st)
  out[j + 6] = st.used
end
return out
