-- common.lua: helpers shared by every limiter script.
--
-- Not a script on its own: an entry script names it first on its
-- "-- include:" line and gateway/store/scripts.py prepends it.
-- KEYS: none.  ARGV: none.
-- Units: "now" is read once per call from redis.call('TIME') as integer
--   microseconds since the Unix epoch; every duration handed to Redis or
--   returned to the caller is in integer milliseconds.
-- Returns: nothing; defines the locals ALGORITHMS (kind -> {check, commit,
--   adjust}), now_us(), ttl_ms(), ms_ceil() and count_verdict().
--
-- Contract of one algorithm (sliding_window.lua, gcra.lua, fixed_window.lua,
-- concurrency.lua), one counter key per limit:
--   check(key, now, limit, window_ms, cost, param) -> st, read-only, where
--     st.allowed (boolean), st.remaining, st.reset_ms, st.retry_ms
--     (-1: the cost exceeds the limit itself, retrying cannot help),
--     st.mark (where the cost is charged, handed back to settle) and
--     st.used (units counted now, before this cost; past the limit after an
--     overdraft) are returned to the caller; other fields are for commit.
--   commit(key, now, limit, window_ms, cost, param, st): consumes the cost;
--     every key it writes gets a TTL.
--   adjust(key, now, limit, window_ms, delta, param, mark) -> applied,
--     overdraft, remaining, reset_ms: charges delta > 0 even past the limit
--     (the work was done; the excess is reported as overdraft) or refunds
--     -delta from the place recorded in mark.

local ALGORITHMS = {}

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The TTL to give a key whose logic says it is dead in ms milliseconds. Redis
-- counts a relative TTL from the moment the script started, which can be up
-- to a millisecond before TIME answered; one extra millisecond makes sure a
-- key never disappears while it still counts (a key that outlives its logic
-- reads as empty, exactly like a missing one).
local function ttl_ms(ms)
  return ms + 1
end

-- Milliseconds in a span of microseconds, rounded up so nobody retries early.
local function ms_ceil(us)
  if us <= 0 then
    return 0
  end
  return math.ceil(us / 1000)
end

-- The verdict of a counting limit (fixed window, concurrency): `used` units of
-- `limit` are taken and `cost` more are asked. Sets st.allowed and
-- st.remaining; st.retry_ms becomes -1 when the cost exceeds the limit
-- itself (retrying cannot help) and wait_ms when it does not fit now.
local function count_verdict(st, used, cost, limit, wait_ms)
  if cost > limit then
    st.allowed = false
    st.remaining = math.max(0, limit - used)
    st.retry_ms = -1
  elseif used + cost <= limit then
    st.allowed = true
    st.remaining = limit - used - cost
  else
    st.allowed = false
    st.remaining = math.max(0, limit - used)
    st.retry_ms = wait_ms
  end
end
