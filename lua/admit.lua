-- include: common.lua sliding_window.lua gcra.lua fixed_window.lua concurrency.lua
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
  local b = (i - 1) * 6
  local st = ALGORITHMS[ARGV[b + 1]].check(KEYS[i], now, tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]),
    tonumber(ARGV[b + 4]), ARGV[b + 5])
  states[i] = st
  if not st.allowed and ARGV[b + 6] ~= '1' then
    admitted = 0
  end
end

if admitted == 1 then
  for i = 1, n do
    local b = (i - 1) * 6
    ALGORITHMS[ARGV[b + 1]].commit(KEYS[i], now, tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]),
      tonumber(ARGV[b + 4]), ARGV[b + 5], states[i])
  end
end

local out = { admitted, now }
for i = 1, n do
  local st = states[i]
  local allowed = 0
  if st.allowed then
    allowed = 1
  end
  local j = #out
  out[j + 1] = allowed
  out[j + 2] = tonumber(ARGV[(i - 1) * 6 + 2])
  out[j + 3] = st.remaining
  out[j + 4] = st.reset_ms
  out[j + 5] = st.retry_ms
  out[j + 6] = st.mark
end
return out
