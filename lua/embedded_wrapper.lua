-- embedded_wrapper.lua: how the embedded engine (tollgate/limiter/store/embedded.py) runs one script.
-- Not a limiter script: the engine puts a script's libraries at the "@prelude" marker line and its
-- body at the "@body" one, then evaluates this expression once per script with the Lua keyspace,
-- on LuaJIT the address and length of the engine's reply buffer (an array of int64 owned by Python),
-- and the engine's table of registered calls. It gives two functions: one call handed over whole, and
-- one registered call.
-- KEYS and ARGV: those of the wrapped script, passed as now_us, the number of ARGV, ARGV..., KEYS...;
--   or, for a registered call, as now_us, handle, the last ARGV: calls[handle] holds {KEYS, ARGV but
--   the last} (the engine registers a call that comes back with the same ones), copied into the
--   call's own tables, so that only one string crosses from Python.
-- Units: now_us in microseconds since the epoch (the engine's clock, read once per call).
-- Return: n, the length of an array of integers written to the reply buffer (the limiter scripts'
--   replies: no value crosses to Python one by one); without a buffer, or for a reply the buffer
--   cannot hold, (1, array items...) for an array of integers, (2, array items...) for any other
--   array, (0, value) for any other reply; an error reply is raised.
--
-- The libraries (prelude) are instantiated once, when the engine starts;
-- KEYS and ARGV are parameters of the body, as they are globals of a Redis
-- script. KEYS and ARGV numbers become strings the way Redis formats them
-- (integers in full, others as %.17g; keyspace.str remembers the last
-- thousand or so). redis.call is the keyspace's, in Lua.
-- An error reply raised by redis.call is a table {err = ...}, as in Redis 7;
-- it leaves as a Lua error with that message. The script's reply leaves as
-- a count (buffer), (1 or 2, unpack(array)) or (0, value), so that lupa
-- hands back one number or one tuple; 1 tells the engine that no item needs
-- converting.
function(keyspace, reply_at, reply_slots, calls)
  local select, unpack, type, error, pcall, floor = select, unpack, type, error, pcall, math.floor
  -- The reply buffer, as int64_t*: Python reads the first n slots after the call (one copy, no per-item
  -- conversion). Lua 5.1 has no FFI: replies then leave on the stack.
  local slots, has_ffi, ffi = nil, pcall(require, 'ffi')
  local has_table_new, table_new = pcall(require, 'table.new') -- LuaJIT: a table allocated at its size
  if not has_table_new then
    table_new = function()
      return {}
    end
  end
  if reply_at and has_ffi then
    slots = ffi.cast('int64_t *', reply_at)
  else
    reply_slots = 0
  end
  local begin, str = keyspace.begin, keyspace.str
  local EXACT = 2 ^ 53 -- beyond it a double is not handed over as an exact integer
  local redis = { call = keyspace.call, REDIS_VERSION_NUM = 0x070000 } -- its commands take Redis 7's options
  local function reply(ok, value)
    local t = type(value)
    if not ok then
      if t == 'table' and value.err ~= nil then
        error(value.err, 0)
      end
      error(value, 0)
    end
    if t ~= 'table' then
      return 0, value
    elseif value.err ~= nil then
      error(value.err, 0)
    elseif value.ok ~= nil then
      return 0, value.ok
    end
    local n = #value
    if n <= reply_slots then -- every item an exact integer: written to the buffer as it is checked
      for i = 1, n do
        local v = value[i]
        if type(v) ~= 'number' or v ~= floor(v) or v >= EXACT or v <= -EXACT then
          return 2, unpack(value, 1, n)
        end
        slots[i - 1] = v
      end
      return n
    end
    if n == 0 or n > 4096 then -- nothing to unpack (lupa would hand back the bare flag), or too much
      return 0, value
    end
    for i = 1, n do
      local v = value[i]
      if type(v) ~= 'number' or v ~= floor(v) or v >= EXACT or v <= -EXACT then
        return 2, unpack(value, 1, n)
      end
    end
    return 1, unpack(value, 1, n)
  end
-- @prelude
  local function script(KEYS, ARGV)
-- @body
  end
  -- A new list of list's values as Redis would receive them (strings), with room for extra more; and its length.
  local function received(list, extra)
    local n = #list
    local out = table_new(n + extra, 0)
    for i = 1, n do
      local v = list[i]
      if type(v) ~= 'string' then
        v = str(v)
      end
      out[i] = v
    end
    return out, n
  end
  -- A registered call: KEYS and ARGV but the last from calls[handle], each value as Redis would receive it.
  local function registered(now_us, handle, last)
    begin(now_us)
    local call = calls[handle]
    local KEYS = received(call[1], 0)
    local ARGV, nargs = received(call[2], 1)
    if type(last) ~= 'string' then
      last = str(last)
    end
    ARGV[nargs + 1] = last
    return reply(pcall(script, KEYS, ARGV))
  end
  return function(now_us, nargs, ...)
    begin(now_us)
    local total = select('#', ...)
    local ARGV, KEYS = {...}, table_new(total - nargs, 0)
    for i = nargs + 1, total do
      local v = ARGV[i]
      if type(v) ~= 'string' then
        v = str(v)
      end
      KEYS[i - nargs] = v
      ARGV[i] = nil
    end
    for i = 1, nargs do
      local v = ARGV[i]
      if type(v) ~= 'string' then
        ARGV[i] = str(v)
      end
    end
    return reply(pcall(script, KEYS, ARGV))
  end, registered
end
