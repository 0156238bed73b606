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

-- name: active_key
SELECT id, merchant_id, key_type, secret_enc, public_key_pem
  FROM merchant_keys WHERE id = $1 AND status = 'active';

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
