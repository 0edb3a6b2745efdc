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
-- Every gateway is told the ids admitted (fs:st "+ rid rid ..."), so that
-- it knows which ids Redis has records of without asking (gateway/known.h).
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
--
-- A turn's purchases are mostly of a few SKUs (a sale's hot one): each
-- SKU's promotion, limits and rate are read once per call and its counters
-- written back once at the end, with one ZADD for the whole call. Within
-- the script that is the same as writing them one purchase at a time (it
-- runs alone), at half the commands per purchase and half the AOF.
if not redis.call('GET', KEYS[1]) then
    return {'not_ready'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, default_k, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cap = tonumber(ARGV[4]) or 0
local total = tonumber(redis.call('GET', KEYS[3])) or 0
local added = 0
local skus, order, members, told = {}, {}, {}, {'+'}
local out = {}

-- What this call knows of a SKU: read on its first purchase.
local function sku_state(sku, kp, kc)
    local s = skus[sku]
    if s then
        return s
    end
    local p = redis.call('HMGET', kp, 'remaining', 'held', 'adm')
    local c = redis.call('HMGET', kc, 'k_pct', 'sku_rate_per_s')
    local k = tonumber(c[1]) or 0
    if k <= 0 then
        k = default_k     -- 0: the gateway's default
    end
    s = {kp = kp, remaining = tonumber(p[1]), held = tonumber(p[2]) or 0,
         adm = tonumber(p[3]) or 0, k = k, rate = tonumber(c[2]) or 0, took = 0,
         rate_key = nil, used = 0, tried = 0, retry = nil, back = 0}
    skus[sku] = s
    order[#order + 1] = sku
    return s
end

for i = 1, n do
    local kp, kc, kr = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
    local sku, rid, qty = ARGV[3 * i + 2], ARGV[3 * i + 3], tonumber(ARGV[3 * i + 4])
    local st = redis.call('HGET', kr, 'st')
    if st then
        out[i] = {'known', st, 0}
    else
        local s = sku_state(sku, kp, kc)
        if not s.remaining then
            out[i] = {'unknown_sku', 0, 0}
        elseif s.remaining <= 0 then
            if s.retry == nil then
                s.retry = 0
                if s.held > 0 then
                    local first = redis.call('ZRANGE', 'fs:holds:' .. sku, 0, 0, 'WITHSCORES')
                    if first[2] then
                        s.retry = math.max(0, tonumber(first[2]) - now)
                    end
                    s.back = 1
                end
            end
            out[i] = {'sold_out', s.retry, s.back}
        elseif s.adm + qty > math.ceil(s.remaining * s.k / 100) then
            out[i] = {'claimed', 1000, 1}
        elseif cap > 0 and total + qty > cap then
            out[i] = {'inflight', 1000, 0}
        else
            local over = false
            if s.rate > 0 then
                -- Every try counts against the SKU's rate, admitted or not.
                if s.rate_key == nil then
                    s.rate_key = 'fs:rate:' .. sku .. ':' .. math.floor(now / 1000)
                    s.used = tonumber(redis.call('GET', s.rate_key)) or 0
                end
                s.used = s.used + qty
                s.tried = s.tried + qty
                if s.used > s.rate then
                    over = true
                    out[i] = {'sku_rate', 1000 - now % 1000, 0}
                end
            end
            if not over then
                s.adm = s.adm + qty
                s.took = s.took + qty
                total = total + qty
                added = added + qty
                redis.call('HSET', kr, 'st', 'queued', 'adm', qty, 'sku', sku)
                redis.call('EXPIRE', kr, ttl)
                members[#members + 1] = now
                members[#members + 1] = sku .. ' ' .. rid
                told[#told + 1] = rid
                out[i] = {'admitted', 0, 0}
            end
        end
    end
end

for _, sku in ipairs(order) do
    local s = skus[sku]
    if s.took > 0 then
        redis.call('HINCRBY', s.kp, 'adm', s.took)
    end
    if s.tried > 0 and redis.call('INCRBY', s.rate_key, s.tried) == s.tried then
        redis.call('PEXPIRE', s.rate_key, 2000)
    end
end
if added > 0 then
    redis.call('INCRBY', KEYS[3], added)
end
for i = 1, #members, 1000 do
    redis.call('ZADD', KEYS[2], unpack(members, i, math.min(i + 999, #members)))
end
-- Every gateway learns the ids that now have records (gateway/known.h), in
-- one message per call.
if #told > 1 then
    redis.call('PUBLISH', 'fs:st', table.concat(told, ' '))
end
return out
