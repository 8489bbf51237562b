-- concurrency.lua: concurrency leases; a request holds one lease while it
-- runs, a crashed process's leases expire on their own.
--
-- Library: included by admit.lua, peek.lua and settle.lua; one limit = one key.
-- KEYS (per limit): a sorted set; member = lease id, score = time the lease
--   expires (ms since the epoch). Members whose score has passed are dead.
-- ARGV (per limit): kind = "concurrency", limit (leases held at once),
--   window_ms = lease TTL in ms, cost (1 to acquire a lease, 0 to look),
--   param = lease id (random, chosen by the caller), then shadow (admit) or
--   mark (settle; unused).
-- Units: leases; time in ms.
-- Returns (check): allowed, remaining (leases still free after this one),
--   reset_ms (until the earliest live lease expires, or the new lease's TTL
--   when none is held), retry_ms (a lease is normally released long before it
--   expires, so at most 1000 ms; -1 if cost > limit), mark = 0.
-- Renew and release: lease_renew.lua, lease_release.lua; settle with a
--   negative delta releases the lease too (a compensating refund, or the
--   end of the request) and reports only what it released (settle.lua's
--   reply has that one field for a concurrency limit); any other delta
--   changes nothing and reports 0.
-- TTL: the key lives as long as its longest lease, and up to a second more
--   (an admission that gives a key its TTL, or lengthens the TTL of a key
--   holding leases, adds a second, so that the admissions after it need not;
--   see CC_TTL). Expired
--   leases are swept by the next admission that finds one (counts skip them
--   until then) and by lease_release.lua; a release through settle.lua
--   removes its lease alone.
-- Reads: while the earliest lease of the key is live, every lease is, and
--   ZRANGE 0 0 and ZCARD tell the state; only when expired leases are still
--   held are they counted past by score (ZCOUNT, ZRANGEBYSCORE).

-- "(now_ms": the bound that excludes leases expired by now.
local function cc_after(now_ms)
  return string.format('(%d', now_ms)
end

-- The earliest expiry among live leases and that lease, or nil.
local function cc_earliest(key, after)
  local first = redis.call('ZRANGEBYSCORE', key, after, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #first == 0 then
    return nil
  end
  return tonumber(first[2]), first[1]
end

local function cc_live(key, after)
  return redis.call('ZCOUNT', key, after, '+inf')
end

-- Live leases, the earliest expiry among them (nil: none), whether expired
-- leases are still held, and the earliest live lease.
local function cc_state(key, now_ms)
  local first = redis.call('ZRANGE', key, '0', '0', 'WITHSCORES')
  if #first == 0 then
    return 0, nil, false
  end
  local low = num(first[2]) -- the same string while that lease is the earliest: parsed once
  if low > now_ms then
    return redis.call('ZCARD', key), low, false, first[1]
  end
  local after = cc_after(now_ms)
  local earliest, lease = cc_earliest(key, after)
  return cc_live(key, after), earliest, true, lease
end

-- What the current call (common.lua's CALL) has made of each lease set it admitted into: CC_NOW.live[key] its live
-- leases, CC_NOW.earliest[key] and CC_NOW.first[key] its earliest lease's expiry and id, as an admission's read would
-- find them. A script runs alone and its clock stands still, so the state a commit leaves is known exactly (the read
-- before it, the leases it swept, the lease it added) and stays so until the call ends: the admissions of a batch
-- after the first into a key (admission.lua) skip ZRANGE and ZCARD. Replaced at each batch's first commit.
local CC_NOW = { n = false, live = {}, earliest = {}, first = {} }

-- Does lease a come before lease b among leases of one expiry? Redis orders them by their bytes (memcmp, then the
-- shorter first); Lua's < on strings follows the locale (Redis sets LC_COLLATE), so the bytes are compared here.
local function cc_before(a, b)
  local n = #a
  if #b < n then
    n = #b
  end
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

-- Remembers the state of key after a commit (st: its check's) added lease, expiring at expires, to its live leases;
-- added: ZADD's answer (0: the lease id was held already and its expiry changed). What the call knew already goes
-- first: st may be older than a commit of the same admission into the same key. false: not known for the rest of the
-- call (the admissions read the key).
local function cc_known(key, st, lease, expires, added)
  local m = CC_NOW
  if CALL.batch ~= CALL.n then
    return
  elseif m.n ~= CALL.n then
    m.n, m.live, m.earliest, m.first = CALL.n, {}, {}, {}
  end
  local live, earliest, first = m.live[key], m.earliest[key], m.first[key]
  if live == nil then
    live, earliest, first = st.used, st.earliest, st.first
    if live > 0 and first == nil then
      live = false
    end
  end
  if live == false or added ~= 1 or expires <= st.now_ms then
    m.live[key] = false
    return
  end
  if live == 0 or expires < earliest or (expires == earliest and cc_before(lease, first)) then
    earliest, first = expires, lease
  end
  m.live[key], m.earliest[key], m.first[key] = live + 1, earliest, first
end

-- When an admission last lengthened each key's TTL (Redis Functions and the embedded engine keep this between calls;
-- EVALSHA starts empty), so that the admissions after it need not: CC_TTL.bound[key] is a lower bound of when the
-- key expires (ms since the epoch), CC_TTL.first[key] and CC_TTL.expiry[key] the earliest live lease the key held
-- then and its expiry. The bound holds while that lease is still the key's earliest, with that expiry: it has been
-- live without a break since (a lease is renewed only while live), so the key has held live leases all along, and
-- every write to a key holding live leases only lengthens its TTL (this version's or an earlier one's, through FCALL
-- or EVALSHA); only a key with none live gets a TTL anew. Otherwise, or when the bound falls short of the new lease,
-- the admission lengthens the TTL, by CC_SLACK_MS (at most the lease TTL) more than the new lease needs: a busy key
-- is lengthened once its earliest lease of that moment is gone or a second has passed, not on every admission. A key
-- given its TTL anew gets the same second. Within the call that set it (CC_TTL.call[key], common.lua's CALL) the
-- bound holds whichever lease is the earliest: an admission call only adds leases (a sweep of expired ones is
-- followed by the new lease), so the key neither empties nor loses its TTL before the call ends. That matters when
-- the admissions of a batch share one expiry: the earliest of equal scores is the least lease id, which changes
-- as leases with lower ids come in. Emptied at MEMO_MAX keys.
local CC_TTL = { bound = {}, first = {}, expiry = {}, call = {}, n = 0 }
local CC_SLACK_MS = 1000

-- Does key live at least until at_ms, its earliest live lease being first, expiring at expiry? Within the call
-- that set the bound, the earliest lease of the moment is remembered with it (what a lengthening would remember).
local function cc_lives_until(key, first, expiry, at_ms)
  local t = CC_TTL
  if t.call[key] == CALL.n then
    if t.bound[key] >= at_ms then
      t.first[key], t.expiry[key] = first, expiry
      return true
    end
    return false
  end
  return t.first[key] == first and t.expiry[key] == expiry and t.bound[key] >= at_ms
end

-- Remembers that key lives at least until at_ms while its earliest live lease is first, expiring at expiry (and
-- for the rest of this call).
local function cc_lengthened(key, at_ms, first, expiry)
  local t = CC_TTL
  if t.first[key] == nil then
    if t.n >= MEMO_MAX then
      t.bound, t.first, t.expiry, t.call, t.n = {}, {}, {}, {}, 0
    end
    t.n = t.n + 1
  end
  t.bound[key], t.first[key], t.expiry[key], t.call[key] = at_ms, first, expiry, CALL.n
end

-- The expiry of the lease an admission last gave, as a number and as the string written: the admissions of a batch
-- (admission.lua) share one now, so their leases of one TTL share it, formatted once. (One entry: a memo of every
-- expiry would take one more each millisecond.)
local CC_EXPIRY = { ms = false, text = '' }

ALGORITHMS.concurrency = {
  check = function(key, now, limit, window_ms, cost, param, st)
    local now_ms = (now - now % 1000) / 1000 -- div(now, 1000)
    local live, earliest, expired, first
    local m = CC_NOW
    if m.n == CALL.n and m.live[key] then -- committed into earlier in this call: known
      live, earliest, expired, first = m.live[key], m.earliest[key], false, m.first[key]
    else
      live, earliest, expired, first = cc_state(key, now_ms)
    end
    local reset_ms = window_ms
    if earliest then
      reset_ms = earliest - now_ms
    end
    st.retry_ms, st.mark, st.used, st.now_ms, st.expired, st.earliest, st.first, st.reset_ms =
      0, 0, live, now_ms, expired, earliest, first, reset_ms
    if live + cost <= limit then -- count_verdict(), when the lease fits (cost <= limit then too: live >= 0)
      st.allowed, st.remaining = true, limit - live - cost
    elseif count_verdict(st, live, cost, limit) then
      st.retry_ms = math.min(1000, reset_ms)
    end
    return st
  end,

  commit = function(key, now, limit, window_ms, cost, param, st)
    if st.expired then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', int(st.now_ms))
    end
    local now_ms = st.now_ms
    local expires = now_ms + window_ms
    if CC_EXPIRY.ms ~= expires then
      CC_EXPIRY.ms, CC_EXPIRY.text = expires, int(expires)
    end
    cc_known(key, st, param, expires, redis.call('ZADD', key, CC_EXPIRY.text, param))
    -- The key must live until the new lease has expired: ttl_ms(window_ms) from now. (The bounds remembered are a ms
    -- short of the TTL given: Redis counts it from when the script started, up to a ms before TIME answered.)
    local slack = CC_SLACK_MS
    if window_ms < slack then
      slack = window_ms
    end
    if st.used == 0 then -- the key is new (none held, or every lease had expired and was just swept)
      redis.call('PEXPIRE', key, int_memo(ttl_ms(window_ms + slack)))
      cc_lengthened(key, expires + slack, param, expires)
    elseif st.expired or not cc_lives_until(key, st.first, st.earliest, expires + 1) then -- ttl_ms(window_ms)
      -- it holds leases and their TTL, maybe a renewed one longer than this lease's: lengthened, never shortened
      keep_ttl(key, window_ms + slack)
      if not st.expired then
        cc_lengthened(key, expires + slack, st.first, st.earliest)
      end
    end
  end,

  adjust = function(key, now, limit, window_ms, delta, param, mark)
    if delta < 0 then
      -- A release: its request has answered, nobody reads the state, so none is computed, and expired
      -- leases are left to the next admission (which counts past them and sweeps them) or to the TTL.
      return -redis.call('ZREM', key, param)
    end
    return 0
  end,
}
