-- lease_release.lua: the scaling leader gives its lease up (compare-and-delete), so a successor need not wait.
--
-- KEYS: KEYS[1] = the lease key (a string whose value is the holder's id).
-- ARGV: ARGV[1] = the holder's id.
-- Units: none (no time involved).
-- Returns: 1 = released; 0 = the key held another id or was gone (left untouched).

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
