-- Load one promotion into Redis for the admin API, once.
--
-- KEYS[1] fs:ready   KEYS[2] fs:promo:<sku>   KEYS[3] fs:promos
-- ARGV[1] sku  ARGV[2] stock  ARGV[3] per-user limit  ARGV[4] start_ms
-- ARGV[5] end_ms  ARGV[6] hold_ms
--
-- Errors with "not_ready" when fs:ready is absent: the state was lost and
-- must be rebuilt from the ledger first, or the counters written here would
-- be overwritten (or worse, believed). An existing promotion hash is never
-- touched: its counters are live. Returns
--   {created (1|0), initial, remaining, held, sold, limit, start_ms, end_ms, hold_ms}
if not redis.call('GET', KEYS[1]) then
    return redis.error_reply('not_ready')
end
local created = 0
if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('HSET', KEYS[2], 'initial', ARGV[2], 'remaining', ARGV[2],
               'held', 0, 'sold', 0, 'limit', ARGV[3], 'start_ms', ARGV[4],
               'end_ms', ARGV[5], 'hold_ms', ARGV[6])
    redis.call('SADD', KEYS[3], ARGV[1])
    created = 1
end
local p = redis.call('HMGET', KEYS[2], 'initial', 'remaining', 'held', 'sold',
                     'limit', 'start_ms', 'end_ms', 'hold_ms')
return {created, p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]}
