-- common.lua: helpers shared by every limiter script.
--
-- Not a script on its own: an entry script names it first on its
-- "-- include:" line and tollgate/limiter/store/scripts.py prepends it.
-- KEYS: none.  ARGV: none.
-- Units: "now" is read once per call from redis.call('TIME') as integer
--   microseconds since the Unix epoch; every duration handed to Redis or
--   returned to the caller is in integer milliseconds.
-- Returns: nothing; defines the locals ALGORITHMS (kind -> {check, commit,
--   adjust}), SCRATCH, PACKED, CALL, now_us(), int(), int_memo(), num(), div(),
--   scratch(), ttl_ms(), keep_ttl(), ms_ceil(), load_time(), store_time(),
--   count_verdict(), limit_argv(), limit_parsed(), JOINED, limits_joined(),
--   settle_parsed(), reply_table(), reply_done() and push_verdict().
--
-- Contract of one algorithm (sliding_window.lua, gcra.lua, fixed_window.lua,
-- concurrency.lua), one counter key per limit:
--   check(key, now, limit, window_ms, cost, param, st) -> st, read-only: fills
--     the table st (scratch(i) of the limit's position: whatever it held from
--     an earlier call is overwritten, every field check sets) where
--     st.allowed (boolean), st.remaining, st.reset_ms, st.retry_ms
--     (-1: the cost exceeds the limit itself, retrying cannot help),
--     st.mark (where the cost is charged, handed back to settle) and
--     st.used (units counted now, before this cost; past the limit after an
--     overdraft) are returned to the caller; other fields are for commit.
--   commit(key, now, limit, window_ms, cost, param, st): consumes a cost > 0
--     (a cost of 0 is never committed); every key it writes gets a TTL.
--   adjust(key, now, limit, window_ms, delta, param, mark) -> applied,
--     overdraft, remaining, reset_ms: charges delta > 0 even past the limit
--     (the work was done; the excess is reported as overdraft) or refunds
--     -delta from the place recorded in mark.

-- The libraries' top level only defines locals and must not read a global
-- (string, math, ...): Redis Functions run it when the library is loaded,
-- where only `redis` exists; the functions it defines may use any.
local ALGORITHMS = {}

-- Conversions remembered between calls (Redis Functions and the embedded
-- engine keep a library's locals from one call to the next; a script run by
-- EVALSHA starts with empty ones). A string-to-number or number-to-string
-- conversion costs about as much as a whole redis.call, and the same ones
-- come back call after call: a limit's figures in ARGV, a slot index, a
-- window's start. Each map is dropped whole when it reaches MEMO_MAX entries.
local MEMO_MAX = 4096
local MEMO = { num = {}, nums = 0, str = {}, strs = 0 }

-- An integer as the string Redis would get for it. A number handed to
-- redis.call is formatted by Redis as a double (%.17g), several times the
-- cost of an integer format: the hot writes hand over strings instead.
-- Redis 7 takes PEXPIRE's GT (only ever lengthen a TTL) in one command; before it, PTTL then PEXPIRE.
local PEXPIRE_GT = (redis.REDIS_VERSION_NUM or 0) >= 0x070000

local function int(n)
  return string.format('%d', n)
end

-- int(n) for a value that comes back (a slot index, a window's start, a TTL).
local function int_memo(n)
  local s = MEMO.str[n]
  if s == nil then
    s = string.format('%d', n)
    if MEMO.strs >= MEMO_MAX then
      MEMO.str, MEMO.strs = {}, 0
    end
    MEMO.str[n] = s
    MEMO.strs = MEMO.strs + 1
  end
  return s
end

-- tonumber(s) for a string that comes back (an argument, a slot index read
-- from a hash); nil when s is not a number.
local function num(s)
  local v = MEMO.num[s]
  if v == nil then
    v = tonumber(s)
    if v == nil then
      return nil
    end
    if MEMO.nums >= MEMO_MAX then
      MEMO.num, MEMO.nums = {}, 0
    end
    MEMO.num[s] = v
    MEMO.nums = MEMO.nums + 1
  end
  return v
end

-- The state table of the limit at position i of a call: kept from one call to
-- the next and overwritten (a table built per limit per call, and the garbage
-- it leaves, cost more than the limit's arithmetic). A script never keeps one
-- past its reply.
local SCRATCH = {}

local function scratch(i)
  local st = SCRATCH[i]
  if st == nil then
    st = {}
    SCRATCH[i] = st
  end
  return st
end

-- floor(a / b) for integers a and b > 0, without a call to math.floor (a
-- function call costs more than the arithmetic): exact below 2^53.
local function div(a, b)
  return (a - a % b) / b
end

-- How many script calls have asked now_us() (every entry script does, once): a call's number, for what a library
-- remembers about a key for the rest of the same call (concurrency.lua's CC_TTL and CC_NOW, sliding_window.lua's
-- SW_NOW, fixed_window.lua's FW_NOW). batch: the number of the call that is a batch of admissions (admission.lua),
-- the only calls that remember what their own writes answered (one admission alone seldom meets a key twice, and a
-- memo would cost it tables for nothing); memo: whether a batch does (off, every admission reads and writes its keys
-- with commands of its own: tests compare the two).
local CALL = { n = 0, memo = true, batch = false }

local function now_us()
  CALL.n = CALL.n + 1
  local t = redis.call('TIME')
  return num(t[1]) * 1000000 + tonumber(t[2]) -- the seconds come back for a whole second
end

-- The TTL to give a key whose logic says it is dead in ms milliseconds. Redis
-- counts a relative TTL from the moment the script started, which can be up
-- to a millisecond before TIME answered; one extra millisecond makes sure a
-- key never disappears while it still counts (a key that outlives its logic
-- reads as empty, exactly like a missing one).
local function ttl_ms(ms)
  return ms + 1
end

-- Makes a key that held a TTL before this script live at least ms milliseconds from now (never shortens it).
local function keep_ttl(key, ms)
  local ttl = ttl_ms(ms)
  if PEXPIRE_GT then
    redis.call('PEXPIRE', key, int_memo(ttl), 'GT')
  elseif redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, int_memo(ttl))
  end
end

-- Milliseconds in a span of microseconds, rounded up so nobody retries early.
local function ms_ceil(us)
  if us <= 0 then
    return 0
  end
  return math.ceil(us / 1000)
end

-- A key holding a time in integer microseconds (a GCRA's theoretical arrival
-- time, a shaping queue's next release): its value, never before now (absent
-- or past: now).
local function load_time(key, now)
  local t = tonumber(redis.call('GET', key)) or now
  if t < now then
    t = now
  end
  return t
end

-- Stores a time that is still ahead of now, expiring when it passes; a time
-- already past deletes the key (it would read as now anyway).
local function store_time(key, t, now)
  if t > now then
    redis.call('SET', key, t, 'PX', ttl_ms(ms_ceil(t - now)))
  else
    redis.call('DEL', key)
  end
end

-- The verdict of a counting limit (sliding window, fixed window, concurrency):
-- `used` units of `limit` are taken and `cost` more are asked. Sets
-- st.allowed and st.remaining, and st.retry_ms = -1 when the cost exceeds the
-- limit itself (retrying cannot help). Returns true when the cost does not
-- fit now but will later: the caller then sets st.retry_ms, the wait.
local function count_verdict(st, used, cost, limit)
  if cost > limit then
    st.allowed = false
    st.remaining = math.max(0, limit - used)
    st.retry_ms = -1
    return false
  elseif used + cost <= limit then
    st.allowed = true
    st.remaining = limit - used - cost
    return false
  end
  st.allowed = false
  st.remaining = math.max(0, limit - used)
  return true
end

-- Limit i's 6 values in an entry script's argument list (laid out as in
-- admit.lua): its algorithm; limit, window_ms and the 4th value (cost, delta
-- or want) as numbers; param; the 6th value as sent (shadow, mark or need).
local function limit_argv(argv, i)
  local b = (i - 1) * 6
  return ALGORITHMS[argv[b + 1]], num(argv[b + 2]), num(argv[b + 3]), num(argv[b + 4]), argv[b + 5], argv[b + 6]
end

-- Limits as admit.lua receives them packed, one argument each ("kind limit window_ms cost param shadow", param
-- "" for a concurrency limit): each string parsed once into {algorithm, limit, window_ms, cost, param, shadow}
-- and remembered (a plan's limits come back request after request); dropped whole at MEMO_MAX entries. A
-- concurrency limit's param is false there: its lease id is the call's (admission.lua puts it in).
local PACKED = { map = {}, n = 0 }

-- The algorithm a packed limit names; an error naming the string when it is malformed.
local function packed_algorithm(kind, s)
  local alg = kind and ALGORITHMS[kind]
  if alg == nil then
    error('ERR tollgate: malformed packed limit ' .. s)
  end
  return alg
end

-- Remembers a packed limit's parsed values p under its string s, and returns p.
local function packed_kept(s, p)
  if PACKED.n >= MEMO_MAX then
    PACKED.map, PACKED.n = {}, 0
  end
  PACKED.map[s] = p
  PACKED.n = PACKED.n + 1
  return p
end

-- The parsed values of a packed limit s of admit.lua seen for the first time (PACKED.map[s] answers the next
-- times): {algorithm, limit, window_ms, cost, param (false for concurrency), shadow}.
local function limit_parsed(s)
  local kind, limit, window_ms, cost, param, shadow = string.match(s, '^(%S+) (%d+) (%d+) (%d+) (%S*) ([01])$')
  local alg = packed_algorithm(kind, s)
  if alg == ALGORITHMS.concurrency then
    param = false
  end
  return packed_kept(s, { alg, tonumber(limit), tonumber(window_ms), tonumber(cost), param, shadow })
end

-- An admission's packed limits in one argument, joined by ";" (admit.lua's joined ARGV): the string parsed once
-- into the list of its limits' parsed values (as limit_parsed() gives them; list.n: how many) and remembered, as
-- PACKED remembers single limits (one string for a plan's limits: one argument to read and one string to look up
-- where there were one per limit); dropped whole at MEMO_MAX entries.
local JOINED = { map = {}, n = 0 }

local function limits_joined(s)
  local list, n, map = {}, 0, PACKED.map
  for part in string.gmatch(s, '[^;]+') do
    n = n + 1
    list[n] = map[part] or limit_parsed(part)
  end
  list.n = n
  if JOINED.n >= MEMO_MAX then
    JOINED.map, JOINED.n = {}, 0
  end
  JOINED.map[s] = list
  JOINED.n = JOINED.n + 1
  return list
end

-- The parsed values of a limit of settle.lua's packed argument list ("kind limit window_ms param", the first of its
-- 3 values: then delta, then the mark or a concurrency limit's lease id) seen for the first time (PACKED.map[s]
-- answers the next times, as for admit.lua's): {algorithm, limit, window_ms, param}.
local function settle_parsed(s)
  local kind, limit, window_ms, param = string.match(s, '^(%S+) (%d+) (%d+) (%S*)$')
  return packed_kept(s, { packed_algorithm(kind, s), tonumber(limit), tonumber(window_ms), param })
end

-- The reply table of admit.lua and settle.lua, kept from one call to the next (a table built per call grows its
-- array four or five times while it is filled, and is garbage right after): reply_table() hands it over with the
-- entries of earlier calls still in it, reply_done(t, n) clears those past this call's n and returns t. Every call
-- fills it from 1 without a gap, a failed one too, so the entries past n end at the first nil. Redis converts a
-- script's reply as soon as the script returns, the embedded engine too.
local REPLY = {}

local function reply_table()
  return REPLY
end

local function reply_done(t, n)
  local i = n + 1
  while t[i] ~= nil do
    t[i] = nil
    i = i + 1
  end
  return t
end

-- Appends a checked limit to a reply at out[j + 1 ..]: allowed (1/0),
-- remaining, reset_ms, retry_ms (-1: the cost exceeds the limit), mark. The
-- limit itself is not echoed: the caller sent it (each integer of a reply
-- costs Redis about as much as a dozen Lua operations).
local function push_verdict(out, j, st)
  local allowed = 0
  if st.allowed then
    allowed = 1
  end
  out[j + 1] = allowed
  out[j + 2] = st.remaining
  out[j + 3] = st.reset_ms
  out[j + 4] = st.retry_ms
  out[j + 5] = st.mark
end
