-- Every column sealed under the master key (gateway/auth/secretbox.py), for its rotation
-- (gateway/store/sealed.py lists them). Each is read as (row_id, context, sealed): `context` is
-- what the secret is bound to when sealed.

-- name: lock_sealed_tables
-- Held until the rotation commits: no secret is written meanwhile (under the old key, by a
-- gateway still running with it), while reads, and so requests, go on.
LOCK TABLE merchants, merchant_keys IN EXCLUSIVE MODE;

-- name: sealed_merchants_webhook_secret_enc
-- A merchant's webhook secret, bound to the merchant's id.
SELECT id AS row_id, id AS context, webhook_secret_enc AS sealed
  FROM merchants ORDER BY id;

-- name: reseal_merchants_webhook_secret_enc
UPDATE merchants AS m SET webhook_secret_enc = v.sealed
  FROM unnest($1::text[], $2::bytea[]) AS v(id, sealed)
 WHERE m.id = v.id;

-- name: sealed_merchants_webhook_secret_prev_enc
-- The previous webhook secret of a rotation's grace period (expired ones too: all are sealed).
SELECT id AS row_id, id AS context, webhook_secret_prev_enc AS sealed
  FROM merchants WHERE webhook_secret_prev_enc IS NOT NULL ORDER BY id;

-- name: reseal_merchants_webhook_secret_prev_enc
UPDATE merchants AS m SET webhook_secret_prev_enc = v.sealed
  FROM unnest($1::text[], $2::bytea[]) AS v(id, sealed)
 WHERE m.id = v.id;

-- name: sealed_merchant_keys_secret_enc
-- An HMAC key's secret, bound to the key's id (revoked keys too).
SELECT id AS row_id, id AS context, secret_enc AS sealed
  FROM merchant_keys WHERE secret_enc IS NOT NULL ORDER BY id;

-- name: reseal_merchant_keys_secret_enc
UPDATE merchant_keys AS k SET secret_enc = v.sealed
  FROM unnest($1::text[], $2::bytea[]) AS v(id, sealed)
 WHERE k.id = v.id;
