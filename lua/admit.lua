-- include: common.lua sliding_window.lua gcra.lua fixed_window.lua concurrency.lua shaping.lua
-- admit.lua: checks a list of limits and consumes them all-or-nothing: if
-- any limit that is not in shadow mode refuses, nothing at all is consumed.
--
-- KEYS: one counter key per limit, in order (all in one hash slot on Cluster).
-- ARGV: one packed value per limit, in KEYS order, then the lease id of the
--   call's concurrency limits ("" when none): "kind limit window_ms cost
--   param shadow" separated by single spaces, param "" for concurrency (the
--   lease id comes last instead; a limit's own string is the same request
--   after request, and is parsed once). Or, unpacked, 6 values per limit:
--   kind      "sliding_window" | "gcra" | "fixed_window" | "concurrency"
--   limit     units per window (requests, tokens) or leases held at once
--   window_ms window length in ms (lease TTL for concurrency)
--   cost      units this request consumes (1 for a concurrency lease)
--   param     slots (sliding_window), calendar (fixed_window), lease id
--             (concurrency), "" (gcra)
--   shadow    "1": evaluated and reported but never refuses; still consumed
--             when the request is admitted, since the traffic did happen
-- Units: time in ms, except now (us).
-- Returns: { admitted (1/0), now_us, then 5 integers per limit:
--   allowed (1/0), remaining, reset_ms, retry_after_ms (0 when allowed;
--   -1: the cost exceeds the limit), mark (for settle.lua) }
-- A refused call writes nothing. Time comes from TIME, once.

local now = now_us()
local n = #KEYS
local lease = ARGV[n + 1] -- packed: one value per limit, then the lease id
if #ARGV ~= n + 1 then
  lease = nil
end
-- Each limit's ARGV is read once: 6 values per limit in one flat table (alg, limit, window_ms, cost, param, state),
-- reused from call to call (common.lua's SEEN: only its first 6 * n entries are this call's).
local seen = SEEN
local admitted = 1
for i = 1, n do
  local alg, limit, window_ms, cost, param, shadow
  if lease then
    alg, limit, window_ms, cost, param, shadow = limit_packed(ARGV, i, lease)
  else
    alg, limit, window_ms, cost, param, shadow = limit_argv(ARGV, i)
  end
  local st = alg.check(KEYS[i], now, limit, window_ms, cost, param, scratch(i))
  local b = (i - 1) * 6
  seen[b + 1], seen[b + 2], seen[b + 3], seen[b + 4], seen[b + 5], seen[b + 6] = alg, limit, window_ms, cost, param, st
  if not st.allowed and shadow ~= '1' then
    admitted = 0
  end
end

if admitted == 1 then
  for i = 1, n do
    local b = (i - 1) * 6
    local cost = seen[b + 4]
    if cost > 0 then
      seen[b + 1].commit(KEYS[i], now, seen[b + 2], seen[b + 3], cost, seen[b + 5], seen[b + 6])
    end
  end
end

local out = reply_table()
out[1], out[2] = admitted, now
for i = 1, n do
  push_verdict(out, 2 + (i - 1) * 5, seen[i * 6])
end
return reply_done(out, 2 + n * 5)
