-- flashsale durable state. Applied at start-up by the order-writer and by
-- `reconciler` (idempotent). The constraints make impossible states
-- impossible: the writers may be wrong, the table may not.

CREATE TABLE IF NOT EXISTS promotions (
    sku            text PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9._:-]{1,64}$'),
    stock          integer NOT NULL CHECK (stock >= 0),
    per_user_limit integer NOT NULL CHECK (per_user_limit >= 1),
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz NOT NULL,
    hold_seconds   integer NOT NULL CHECK (hold_seconds >= 1),
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);

-- A promotion's funnel limits (POST /admin/promotions/{sku}/limits; 0 = the
-- gateway's default): admission k in percent, and rates per client
-- address, per user, and per SKU across every gateway.
ALTER TABLE promotions ADD COLUMN IF NOT EXISTS k_pct integer NOT NULL DEFAULT 0
    CHECK (k_pct = 0 OR k_pct BETWEEN 100 AND 100000);
ALTER TABLE promotions ADD COLUMN IF NOT EXISTS ip_rate_per_s integer NOT NULL DEFAULT 0
    CHECK (ip_rate_per_s BETWEEN 0 AND 1000000);
ALTER TABLE promotions ADD COLUMN IF NOT EXISTS user_rate_per_s integer NOT NULL DEFAULT 0
    CHECK (user_rate_per_s BETWEEN 0 AND 1000000);
ALTER TABLE promotions ADD COLUMN IF NOT EXISTS sku_rate_per_s integer NOT NULL DEFAULT 0
    CHECK (sku_rate_per_s BETWEEN 0 AND 1000000);

-- One row per accepted purchase (a purchase that got units). State moves
-- only forward: held -> paid | cancelled | expired.
CREATE TABLE IF NOT EXISTS orders (
    request_id  text PRIMARY KEY CHECK (request_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    sku         text NOT NULL REFERENCES promotions (sku),
    user_id     text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 64),
    qty         integer NOT NULL CHECK (qty >= 1),
    state       text NOT NULL CHECK (state IN ('held', 'paid', 'cancelled', 'expired')),
    deadline    timestamptz NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_sku_state ON orders (sku, state);

-- One row per refused purchase (nothing deducted), for counting and support.
CREATE TABLE IF NOT EXISTS refusals (
    request_id  text PRIMARY KEY,
    sku         text NOT NULL,
    user_id     text NOT NULL,
    qty         integer NOT NULL CHECK (qty >= 0),
    reason      text NOT NULL CHECK (reason IN ('sold_out', 'limit_reached', 'not_started',
                                                'ended', 'unknown_sku', 'qty_invalid')),
    at          timestamptz NOT NULL
);

-- Every ledger event applied, once (event_id is deterministic, replays
-- collapse). The audit trail and the base that `reconciler rebuild` folds.
CREATE TABLE IF NOT EXISTS ledger_events (
    event_id     text PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('reserved', 'paid', 'cancelled', 'expired',
                                               'refused', 'transition_refused')),
    request_id   text NOT NULL,
    sku          text NOT NULL,
    user_id      text NOT NULL,
    qty          integer NOT NULL CHECK (qty >= 0),
    state        text NOT NULL,
    reason       text NOT NULL,
    deadline_ms  bigint NOT NULL,
    at_ms        bigint NOT NULL,
    remaining    bigint NOT NULL CHECK (remaining >= 0),
    held         bigint NOT NULL CHECK (held >= 0),
    sold         bigint NOT NULL CHECK (sold >= 0),
    ledger_partition integer NOT NULL,
    ledger_offset    bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_events_request ON ledger_events (request_id);
-- Where the intent that made the event sat (-1 for events no intent made,
-- such as an oversell correction), and the SKU's change number after it:
-- a repair restores Redis' watermarks and sequences from them.
ALTER TABLE ledger_events ADD COLUMN IF NOT EXISTS intent_partition integer NOT NULL DEFAULT -1;
ALTER TABLE ledger_events ADD COLUMN IF NOT EXISTS intent_offset bigint NOT NULL DEFAULT -1;
ALTER TABLE ledger_events ADD COLUMN IF NOT EXISTS sku_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE ledger_events ADD COLUMN IF NOT EXISTS changed boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS ledger_events_partition ON ledger_events (ledger_partition, ledger_offset);

-- Next ledger offset to read per partition, committed in the same transaction
-- as the rows it covers: PostgreSQL holds exactly the ledger prefix below it.
CREATE TABLE IF NOT EXISTS ledger_offsets (
    ledger_partition integer PRIMARY KEY CHECK (ledger_partition >= 0),
    next_offset      bigint NOT NULL CHECK (next_offset >= 0)
);

-- Which schema text this database holds (hash computed by common/pg.c), so
-- daemons starting against an up-to-date database run no DDL at all.
CREATE TABLE IF NOT EXISTS flashsale_schema (
    hash        text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
