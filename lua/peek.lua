-- include: common.lua sliding_window.lua gcra.lua fixed_window.lua concurrency.lua
-- peek.lua: reads the current state of limits without consuming anything
-- (for the admin API and for tests).
--
-- KEYS: one counter key per limit (all in one hash slot on Cluster).
-- ARGV: 6 values per limit, laid out as in admit.lua; cost and shadow are
--   ignored (a cost of 0 is checked).
-- Units: time in ms, except now (us).
-- Returns: { 1, now_us, then 7 integers per limit: allowed (1/0: a cost of
--   0 fits), limit, remaining, reset_ms, retry_after_ms, mark, used (units
--   counted now, more than limit after an overdraft) }.
-- Writes nothing.

local now = now_us()
local out = { 1, now }
for i = 1, #KEYS do
  local b = (i - 1) * 6
  local limit = tonumber(ARGV[b + 2])
  local st = ALGORITHMS[ARGV[b + 1]].check(KEYS[i], now, limit, tonumber(ARGV[b + 3]), 0, ARGV[b + 5])
  local allowed = 0
  if st.allowed then
    allowed = 1
  end
  local j = #out
  out[j + 1] = allowed
  out[j + 2] = limit
  out[j + 3] = st.remaining
  out[j + 4] = st.reset_ms
  out[j + 5] = st.retry_ms
  out[j + 6] = st.mark
  out[j + 7] = st.used
end
return out
