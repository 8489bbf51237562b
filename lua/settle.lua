-- include: common.lua sliding_window.lua gcra.lua fixed_window.lua concurrency.lua shaping.lua
-- settle.lua: reconciles a reservation with the actual cost: charges the
-- difference when the request cost more than reserved (even past the limit:
-- the work was done, the excess is reported as overdraft) or refunds it
-- when it cost less. Also the compensating refund of an admission that a
-- later hash-slot group refused (delta = -cost; a concurrency lease is
-- released).
--
-- KEYS: one counter key per limit (all in one hash slot on Cluster).
-- ARGV: 3 values per limit, in KEYS order: "kind limit window_ms param" (as
--   below, separated by single spaces; param "" for concurrency), delta, and
--   the mark, or a concurrency limit's lease id. Or 6 values per limit:
--   kind      as in admit.lua
--   limit     as in admit.lua
--   window_ms as in admit.lua
--   delta     actual cost - reserved cost (units; negative = refund)
--   param     as in admit.lua (the lease id for concurrency)
--   mark      the mark admit.lua returned for this limit (where the
--             reservation was charged: slot index, window start; 0 for gcra)
-- Units: as in admit.lua.
-- Returns: { now_us, then per limit 4 integers: applied (units charged > 0
--   or refunded < 0), overdraft (units consumed beyond the limit), remaining,
--   reset_ms; for a concurrency limit only applied (a release, -1 or 0) }.
-- Refunds never take back more than the charged place still holds, and are
-- no-ops once that window or slot has expired. A sliding window's refunds
-- into one slot are written together when the call ends (sliding_window.lua's
-- held refunds): the same final state as writing each on its own.

local now = now_us()
sw_unhold()
local out = reply_table()
out[1] = now
local size = 1

-- Every charge, its fields appended to out. Run under pcall: the refunds held back are written even when a later
-- charge fails, as they would have been had each been written at once.
local function settle_all(keys, argv)
  local j = 1
  local packed = #argv == 3 * #keys
  local parsed, held = PACKED.map, SW_HELD
  local concurrency, sliding_window = ALGORITHMS.concurrency, ALGORITHMS.sliding_window
  for i = 1, #keys do
    local key = keys[i]
    local alg, limit, window_ms, delta, param, mark
    if packed then -- common.lua's settle_parsed(), remembered
      local b = i * 3 - 3
      local s = argv[b + 1]
      local p = parsed[s] or settle_parsed(s)
      alg, limit, window_ms, delta = p[1], p[2], p[3], num(argv[b + 2])
      if alg == concurrency then
        param, mark = argv[b + 3], '0'
      else
        param, mark = p[4], argv[b + 3]
      end
    else
      alg, limit, window_ms, delta, param, mark = limit_argv(argv, i)
    end
    if alg ~= sliding_window and held.n > 0 then -- a key a held refund has yet to write
      sw_flush_key(key)
    end
    local applied, overdraft, remaining, reset = alg.adjust(key, now, limit, window_ms, delta, param, mark)
    out[j + 1] = applied
    if alg == concurrency then
      j = j + 1
    else
      out[j + 2], out[j + 3], out[j + 4] = overdraft, remaining, reset
      j = j + 4
    end
  end
  size = j
end

local ok, err = pcall(settle_all, KEYS, ARGV)
sw_flush()
if not ok then
  error(err, 0)
end
return reply_done(out, size)
