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
-- Leases (proto/README.md, "Leases"): while a SKU's budget is large, a
-- gateway loop may hold a lease of it, units counted in adm (and in the
-- promotion's lease) that it gives to purchases on its own, producing them
-- at once; this call then records them ("marks": the units move from the
-- lease to the purchase's marker). A lease is a record fs:req:<lease id>
-- {st = lease, adm = units left} with its member in fs:adm:all, so that the
-- reconciler's heal gives back the lease of a gateway that died.
--
-- KEYS[1] fs:ready   KEYS[2] fs:adm:all   KEYS[3] fs:adm:total
-- then per purchase i (3 keys from KEYS[3 i + 1]):
--   fs:promo:<sku>  fs:cfg:<sku>  fs:req:<rid>
-- ARGV[1] record ttl (s)   ARGV[2] default k (percent)   ARGV[3] count
-- ARGV[4] global cap of admitted-but-undecided units over every SKU (0: none)
-- ARGV[5] smallest free budget of a SKU a lease is granted from
-- then per purchase: sku, rid, qty, lease ('' to admit it against the
--   budget; a lease id: it was produced under that lease, record it)
-- then the count of lease operations, and per operation: op, sku, lease id,
--   units ('grant' a new lease of at most units; 'return' one: its units
--   left go back to the budget)
--
-- Returns one {verdict, a, b} per purchase, in order, and, when there were
-- lease operations, one more element: the units granted per operation (0
-- for a return or a grant refused):
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
-- A mark is answered 'admitted' or 'known' (its id had a record already).
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
-- Numbers that only go back to Redis stay strings: a Lua number handed to
-- redis.call is formatted with snprintf each time (8-11% of the server's
-- instructions for a turn of 14 marks, by callgrind).
local ttl, default_k, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now_s = tostring(now)
local cap = tonumber(ARGV[4]) or 0
local min_free = tonumber(ARGV[5]) or 0
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
    local p = redis.call('HMGET', kp, 'remaining', 'held', 'adm', 'lease')
    local c = redis.call('HMGET', kc, 'k_pct', 'sku_rate_per_s')
    local k = tonumber(c[1]) or 0
    if k <= 0 then
        k = default_k     -- 0: the gateway's default
    end
    s = {kp = kp, remaining = tonumber(p[1]), held = tonumber(p[2]) or 0,
         adm = tonumber(p[3]) or 0, lease = tonumber(p[4]) or 0, leased = 0, k = k, rate = tonumber(c[2]) or 0, took = 0,
         rate_key = nil, used = 0, tried = 0, retry = nil, back = 0}
    skus[sku] = s
    order[#order + 1] = sku
    return s
end

-- What this call knows of a lease marks were made under: its units left,
-- read on its first mark and written back once, before the lease operations
-- (one HGET and one HINCRBY per lease per call, not per purchase: a turn's
-- marks are mostly of one lease).
local leases, lease_order = {}, {}
local function lease_state(lease)
    local l = leases[lease]
    if l then
        return l
    end
    local key = 'fs:req:' .. lease
    l = {key = key, left = tonumber(redis.call('HGET', key, 'adm')), took = 0}
    leases[lease] = l
    lease_order[#lease_order + 1] = lease
    return l
end

-- A purchase gets its "queued" marker, counted in the budget.
local function record(s, sku, rid, kr, qty_s)
    redis.call('HSET', kr, 'st', 'queued', 'adm', qty_s, 'sku', sku)
    redis.call('EXPIRE', kr, ttl)
    members[#members + 1] = now_s
    members[#members + 1] = sku .. ' ' .. rid
    told[#told + 1] = rid
end

-- Budget moved into (units > 0) or out of (< 0) the SKU's counts.
local function count(s, units)
    s.adm = s.adm + units
    s.took = s.took + units
    total = total + units
    added = added + units
end

for i = 1, n do
    local kp, kc, kr = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
    local sku, rid, qty_s = ARGV[4 * i + 2], ARGV[4 * i + 3], ARGV[4 * i + 4]
    local qty = tonumber(qty_s)
    local lease = ARGV[4 * i + 5]
    local st = redis.call('HGET', kr, 'st')
    if st then
        out[i] = {'known', st, 0}
    elseif lease ~= '' then
        -- Already in Kafka: its units move from the lease to its marker.
        -- A lease gone (returned, healed, Redis rebuilt) counts them anew,
        -- unchecked: at most one lease's worth over the budget.
        local s = sku_state(sku, kp, kc)
        local l = lease_state(lease)
        if l.left and l.left >= qty then
            l.left = l.left - qty
            l.took = l.took + qty
            s.leased = s.leased - qty
        else
            count(s, qty)
        end
        record(s, sku, rid, kr, qty_s)
        out[i] = {'admitted', 0, 0}
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
                count(s, qty)
                record(s, sku, rid, kr, qty_s)
                out[i] = {'admitted', 0, 0}
            end
        end
    end
end

for _, lease in ipairs(lease_order) do
    local l = leases[lease]
    if l.took > 0 then
        redis.call('HINCRBY', l.key, 'adm', -l.took)
    end
end

-- Leases, after the marks: a lease returned here had its marks counted.
local base = 5 + 4 * n
local nops = tonumber(ARGV[base + 1]) or 0
local granted = {}
for j = 1, nops do
    local op, sku, lease = ARGV[base + 4 * j - 2], ARGV[base + 4 * j - 1], ARGV[base + 4 * j]
    local units = tonumber(ARGV[base + 4 * j + 1]) or 0
    local lk = 'fs:req:' .. lease
    local s = sku_state(sku, 'fs:promo:' .. sku, 'fs:cfg:' .. sku)
    granted[j] = 0
    if op == 'return' then
        local left = tonumber(redis.call('HGET', lk, 'adm'))
        if left then
            redis.call('DEL', lk)
            redis.call('ZREM', KEYS[2], sku .. ' ' .. lease)
            count(s, -left)
            s.leased = s.leased - left
        end
    elseif s.remaining and s.remaining > 0 and s.rate <= 0 then
        -- A lease never holds what buyers elsewhere need: it takes a
        -- sixteenth of the free budget at most, only from a large one, and
        -- all leases of a SKU stay within k x remaining - remaining, so a
        -- buyer refused 'claimed' still means undecided purchases cover
        -- every unit left (k = 100: no leases).
        local budget = math.ceil(s.remaining * s.k / 100)
        local free = budget - s.adm
        if cap > 0 then
            free = math.min(free, cap - total)
        end
        local g = math.min(units, math.floor(free / 16),
                           budget - s.remaining - (s.lease + s.leased))
        if free >= min_free and g > 0 then
            redis.call('HSET', lk, 'st', 'lease', 'adm', g, 'sku', sku)
            redis.call('EXPIRE', lk, ttl)
            members[#members + 1] = now_s
            members[#members + 1] = sku .. ' ' .. lease
            count(s, g)
            s.leased = s.leased + g
            granted[j] = g
        end
    end
end

for _, sku in ipairs(order) do
    local s = skus[sku]
    -- (A promotion deleted meanwhile is not written back into being.)
    if s.remaining and s.took ~= 0 and redis.call('HINCRBY', s.kp, 'adm', s.took) < 0 then
        redis.call('HSET', s.kp, 'adm', 0)
    end
    if s.remaining and s.leased ~= 0 and
       redis.call('HINCRBY', s.kp, 'lease', s.leased) < 0 then
        redis.call('HSET', s.kp, 'lease', 0)
    end
    if s.tried > 0 and redis.call('INCRBY', s.rate_key, s.tried) == s.tried then
        redis.call('PEXPIRE', s.rate_key, 2000)
    end
end
if added ~= 0 and redis.call('INCRBY', KEYS[3], added) < 0 then
    redis.call('SET', KEYS[3], 0)
end
for i = 1, #members, 1000 do
    redis.call('ZADD', KEYS[2], unpack(members, i, math.min(i + 999, #members)))
end
-- Every gateway learns the ids that now have records (gateway/known.h), in
-- one message per call.
if #told > 1 then
    redis.call('PUBLISH', 'fs:st', table.concat(told, ' '))
end
if nops > 0 then
    out[n + 1] = granted
end
return out
