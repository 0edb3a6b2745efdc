-- Admission: may these purchases go to Kafka? One call admits a batch (the
-- purchases one gateway's loop collected in one turn), against a budget
-- every gateway shares:
--
--   admitted-but-undecided units of a SKU (fs:promo adm) <= k x remaining
--
-- so that the deductor sees about as many purchases as there are units to
-- claim, however many gateways and buyers there are. Admission is the
-- funnel, not the stock: the deductor still decides every purchase, and a
-- budget that is off (too high or too low) never oversells, it only lets
-- more or fewer buyers through. How it stays right (proto/README.md,
-- "Admission"):
--   - a purchase admitted here has a "queued" marker fs:req:<rid> with
--     adm = its qty, and "<sku> <rid>" is in fs:adm:all (a sorted set by
--     admission time);
--   - the deductor's first decision of it (deduct.lua) gives the qty back:
--     adm -= qty (and fs:adm:total), the marker's adm and the set entry removed;
--   - a definite Kafka refusal gives it back too (unadmit.lua, the gateway);
--   - a purchase that never reaches the deductor (the gateway crashed
--     between here and Kafka) is given back by the reconciler after
--     reconciler.admission_heal_ms (heal.lua): the budget cannot leak.
--
-- KEYS[1] fs:ready   KEYS[2] fs:adm:all   KEYS[3] fs:adm:total
-- then per purchase i (3 keys from KEYS[3 i + 1]):
--   fs:promo:<sku>  fs:cfg:<sku>  fs:req:<rid>
-- ARGV[1] record ttl (s)   ARGV[2] default k (percent)   ARGV[3] count
-- ARGV[4] global cap of admitted-but-undecided units over every SKU (0: none)
-- then per purchase: sku, rid, qty
--
-- Returns one {verdict, a, b} per purchase, in order:
--   {'admitted', 0, 0}
--   {'known', state, 0}       the request id was seen before: its state
--   {'sold_out', retry_ms, may_return}
--                             nothing left; may_return = 1 while units are
--                             held for payment (the earliest deadline is
--                             retry_ms away): they may come back
--   {'claimed', retry_ms, 1}  units are left, but every one is claimed by
--                             purchases already on their way: not this time
--   {'sku_rate', retry_ms, 0} the SKU's rate across all gateways is used up
--   {'inflight', retry_ms, 0} the global cap of purchases on their way is reached
--   {'unknown_sku', 0, 0}
-- or {'not_ready'} when fs:ready is absent (state lost, rebuild first).
if not redis.call('GET', KEYS[1]) then
    return {'not_ready'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, default_k, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cap = tonumber(ARGV[4]) or 0
local total = tonumber(redis.call('GET', KEYS[3])) or 0
local out = {}
for i = 1, n do
    local kp, kc, kr = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
    local sku, rid, qty = ARGV[3 * i + 2], ARGV[3 * i + 3], tonumber(ARGV[3 * i + 4])
    local st = redis.call('HGET', kr, 'st')
    if st then
        out[i] = {'known', st, 0}
    else
        local p = redis.call('HMGET', kp, 'remaining', 'held', 'adm')
        local c = redis.call('HMGET', kc, 'k_pct', 'sku_rate_per_s')
        local remaining, held, adm = tonumber(p[1]), tonumber(p[2]) or 0, tonumber(p[3]) or 0
        local k = tonumber(c[1]) or 0
        if k <= 0 then
            k = default_k     -- 0: the gateway's default
        end
        local rate = tonumber(c[2]) or 0
        if not remaining then
            out[i] = {'unknown_sku', 0, 0}
        elseif remaining <= 0 then
            local retry, back = 0, 0
            if held > 0 then
                local first = redis.call('ZRANGE', 'fs:holds:' .. sku, 0, 0, 'WITHSCORES')
                if first[2] then
                    retry = math.max(0, tonumber(first[2]) - now)
                end
                back = 1
            end
            out[i] = {'sold_out', retry, back}
        elseif adm + qty > math.ceil(remaining * k / 100) then
            out[i] = {'claimed', 1000, 1}
        elseif cap > 0 and total + qty > cap then
            out[i] = {'inflight', 1000, 0}
        else
            local over = false
            if rate > 0 then
                local key = 'fs:rate:' .. sku .. ':' .. math.floor(now / 1000)
                local used = redis.call('INCRBY', key, qty)
                if used == qty then
                    redis.call('PEXPIRE', key, 2000)
                end
                if used > rate then
                    over = true
                    out[i] = {'sku_rate', 1000 - now % 1000, 0}
                end
            end
            if not over then
                redis.call('HINCRBY', kp, 'adm', qty)
                total = redis.call('INCRBY', KEYS[3], qty)
                redis.call('HSET', kr, 'st', 'queued', 'adm', qty, 'sku', sku)
                redis.call('EXPIRE', kr, ttl)
                redis.call('ZADD', KEYS[2], now, sku .. ' ' .. rid)
                out[i] = {'admitted', 0, 0}
            end
        end
    end
end
return out
