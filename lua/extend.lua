-- include: common.lua sliding_window.lua gcra.lua fixed_window.lua concurrency.lua shaping.lua
-- extend.lua: grows the reservation of a request that is still running (a
-- stream past what it reserved) by what each limit still has, up to what is
-- wanted: a stream takes what remains of a budget rather than all or nothing.
-- A limit grants at most an eighth of what it has left (but at least need),
-- so that near the end of a budget many concurrent streams take small steps
-- and none is cut while others sit on grants they will not use.
--
-- KEYS: one counter key per limit (all in one hash slot on Cluster).
-- ARGV: 6 values per limit, in KEYS order:
--   kind      "sliding_window" | "gcra" | "fixed_window" (not concurrency)
--   limit     as in admit.lua
--   window_ms as in admit.lua
--   want      units wanted on this limit (> 0)
--   param     as in admit.lua (slots, calendar, "")
--   need      the least grant that helps (1 <= need <= want): a limit with
--             less than this left grants nothing and is not written
-- Units: as in admit.lua.
-- Returns: { now_us, then 3 integers per limit: granted (0, or need..want:
--   want when at least 8 * want is left),
--   remaining after the grant, mark (for settle.lua) }
-- Each limit is granted on its own: the caller ends the stream when a limit
-- it must respect granted nothing, and settles what the others granted.

local now = now_us()
local out = { now }
for i = 1, #KEYS do
  local alg, limit, window_ms, want, param, need = limit_argv(ARGV, i)
  local key = KEYS[i]
  need = tonumber(need)
  local st = alg.check(key, now, limit, window_ms, want, param, scratch(i))
  -- What the limit has left before this cost (st.remaining is after it when it fits).
  local left = st.remaining
  if st.allowed then
    left = left + want
  end
  local take = math.min(want, math.max(need, math.floor(left / 8)), left)
  local granted = 0
  if take == want and st.allowed then
    granted = want
  elseif take >= need and take > 0 then
    st = alg.check(key, now, limit, window_ms, take, param, st)
    if st.allowed then
      granted = take
    end
  end
  if granted > 0 then
    alg.commit(key, now, limit, window_ms, granted, param, st)
  end
  local j = #out
  out[j + 1] = granted
  out[j + 2] = st.remaining
  out[j + 3] = st.mark
end
return out
