-- Merchants, their signing keys and their webhook secrets.

-- name: insert_merchant
INSERT INTO merchants (id, name, webhook_secret_enc) VALUES ($1, $2, $3);

-- name: lock_merchant
-- The merchant's row lock: changes to its keys and webhook endpoints are made under it.
SELECT * FROM merchants WHERE id = $1 FOR UPDATE;

-- name: insert_key
INSERT INTO merchant_keys (id, merchant_id, key_type, secret_enc, public_key_pem)
VALUES ($1, $2, $3, $4, $5);

-- name: count_active_keys
SELECT count(*) FROM merchant_keys WHERE merchant_id = $1 AND status = 'active';

-- name: revoke_key
UPDATE merchant_keys SET status = 'revoked', revoked_at = now()
 WHERE id = $1 AND status = 'active';

-- name: rotate_webhook_secret
-- A new sealed secret $2; the current one stays valid as the previous secret for $3 seconds
-- (none when 0). No row when there is no such merchant.
UPDATE merchants
   SET webhook_secret_prev_enc = CASE WHEN $3 > 0 THEN webhook_secret_enc END,
       webhook_secret_prev_expires_at =
           CASE WHEN $3 > 0 THEN now() + make_interval(secs => $3) END,
       webhook_secret_enc = $2
 WHERE id = $1
RETURNING webhook_secret_prev_expires_at;

-- name: key_access
-- An active key $1 with what its merchant's requests are admitted with (status, budgets).
SELECT k.id, k.merchant_id, k.key_type, k.secret_enc, k.public_key_pem,
       m.status AS merchant_status, m.rate_limits
  FROM merchant_keys k JOIN merchants m ON m.id = k.merchant_id
 WHERE k.id = $1 AND k.status = 'active';

-- name: merchant_access
-- What merchant $1's requests are admitted with (status, budgets).
SELECT id AS merchant_id, status AS merchant_status, rate_limits FROM merchants WHERE id = $1;

-- name: set_merchant_status
-- Merchant $1's status becomes $2, under its row lock; returns the status it had (no row when
-- there is no such merchant).
UPDATE merchants m SET status = $2
  FROM (SELECT id, status FROM merchants WHERE id = $1 FOR UPDATE) old
 WHERE m.id = old.id
RETURNING old.status;

-- name: set_rate_limits
-- Merchant $1's budget overrides become $2 (a jsonb object); no row when there is no such
-- merchant.
UPDATE merchants SET rate_limits = $2 WHERE id = $1 RETURNING rate_limits;
