-- include: common.lua
-- lease_release.lua: gives concurrency leases back; idempotent.
--
-- KEYS: the sorted set of each concurrency limit (see concurrency.lua), all
--   in one hash slot on Cluster.
-- ARGV: ARGV[i] = the lease id held in KEYS[i].
-- Units: ms (expired leases, score <= now, are swept at the same time).
-- Returns: { 1/0 per key }: 1 = a live lease was released, 0 = it was already
--   gone or had expired.
-- An emptied sorted set disappears with its last member.

local now_ms = math.floor(now_us() / 1000)
local out = {}
for i = 1, #KEYS do
  local key, id = KEYS[i], ARGV[i]
  local score = tonumber(redis.call('ZSCORE', key, id))
  local released = 0
  if score then
    redis.call('ZREM', key, id)
    if score > now_ms then
      released = 1
    end
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  out[i] = released
end
return out
