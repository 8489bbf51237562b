-- include: common.lua sliding_window.lua gcra.lua fixed_window.lua concurrency.lua shaping.lua admission.lua
-- admit.lua: checks a list of limits and consumes them all-or-nothing: if
-- any limit that is not in shadow mode refuses, nothing at all is consumed.
--
-- KEYS: one counter key per limit, in order (all in one hash slot on Cluster).
-- ARGV: the limits joined, then the lease id of the call's concurrency limits
--   ("" when none): every limit packed as "kind limit window_ms cost param
--   shadow" separated by single spaces, param "" for concurrency (the lease
--   id comes last instead), in KEYS order, joined by ";" (one string, the
--   same request after request for a plan's limits, parsed once). Or one
--   packed value per limit, then the lease id. Or, unpacked, 6 values per
--   limit:
--   kind      "sliding_window" | "gcra" | "fixed_window" | "concurrency"
--   limit     units per window (requests, tokens) or leases held at once
--   window_ms window length in ms (lease TTL for concurrency)
--   cost      units this request consumes (1 for a concurrency lease)
--   param     slots (sliding_window), calendar (fixed_window), lease id
--             (concurrency), "" (gcra)
--   shadow    "1": evaluated and reported but never refuses; still consumed
--             when the request is admitted, since the traffic did happen
--   Or a batch of admissions (the Redis engine's pipeline of admit calls
--   in one, admission.lua): "*", then per admission its limits joined, its
--   lease id and the offset of its keys in KEYS (KEYS[offset + 1 ..], one
--   per limit; admissions of the same keys name the same ones).
-- Units: time in ms, except now (us).
-- Returns: { admitted (1/0), now_us, then 5 integers per limit:
--   allowed (1/0), remaining, reset_ms, retry_after_ms (0 when allowed;
--   -1: the cost exceeds the limit), mark (for settle.lua) }; for a batch,
--   one such reply per admission, or the error of one that failed.
-- A refused call writes nothing. Time comes from TIME, once.

local now = now_us()
if ARGV[1] == '*' then
  return admit_batch(KEYS, ARGV, now)
end
local n = #KEYS
local out = reply_table()
if #ARGV == 2 then -- joined (one limit packed is the same call)
  local list = JOINED.map[ARGV[1]] or limits_joined(ARGV[1])
  if list.n ~= n then
    error('ERR tollgate: ' .. list.n .. ' limits for ' .. n .. ' keys')
  end
  return reply_done(out, admit_limits(KEYS, 0, n, list, nil, 0, ARGV[2], now, out))
end
local lease = ARGV[n + 1] -- packed: one value per limit, then the lease id
if #ARGV ~= n + 1 then
  lease = nil
end
return reply_done(out, admit_limits(KEYS, 0, n, nil, ARGV, 0, lease, now, out))
