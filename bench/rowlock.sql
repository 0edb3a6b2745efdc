-- The traditional design bench/run measures the pipeline against: every
-- purchase is one transaction that locks the SKU's stock row, decrements it
-- and inserts the order (pgbench -f, 32 clients on one hot SKU). The tables
-- are created by bench/run in its own database, never in flashsale's.
\set uid random(1, 1000000000000000)
BEGIN;
UPDATE stock SET n = n - 1 WHERE sku = 'hot' AND n >= 1;
INSERT INTO orders (request_id, sku, user_id, qty)
  VALUES ('pgb-' || :client_id || '-' || :uid, 'hot', 'u' || :uid, 1);
COMMIT;
