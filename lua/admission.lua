-- admission.lua: one admission of admit.lua, and a batch of them in one call.
--
-- Library: included by admit.lua (last: it uses every algorithm); defines
--   admit_limits() and admit_batch(). The layouts of KEYS and ARGV are
--   admit.lua's.
-- KEYS: as admit.lua: one counter key per limit, one admission's after the
--   other in a batch.
-- ARGV: as admit.lua: an admission's limits packed or unpacked; a batch's
--   admissions packed, each led by its number of limits.
-- Units: as admit.lua.
-- Returns: admit_limits() fills one admission's reply (admit.lua's);
--   admit_batch() returns a batch's replies, one per admission, in order.
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

-- Fills out with the reply of the admission whose n limits are keys[k0 + 1 ..
-- k0 + n]: packed in argv[a0 + 1 .. a0 + n] when lease (its lease id) is
-- given, else unpacked, 6 values each from argv[a0 + 1]. Returns the number
-- of entries filled.
--
-- A limit whose algorithm can take (fixed_window.lua, sliding_window.lua:
-- check and consume, or reserve, with the write's answer) is taken after
-- every other limit was checked and allowed the request, and given back
-- (undo) when a limit taken after it refuses: the same all-or-nothing, in
-- fewer or cheaper commands. What a take reserved is finished once the
-- admission is admitted. A take may decline (nil: nothing written), and
-- the limit is checked instead, as it is when another limit refused first.
local function admit_limits(keys, k0, n, argv, a0, lease, now, out)
  -- Each limit's ARGV is read once: 7 values per limit in one flat table (alg, limit, window_ms, cost, param,
  -- state, shadow), reused from call to call (common.lua's SEEN: only its first 7 * n entries are this
  -- admission's). The state is false for a limit left to take; the shadow value becomes true once its cost is
  -- taken (shadow values are strings).
  local seen = SEEN
  local admitted = 1
  local takes = 0
  for i = 1, n do
    local alg, limit, window_ms, cost, param, shadow
    if lease then
      alg, limit, window_ms, cost, param, shadow = limit_packed(argv, a0 + i, lease)
    else
      alg, limit, window_ms, cost, param, shadow = limit_argv(argv, i)
    end
    local b = (i - 1) * 7
    if cost > 0 and alg.take ~= nil then
      seen[b + 1], seen[b + 2], seen[b + 3], seen[b + 4], seen[b + 5], seen[b + 6], seen[b + 7] =
        alg, limit, window_ms, cost, param, false, shadow
      takes = takes + 1
    else
      local st = alg.check(keys[k0 + i], now, limit, window_ms, cost, param, scratch(i))
      seen[b + 1], seen[b + 2], seen[b + 3], seen[b + 4], seen[b + 5], seen[b + 6], seen[b + 7] =
        alg, limit, window_ms, cost, param, st, shadow
      if not st.allowed and shadow ~= '1' then
        admitted = 0
      end
    end
  end

  if takes > 0 then
    for i = 1, n do
      local b = (i - 1) * 7
      if seen[b + 6] == false then
        local alg, key, cost, shadow = seen[b + 1], keys[k0 + i], seen[b + 4], seen[b + 7]
        local st = nil
        if admitted == 1 then
          st = alg.take(key, now, seen[b + 2], seen[b + 3], cost, seen[b + 5], scratch(i))
        end
        if st == nil then
          st = alg.check(key, now, seen[b + 2], seen[b + 3], cost, seen[b + 5], scratch(i))
        else
          seen[b + 7] = true
        end
        seen[b + 6] = st
        if admitted == 1 and not st.allowed and shadow ~= '1' then -- refused: what was taken goes back
          admitted = 0
          for j = 1, i do
            local c = (j - 1) * 7
            if seen[c + 7] == true then
              seen[c + 1].undo(keys[k0 + j], seen[c + 4])
              seen[c + 7] = false
            end
          end
        end
      end
    end
  end

  if admitted == 1 then
    for i = 1, n do
      local b = (i - 1) * 7
      local cost = seen[b + 4]
      if seen[b + 7] == true then -- taken: what is left to write, if anything
        local finish = seen[b + 1].finish
        if finish ~= nil then
          finish(keys[k0 + i], cost, seen[b + 6])
        end
      elseif cost > 0 then
        seen[b + 1].commit(keys[k0 + i], now, seen[b + 2], seen[b + 3], cost, seen[b + 5], seen[b + 6])
      end
    end
  end

  out[1], out[2] = admitted, now
  for i = 1, n do
    push_verdict(out, 2 + (i - 1) * 5, seen[(i - 1) * 7 + 6])
  end
  return 2 + n * 5
end

-- The reply tables of a batch's admissions, kept from one call to the next as common.lua's REPLY is (BATCH[0]
-- holds the batch's own list).
local BATCH = { [0] = {} }

-- A batch (argv[1] is "*"): then per admission its number of limits n, its n packed limits, its lease id; keys
-- in the same order. Returns the list of the admissions' replies; one that failed has its error in its place.
local function admit_batch(keys, argv, now)
  local replies = BATCH[0]
  local m, k0, a = 0, 0, 2
  while a <= #argv do
    local n = num(argv[a])
    if n == nil then
      error('ERR tollgate: malformed admission batch')
    end
    m = m + 1
    local out = BATCH[m]
    if out == nil then
      out = {}
      BATCH[m] = out
    end
    local ok, size = pcall(admit_limits, keys, k0, n, argv, a, argv[a + n + 1], now, out)
    if ok then
      replies[m] = reply_done(out, size)
    elseif type(size) == 'table' then -- a Redis error reply raised by redis.call
      replies[m] = size
    else
      replies[m] = { err = 'ERR tollgate: admission failed: ' .. tostring(size) }
    end
    k0, a = k0 + n, a + n + 2
  end
  return reply_done(replies, m)
end
