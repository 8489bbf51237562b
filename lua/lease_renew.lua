-- include: common.lua
-- lease_renew.lua: extends concurrency leases that are still alive (a long
-- stream renews its lease before the TTL runs out).
--
-- KEYS: the sorted set of each concurrency limit (see concurrency.lua), all
--   in one hash slot on Cluster.
-- ARGV: ARGV[1] = new TTL in ms; ARGV[1 + i] = the lease id held in KEYS[i].
-- Units: ms.
-- Returns: { 1/0 per key }: 1 = renewed, 0 = the lease had expired or was
--   released (it is not re-acquired: the caller decides what to do).
-- The key's TTL is raised to at least the new lease TTL.

local now_ms = math.floor(now_us() / 1000)
local ttl = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local key, id = KEYS[i], ARGV[1 + i]
  local score = tonumber(redis.call('ZSCORE', key, id))
  if score and score > now_ms then
    redis.call('ZADD', key, 'XX', now_ms + ttl, id)
    keep_ttl(key, ttl)
    out[i] = 1
  else
    if score then
      redis.call('ZREM', key, id)
    end
    out[i] = 0
  end
end
return out
