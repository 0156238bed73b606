-- migrate: no-transaction
-- The operators' lists across merchants (`GET /admin/payments`, `GET /admin/deliveries`), newest
-- first: built CONCURRENTLY, so that payments and deliveries keep being written meanwhile.
DROP INDEX CONCURRENTLY IF EXISTS payments_created;
CREATE INDEX CONCURRENTLY payments_created ON payments (created_at DESC, id DESC);
DROP INDEX CONCURRENTLY IF EXISTS payments_merchant_created;
CREATE INDEX CONCURRENTLY payments_merchant_created
    ON payments (merchant_id, created_at DESC, id DESC);
DROP INDEX CONCURRENTLY IF EXISTS callback_deliveries_created;
CREATE INDEX CONCURRENTLY callback_deliveries_created
    ON callback_deliveries (created_at DESC, id DESC);
