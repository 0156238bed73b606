-- Merchants get a status (API.md §1.4: only an active merchant may POST) and their own request
-- budgets (API.md §1.7: per-second rates overriding the settings' defaults); the nonce cache
-- gets a history of its generations (gateway/auth/admission.py), so that requests are refused
-- only when a nonce cache that held entries was lost (API.md §1.1).

ALTER TABLE merchants
    ADD COLUMN status text NOT NULL DEFAULT 'active',
    ADD COLUMN rate_limits jsonb NOT NULL DEFAULT '{}';

-- Named and written as in 0006 (one CHECK per status column, the values of MerchantStatus).
ALTER TABLE merchants
    ADD CONSTRAINT merchants_status_check
        CHECK (status IN ('active', 'pending_review', 'rejected', 'suspended'));

-- An object of at most these three members, each a positive number (requests per second).
ALTER TABLE merchants
    ADD CONSTRAINT merchants_rate_limits_check
        CHECK (jsonb_typeof(rate_limits) = 'object'
               AND rate_limits - '{payments_per_s,refunds_per_s,other_per_s}'::text[] = '{}'
               AND NOT jsonb_path_exists(rate_limits, '$.* ? (@.type() != "number" || @ <= 0)'));

-- One row per life of the nonce cache: a Redis server's run (`run_id`) and replication history
-- (`master_replid`) under this gateway's key prefix. `refuse_before`: requests signed before
-- it (unix seconds) are refused with 503, because a generation that had recorded nonces was
-- lost when this one began; NULL when nothing was lost. `nonces_recorded` is set before the
-- first nonce is recorded in the generation.
CREATE TABLE nonce_cache_generations (
    id               text PRIMARY KEY,
    redis_run_id     text NOT NULL,
    redis_replid     text NOT NULL,
    opened_at        timestamptz NOT NULL DEFAULT now(),
    refuse_before    bigint,
    nonces_recorded  boolean NOT NULL DEFAULT false
);
CREATE INDEX nonce_cache_generations_opened ON nonce_cache_generations (opened_at);
