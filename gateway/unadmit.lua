-- Give an admitted purchase's place in the admission budget back: Kafka
-- definitely refused it (gateway/admit.lua says how the budget works).
-- KEYS[1] fs:promo:<sku>   KEYS[2] fs:req:<rid>   KEYS[3] fs:adm:all
-- KEYS[4] fs:adm:total
-- ARGV[1] "<sku> <rid>", its member in fs:adm:all
-- Only a marker still undecided and still counted: the deductor's decision
-- (deduct.lua) or the reconciler's heal may have given it back already.
local r = redis.call('HMGET', KEYS[2], 'o', 'adm')
if r[1] or not r[2] then
    return 0
end
redis.call('DEL', KEYS[2])
if redis.call('DECRBY', KEYS[4], tonumber(r[2])) < 0 then
    redis.call('SET', KEYS[4], 0)
end
redis.call('ZREM', KEYS[3], ARGV[1])
-- A retry through another gateway may be waiting on it (push.c).
redis.call('PUBLISH', 'fs:st', string.match(ARGV[1], ' (.*)$') .. ' gone')
if redis.call('EXISTS', KEYS[1]) == 1 and
   redis.call('HINCRBY', KEYS[1], 'adm', -tonumber(r[2])) < 0 then
    redis.call('HSET', KEYS[1], 'adm', 0)
end
return 1
