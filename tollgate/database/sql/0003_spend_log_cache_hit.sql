-- 0003_spend_log_cache_hit: a spend row says whether the request was answered from the gateway's response cache
-- (then it used no tokens, cost_nanos is the cache's price, and no upstream served it). Rows before it: 0.

-- both:
ALTER TABLE spend_log ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0;
