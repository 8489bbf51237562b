-- lease_renew.lua: the scaling leader extends its lease, only while it still holds it.
--
-- KEYS: KEYS[1] = the lease key (a string whose value is the holder's id).
-- ARGV: ARGV[1] = the holder's id; ARGV[2] = the new time to live.
-- Units: ARGV[2] in ms.
-- Returns: 1 = renewed (the key held ARGV[1]); 0 = another process holds it, or nobody does.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
