-- The deduction step: one intent applied atomically to one SKU's Redis state.
--
-- KEYS[1] fs:ready         KEYS[2] fs:promo:<sku>   KEYS[3] fs:users:<sku>
-- KEYS[4] fs:holds:<sku>   KEYS[5] fs:req:<request_id>
-- KEYS[6] fs:wm            KEYS[7] fs:fence
-- ARGV[1] kind: purchase | pay | cancel | release
-- ARGV[2] request_id  ARGV[3] sku  ARGV[5] qty
-- ARGV[4] user_id: the buyer of a purchase; the owner of the purchase a
--         pay or cancel acts on (checked); empty for a release
-- ARGV[6] seconds to keep the request record (idempotency horizon)
-- ARGV[7] intents partition  ARGV[8] the intent's offset in it
-- ARGV[9] min_wm: the highest offset of this partition whose event the
--         deductor saw on the ledger (-1: none known)
-- ARGV[10] min_seq: the highest sku_seq of this SKU seen on the ledger (0: none)
-- ARGV[11] accepted_at_ms of a PAY (0: none)  ARGV[12] pay_max_lag_ms
--
-- Returns {'not_ready'} when fs:ready is absent: the state was lost and not
-- yet rebuilt, so nothing may be sold (the caller waits and retries).
-- Returns {'fenced', why} when the partition is fenced: its state in this
-- Redis is older than the ledger says (see "Redis that comes back older"
-- below); nothing was applied, the caller waits for the reconciler's repair.
-- Otherwise
--   {'ok', event_kind, state, reason, user_id, qty, deadline_ms, now_ms,
--    remaining, held, sold, initial, epoch, changed, sku_seq}
-- event_kind: reserved paid cancelled expired refused transition_refused.
-- changed = 0 means nothing moved: a replay (the earlier outcome is returned,
-- so a replayed intent emits the same ledger event) or a refused transition.
--
-- Invariant kept by every branch: remaining + held + sold == initial and
-- remaining >= 0, with users[u] == units u holds or bought.
-- Time is Redis TIME: one clock for every deadline, whatever host runs us.
--
-- Redis that comes back older (a failover to a lagging replica, a restored
-- snapshot): the ledger in Kafka is the truth of what Redis already did. Two
-- independent checks run before anything is applied, and either one fences
-- the partition (fs:fence[partition], which every deductor honours until the
-- reconciler repaired the partition from the ledger):
--   1. fs:wm[partition], written by this same atomic step, is the highest
--      offset of an intent that changed something; it must not be below
--      what the ledger shows (events carry `changed`).
--   2. the SKU's change sequence (fs:promo seq) must not be below the
--      highest sku_seq the ledger shows for it. It lives with the SKU's
--      keys, so it holds per shard once Redis is sharded.

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

local part, off = ARGV[7], tonumber(ARGV[8])
local fence = redis.call('HGET', KEYS[7], part)
if fence then
    return {'fenced', fence}
end

local kind, rid, sku = ARGV[1], ARGV[2], ARGV[3]
local user, qty, ttl = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local p = redis.call('HMGET', KEYS[2], 'initial', 'remaining', 'held', 'sold',
                     'limit', 'start_ms', 'end_ms', 'hold_ms', 'seq')
local initial, remaining, held, sold = tonumber(p[1]), tonumber(p[2]),
                                       tonumber(p[3]), tonumber(p[4])
local seq = tonumber(p[9]) or 0

local wm = tonumber(redis.call('HGET', KEYS[6], part)) or -1
local min_wm, min_seq = tonumber(ARGV[9]), tonumber(ARGV[10])
local behind
if wm < min_wm then
    behind = string.format('reason=watermark partition=%s redis=%d ledger=%d', part, wm, min_wm)
elseif seq < min_seq then
    behind = string.format('reason=sku_seq partition=%s sku=%s redis=%d ledger=%d',
                           part, sku, seq, min_seq)
end
if behind then
    behind = behind .. string.format(' at_ms=%d', now)
    redis.call('HSET', KEYS[7], part, behind)
    return {'fenced', behind}
end

local r = redis.call('HMGET', KEYS[5], 'o', 'st', 'user', 'qty', 'dl', 'sku', 'q0', 'q', 'adm')
local o, st, ruser, rqty, dl = r[1], r[2], r[3], tonumber(r[4]), tonumber(r[5])
local rsku, q0, q = r[6], tonumber(r[7]) or 0, tonumber(r[8]) or 0
local adm = tonumber(r[9])

local function reply(ev, state, reason, u, n, deadline, changed, s)
    return {'ok', ev, state, reason, u or '', n or 0, deadline or 0, now,
            remaining or 0, held or 0, sold or 0, initial or 0,
            tonumber(epoch) or 0, changed, s}
end

-- Every step that changes anything raises the partition's watermark.
local function mark()
    if off > wm then
        redis.call('HSET', KEYS[6], part, off)
        wm = off
    end
end

-- The SKU's next change number (only for a SKU that exists: never create
-- a stray promotion hash).
local function bump()
    mark()
    seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
    return seq
end

-- Tell the gateways (Redis pub/sub, channel fs:chg) when a SKU runs out or
-- has units again, so that every one of them refuses or reopens within
-- milliseconds instead of at its next cache refresh: "sku remaining held
-- earliest_hold_deadline_ms changed_at_ms seq" (changed_at_ms, Redis time,
-- lets each gateway measure how late it learned; seq, the change's number
-- (bump, called first), lets it tell a newer push from an older one read
-- late, gateway/board.h).
local function announce(before)
    if (before > 0) ~= (remaining > 0) then
        local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
        redis.call('PUBLISH', 'fs:chg', string.format('%s %d %d %s %d %d', sku, remaining, held,
                                                      first[2] or '0', now, seq))
    end
end

-- Tell the gateways (channel fs:st, "request_id state") that a purchase
-- moved, so a long poll waiting on it answers now, not at its next look.
local function tell(state)
    redis.call('PUBLISH', 'fs:st', rid .. ' ' .. state)
end

-- Record a purchase outcome the first time it is decided. An admitted
-- purchase (gateway/admit.lua) gives its place in the admission budget back.
local function record(outcome, deadline, s)
    redis.call('HSET', KEYS[5], 'o', outcome, 'st', outcome, 'sku', sku,
               'user', user, 'qty', ARGV[5], 'dl', deadline, 'ts', now,
               'q0', s, 'q', s)
    redis.call('EXPIRE', KEYS[5], ttl)
    tell(outcome)
    if adm then
        redis.call('HDEL', KEYS[5], 'adm')
        redis.call('ZREM', 'fs:adm:all', sku .. ' ' .. rid)
        if initial and redis.call('HINCRBY', KEYS[2], 'adm', -adm) < 0 then
            redis.call('HSET', KEYS[2], 'adm', 0)
        end
        if redis.call('DECRBY', 'fs:adm:total', adm) < 0 then
            redis.call('SET', 'fs:adm:total', 0)
        end
    end
end

-- Return a live hold's units to the stock and end it in `to`.
local function give_back(to)
    local before = remaining
    remaining = redis.call('HINCRBY', KEYS[2], 'remaining', rqty)
    held = redis.call('HINCRBY', KEYS[2], 'held', -rqty)
    if redis.call('HINCRBY', KEYS[3], ruser, -rqty) <= 0 then
        redis.call('HDEL', KEYS[3], ruser)
    end
    redis.call('ZREM', KEYS[4], rid)
    bump()
    announce(before)
    redis.call('HSET', KEYS[5], 'st', to, 'ts', now, 'q', seq)
    tell(to)
    return seq
end

if kind == 'purchase' then
    if o and rsku and rsku ~= sku then
        -- The request id was used for another SKU first. Replaying that
        -- outcome here would put a copy of its event (same event_id) on
        -- this SKU's stream, racing the real one into PostgreSQL.
        return reply('transition_refused', 'unknown', 'request_id_reused', user, 0, 0, 0, 0)
    end
    if o then
        -- Replay: the earlier outcome, never a second deduction.
        if o == 'reserved' then
            return reply('reserved', 'reserved', '', ruser, rqty, dl, 0, q0)
        end
        return reply('refused', o, o, ruser, rqty, 0, 0, q0)
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
        local s = 0
        if initial then
            s = bump()
        else
            mark()
        end
        record(refusal, 0, s)
        return reply('refused', refusal, refusal, user, qty, 0, 1, s)
    end
    local deadline = now + tonumber(p[8])
    local before = remaining
    remaining = redis.call('HINCRBY', KEYS[2], 'remaining', -qty)
    held = redis.call('HINCRBY', KEYS[2], 'held', qty)
    redis.call('HINCRBY', KEYS[3], user, qty)
    redis.call('ZADD', KEYS[4], deadline, rid)
    record('reserved', deadline, bump())
    announce(before)
    return reply('reserved', 'reserved', '', user, qty, deadline, 1, seq)
end

-- pay / cancel / release act on an existing purchase.
if o and rsku and rsku ~= sku then
    -- The purchase belongs to another SKU: acting on it here would move
    -- this SKU's counters for units held on the other one.
    return reply('transition_refused', 'unknown', 'unknown_request', user, 0, 0, 0, 0)
end
if o ~= 'reserved' then
    local why = o and 'not_reserved' or 'unknown_request'
    return reply('transition_refused', st or 'unknown', why, ruser or user, rqty, 0, 0, q)
end
if kind ~= 'release' and user ~= ruser then
    -- Only the buyer pays or cancels: an intent that names another user
    -- (forged straight onto the topic) is answered like an unknown request,
    -- which tells nothing about whose purchase it is.
    return reply('transition_refused', 'unknown', 'unknown_request', user, 0, 0, 0, 0)
end

if kind == 'pay' then
    -- Timeliness is judged when the gateway accepted the payment, bounded
    -- to [now - max lag, now]: a backlog or a paused deductor does not turn
    -- a payment made in time into an expiry, and a forged old stamp cannot
    -- reach further back than the lag.
    local at = tonumber(ARGV[11]) or 0
    local floor = now - (tonumber(ARGV[12]) or 0)
    if at <= 0 or at > now then
        at = now
    elseif at < floor then
        at = floor
    end
    if st == 'paid' then
        return reply('paid', 'paid', '', ruser, rqty, dl, 0, q)
    elseif st == 'reserved' and at <= dl then
        held = redis.call('HINCRBY', KEYS[2], 'held', -rqty)
        sold = redis.call('HINCRBY', KEYS[2], 'sold', rqty)
        redis.call('ZREM', KEYS[4], rid)
        redis.call('HSET', KEYS[5], 'st', 'paid', 'ts', now, 'q', bump())
        tell('paid')
        return reply('paid', 'paid', '', ruser, rqty, dl, 1, seq)
    elseif st == 'reserved' then
        -- Paid too late: the hold is over; end it now rather than wait
        -- for the reconciler, so the answer and the stock agree at once.
        return reply('expired', 'expired', '', ruser, rqty, dl, 1, give_back('expired'))
    elseif st == 'expired' then
        -- Replay of the terminal event, whichever intent ended the hold (a
        -- late pay or a release): if that event never reached the ledger
        -- (crash, redo), this emits it; otherwise it is a duplicate.
        return reply('expired', 'expired', '', ruser, rqty, dl, 0, q)
    end
    return reply('transition_refused', st, 'not_reserved', ruser, rqty, dl, 0, q)
elseif kind == 'cancel' then
    if st == 'cancelled' then
        return reply('cancelled', 'cancelled', '', ruser, rqty, dl, 0, q)
    elseif st == 'reserved' then
        return reply('cancelled', 'cancelled', '', ruser, rqty, dl, 1, give_back('cancelled'))
    end
    return reply('transition_refused', st, 'not_reserved', ruser, rqty, dl, 0, q)
elseif kind == 'release' then
    if st == 'expired' then
        return reply('expired', 'expired', '', ruser, rqty, dl, 0, q)
    elseif st == 'reserved' and now >= dl then
        return reply('expired', 'expired', '', ruser, rqty, dl, 1, give_back('expired'))
    elseif st == 'reserved' then
        return reply('transition_refused', st, 'not_due', ruser, rqty, dl, 0, q)
    end
    return reply('transition_refused', st, 'not_reserved', ruser, rqty, dl, 0, q)
end
return redis.error_reply('deduct.lua: unknown kind ' .. tostring(kind))
