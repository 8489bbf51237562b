-- admission.lua: one admission of admit.lua, and a batch of them in one call.
--
-- Library: included by admit.lua (last: it uses every algorithm); defines
--   admit_limits(), admit_joined(), admit_written() and admit_batch(). The layouts of KEYS
--   and ARGV are admit.lua's.
-- KEYS: as admit.lua: one counter key per limit, one admission's after the
--   other in a batch.
-- ARGV: as admit.lua: an admission's limits joined, packed or unpacked; a
--   batch's admissions joined, each with its lease id and its keys' offset.
-- Units: as admit.lua.
-- Returns: admit_limits() and admit_joined() fill one admission's reply
--   (admit.lua's); admit_batch() returns a batch's replies, one per
--   admission, in order.
--
-- A batch is what a gateway's pipeline of admissions would have been, in one
-- FCALL: Redis reads, dispatches and answers one command instead of one per
-- admission, and asks TIME once. Each admission is checked and committed
-- before the next one is read, exactly as consecutive calls of a pipeline:
-- all-or-nothing on its own limits, it sees what the admissions before it
-- consumed. They share one `now`, the moment the batch started (Redis runs a
-- pipeline's calls back to back, and counts a script's TTLs from its start).
-- An admission that fails (a malformed limit, a key of the wrong type) is
-- answered with its error, as its own call would have been, and the others
-- go on.

-- What admit_limits() read of each limit of an admission, by position, kept from one call to the next and
-- overwritten (only the first n entries are the current admission's): LIMITS[i] the limit's parsed values
-- ({algorithm, limit, window_ms, cost, param, shadow}, common.lua's limit_parsed(); a concurrency limit's param
-- false: the admission's lease id), STATES[i] its state (false while it is left to take), TAKEN[i] whether its
-- cost was taken.
local LIMITS = {}
local STATES = {}
local TAKEN = {}

-- Fills out with the reply of the admission whose n limits are keys[k0 + 1 ..
-- k0 + n]: list[1 .. n] when list (their parsed values, common.lua's
-- limits_joined()) is given; else packed in argv[a0 + 1 .. a0 + n] when lease
-- (its lease id) is given, else unpacked, 6 values each from argv[a0 + 1].
-- Returns the number of entries filled.
--
-- A limit whose algorithm can take (fixed_window.lua, sliding_window.lua:
-- check and consume, or reserve, with the write's answer) is taken after
-- every other limit was checked and allowed the request, and given back
-- (undo) when a limit taken after it refuses: the same all-or-nothing, in
-- fewer or cheaper commands. What a take reserved is finished once the
-- admission is admitted. A take may decline (nil: nothing written), and
-- the limit is checked instead, as it is when another limit refused first.
local function admit_limits(keys, k0, n, list, argv, a0, lease, now, out)
  local limits, states, taken, scratches, parsed = LIMITS, STATES, TAKEN, SCRATCH, PACKED.map
  local admitted = 1
  local takes = 0
  for i = 1, n do
    local p
    if list then
      p = list[i]
    elseif lease then
      local s = argv[a0 + i]
      p = parsed[s] or limit_parsed(s)
    else
      p = { limit_argv(argv, i) }
    end
    limits[i], taken[i] = p, false
    local st = scratches[i] or scratch(i)
    local alg, cost = p[1], p[4]
    if cost > 0 and alg.take ~= nil then
      states[i] = false
      takes = takes + 1
    else
      local param = p[5] or lease
      st = alg.check(keys[k0 + i], now, p[2], p[3], cost, param, st)
      states[i] = st
      if not st.allowed and p[6] ~= '1' then
        admitted = 0
      end
    end
  end

  if takes > 0 then
    for i = 1, n do
      if states[i] == false then
        local p, key = limits[i], keys[k0 + i]
        local alg = p[1]
        local st = nil
        if admitted == 1 then
          st = alg.take(key, now, p[2], p[3], p[4], p[5], scratches[i])
        end
        if st == nil then
          st = alg.check(key, now, p[2], p[3], p[4], p[5], scratches[i])
        else
          taken[i] = true
        end
        states[i] = st
        if admitted == 1 and not st.allowed and p[6] ~= '1' then -- refused: what was taken goes back
          admitted = 0
          for j = 1, i do
            if taken[j] then
              local q = limits[j]
              q[1].undo(keys[k0 + j], q[4])
              taken[j] = false
            end
          end
        end
      end
    end
  end

  -- What is left to write once admitted, and each limit's verdict (push_verdict(), inline): allowed (1/0),
  -- remaining, reset_ms, retry_ms, mark. A limit's commit or finish writes its key and leaves its state as it is.
  out[1], out[2] = admitted, now
  local j = 2
  for i = 1, n do
    local st = states[i]
    if admitted == 1 then
      local p = limits[i]
      if taken[i] then -- taken: what is left to write, if anything
        local finish = p[1].finish
        if finish ~= nil then
          finish(keys[k0 + i], p[4], st)
        end
      elseif p[4] > 0 then
        p[1].commit(keys[k0 + i], now, p[2], p[3], p[4], p[5] or lease, st)
      end
    end
    if st.allowed then
      out[j + 1] = 1
    else
      out[j + 1] = 0
    end
    out[j + 2], out[j + 3], out[j + 4], out[j + 5] = st.remaining, st.reset_ms, st.retry_ms, st.mark
    j = j + 5
  end
  return j
end

-- An admission whose limits come joined in one string s (admit.lua's joined ARGV), its keys from keys[k0 + 1]: as
-- admit_limits(); an error when it has not one key per limit.
local function admit_joined(keys, k0, s, lease, now, out)
  local list = JOINED.map[s] or limits_joined(s)
  local n = list.n
  if k0 + n > #keys then
    error('ERR tollgate: an admission has fewer keys than limits')
  end
  return admit_limits(keys, k0, n, list, nil, 0, lease, now, out)
end

-- Writes what the takes of this call held back (sliding_window.lua's and fixed_window.lua's memos of the call): when
-- its admissions are done, or before it fails.
local function admit_written()
  sw_write_all()
  fw_write_all()
end

-- The reply tables of a batch's admissions, kept from one call to the next as common.lua's REPLY is (BATCH[0]
-- holds the batch's own list).
local BATCH = { [0] = {} }

-- A batch (argv[1] is "*"): then per admission 3 values: its limits joined (admit.lua's joined ARGV), its lease
-- id, and the offset k0 of its keys in keys (keys[k0 + 1 ..], one per limit: admissions of the same keys name the
-- same ones, each key is sent once). Returns the list of the admissions' replies; one that failed has its error
-- in its place.
local function admit_batch(keys, argv, now)
  if CALL.memo then -- the algorithms' memos of this call (CC_NOW, SW_NOW, FW_NOW) are on
    CALL.batch = CALL.n
  end
  local replies = BATCH[0]
  local m, a = 0, 2
  while a <= #argv do
    local k0 = num(argv[a + 2])
    if k0 == nil then
      admit_written()
      error('ERR tollgate: malformed admission batch')
    end
    m = m + 1
    local out = BATCH[m]
    if out == nil then
      out = {}
      BATCH[m] = out
    end
    local ok, size = pcall(admit_joined, keys, k0, argv[a], argv[a + 1], now, out)
    if ok then
      replies[m] = reply_done(out, size)
    elseif type(size) == 'table' then -- a Redis error reply raised by redis.call
      replies[m] = size
    else
      replies[m] = { err = 'ERR tollgate: admission failed: ' .. tostring(size) }
    end
    a = a + 3
  end
  admit_written()
  return reply_done(replies, m)
end
