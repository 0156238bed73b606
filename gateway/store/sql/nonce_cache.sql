-- The nonce cache's generations (gateway/auth/admission.py, migration 0008).

-- name: lock_nonce_generations
-- Generations are opened one at a time across every gateway process (until the transaction
-- ends): two processes that find the cache changed open one generation, not two.
SELECT pg_advisory_xact_lock($1);

-- name: latest_nonce_generation
SELECT * FROM nonce_cache_generations ORDER BY opened_at DESC, id DESC LIMIT 1;

-- name: insert_nonce_generation
INSERT INTO nonce_cache_generations (id, redis_run_id, redis_replid, refuse_before)
VALUES ($1, $2, $3, $4)
RETURNING *;

-- name: mark_nonce_generation_recorded
-- Generation $1 holds nonces (or is about to). A generation the table lacks (the database
-- restored from an older backup while Redis kept running) is written again, from what the
-- cache says of it ($2 run id, $3 replication id, $4 refuse_before).
INSERT INTO nonce_cache_generations (id, redis_run_id, redis_replid, refuse_before,
                                     nonces_recorded)
VALUES ($1, $2, $3, $4, true)
ON CONFLICT (id) DO UPDATE SET nonces_recorded = true;
