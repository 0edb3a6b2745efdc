-- The deduction step: one intent applied atomically to one SKU's Redis state.
--
-- KEYS[1] fs:ready         KEYS[2] fs:promo:<sku>   KEYS[3] fs:users:<sku>
-- KEYS[4] fs:holds:<sku>   KEYS[5] fs:req:<request_id>
-- ARGV[1] kind: purchase | pay | cancel | release
-- ARGV[2] request_id  ARGV[3] sku  ARGV[4] user_id  ARGV[5] qty
-- ARGV[6] seconds to keep the request record (idempotency horizon)
--
-- Returns {'not_ready'} when fs:ready is absent: the state was lost and not
-- yet rebuilt, so nothing may be sold (the caller waits and retries).
-- Otherwise
--   {'ok', event_kind, state, reason, user_id, qty, deadline_ms, now_ms,
--    remaining, held, sold, initial, epoch, changed}
-- event_kind: reserved paid cancelled expired refused transition_refused.
-- changed = 0 means nothing moved: a replay (the earlier outcome is returned,
-- so a replayed intent emits the same ledger event) or a refused transition.
--
-- Invariant kept by every branch: remaining + held + sold == initial and
-- remaining >= 0, with users[u] == units u holds or bought.
-- Time is Redis TIME: one clock for every deadline, whatever host runs us.

local kinds = {purchase = true, pay = true, cancel = true, release = true}
if not kinds[ARGV[1]] then
    -- Checked first: an unknown kind would otherwise fall through to the
    -- pay/cancel/release branch and be answered like an unknown request.
    return redis.error_reply('deduct.lua: unknown kind ' .. tostring(ARGV[1]))
end

local epoch = redis.call('GET', KEYS[1])
if not epoch then
    return {'not_ready'}
end

local kind, rid, sku = ARGV[1], ARGV[2], ARGV[3]
local user, qty, ttl = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local p = redis.call('HMGET', KEYS[2], 'initial', 'remaining', 'held', 'sold',
                     'limit', 'start_ms', 'end_ms', 'hold_ms')
local initial, remaining, held, sold = tonumber(p[1]), tonumber(p[2]),
                                       tonumber(p[3]), tonumber(p[4])
local r = redis.call('HMGET', KEYS[5], 'o', 'st', 'user', 'qty', 'dl', 'sku')
local o, st, ruser, rqty, dl = r[1], r[2], r[3], tonumber(r[4]), tonumber(r[5])
local rsku = r[6]

local function reply(ev, state, reason, u, q, deadline, changed)
    return {'ok', ev, state, reason, u or '', q or 0, deadline or 0, now,
            remaining or 0, held or 0, sold or 0, initial or 0,
            tonumber(epoch) or 0, changed}
end

-- Record a purchase outcome the first time it is decided.
local function record(outcome, deadline)
    redis.call('HSET', KEYS[5], 'o', outcome, 'st', outcome, 'sku', sku,
               'user', user, 'qty', ARGV[5], 'dl', deadline, 'ts', now)
    redis.call('EXPIRE', KEYS[5], ttl)
end

-- Return a live hold's units to the stock and end it in `to`.
local function give_back(to)
    remaining = redis.call('HINCRBY', KEYS[2], 'remaining', rqty)
    held = redis.call('HINCRBY', KEYS[2], 'held', -rqty)
    if redis.call('HINCRBY', KEYS[3], ruser, -rqty) <= 0 then
        redis.call('HDEL', KEYS[3], ruser)
    end
    redis.call('ZREM', KEYS[4], rid)
    redis.call('HSET', KEYS[5], 'st', to, 'ts', now)
end

if kind == 'purchase' then
    if o and rsku and rsku ~= sku then
        -- The request id was used for another SKU first. Replaying that
        -- outcome here would put a copy of its event (same event_id) on
        -- this SKU's stream, racing the real one into PostgreSQL.
        return reply('transition_refused', 'unknown', 'request_id_reused', user, 0, 0, 0)
    end
    if o then
        -- Replay: the earlier outcome, never a second deduction.
        if o == 'reserved' then
            return reply('reserved', 'reserved', '', ruser, rqty, dl, 0)
        end
        return reply('refused', o, o, ruser, rqty, 0, 0)
    end
    local refusal
    if not initial then
        refusal = 'unknown_sku'
    elseif not qty or qty < 1 or qty ~= math.floor(qty) then
        refusal = 'qty_invalid'
    elseif now < tonumber(p[6]) then
        refusal = 'not_started'
    elseif now >= tonumber(p[7]) then
        refusal = 'ended'
    elseif (tonumber(redis.call('HGET', KEYS[3], user)) or 0) + qty > tonumber(p[5]) then
        refusal = 'limit_reached'
    elseif remaining < qty then
        refusal = 'sold_out'
    end
    if refusal then
        record(refusal, 0)
        return reply('refused', refusal, refusal, user, qty, 0, 1)
    end
    local deadline = now + tonumber(p[8])
    remaining = redis.call('HINCRBY', KEYS[2], 'remaining', -qty)
    held = redis.call('HINCRBY', KEYS[2], 'held', qty)
    redis.call('HINCRBY', KEYS[3], user, qty)
    redis.call('ZADD', KEYS[4], deadline, rid)
    record('reserved', deadline)
    return reply('reserved', 'reserved', '', user, qty, deadline, 1)
end

-- pay / cancel / release act on an existing purchase.
if o and rsku and rsku ~= sku then
    -- The purchase belongs to another SKU: acting on it here would move
    -- this SKU's counters for units held on the other one.
    return reply('transition_refused', 'unknown', 'unknown_request', user, 0, 0, 0)
end
if o ~= 'reserved' then
    local why = o and 'not_reserved' or 'unknown_request'
    return reply('transition_refused', st or 'unknown', why, ruser or user, rqty, 0, 0)
end

if kind == 'pay' then
    if st == 'paid' then
        return reply('paid', 'paid', '', ruser, rqty, dl, 0)
    elseif st == 'reserved' and now <= dl then
        held = redis.call('HINCRBY', KEYS[2], 'held', -rqty)
        sold = redis.call('HINCRBY', KEYS[2], 'sold', rqty)
        redis.call('ZREM', KEYS[4], rid)
        redis.call('HSET', KEYS[5], 'st', 'paid', 'ts', now)
        return reply('paid', 'paid', '', ruser, rqty, dl, 1)
    elseif st == 'reserved' then
        -- Paid too late: the hold is over; end it now rather than wait
        -- for the reconciler, so the answer and the stock agree at once.
        give_back('expired')
        return reply('expired', 'expired', '', ruser, rqty, dl, 1)
    elseif st == 'expired' then
        -- Replay of the terminal event, whichever intent ended the hold (a
        -- late pay or a release): if that event never reached the ledger
        -- (crash, redo), this emits it; otherwise it is a duplicate.
        return reply('expired', 'expired', '', ruser, rqty, dl, 0)
    end
    return reply('transition_refused', st, 'not_reserved', ruser, rqty, dl, 0)
elseif kind == 'cancel' then
    if st == 'cancelled' then
        return reply('cancelled', 'cancelled', '', ruser, rqty, dl, 0)
    elseif st == 'reserved' then
        give_back('cancelled')
        return reply('cancelled', 'cancelled', '', ruser, rqty, dl, 1)
    end
    return reply('transition_refused', st, 'not_reserved', ruser, rqty, dl, 0)
elseif kind == 'release' then
    if st == 'expired' then
        return reply('expired', 'expired', '', ruser, rqty, dl, 0)
    elseif st == 'reserved' and now >= dl then
        give_back('expired')
        return reply('expired', 'expired', '', ruser, rqty, dl, 1)
    elseif st == 'reserved' then
        return reply('transition_refused', st, 'not_due', ruser, rqty, dl, 0)
    end
    return reply('transition_refused', st, 'not_reserved', ruser, rqty, dl, 0)
end
return redis.error_reply('deduct.lua: unknown kind ' .. tostring(kind))
