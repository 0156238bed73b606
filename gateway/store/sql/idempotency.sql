-- Idempotency-Key records (API.md §1.3).

-- name: claim_idempotency_key
-- Claim key $2 of merchant $1 for a request (in flight, leased for $6 seconds, kept $7
-- seconds). An existing record is taken over only when it expired, or when it is in flight
-- with a lease run out (its request died) for the same request. Returns true when claimed.
INSERT INTO idempotency_keys
    (merchant_id, key, method, path, request_hash, state, expires_at, locked_until)
VALUES ($1, $2, $3, $4, $5, 'in_flight', now() + make_interval(secs => $7),
        now() + make_interval(secs => $6))
ON CONFLICT (merchant_id, key) DO UPDATE
   SET method = EXCLUDED.method, path = EXCLUDED.path,
       request_hash = EXCLUDED.request_hash, state = 'in_flight',
       response_status = NULL, response_body = NULL, created_at = now(),
       expires_at = EXCLUDED.expires_at, locked_until = EXCLUDED.locked_until
 WHERE idempotency_keys.expires_at < now()
    OR (idempotency_keys.state = 'in_flight'
        AND idempotency_keys.locked_until < now()
        AND idempotency_keys.request_hash = EXCLUDED.request_hash)
RETURNING true;

-- name: get_idempotency_record
SELECT method, path, request_hash, state, response_status, response_body
  FROM idempotency_keys WHERE merchant_id = $1 AND key = $2;

-- name: complete_idempotency_key
UPDATE idempotency_keys SET state = 'done', response_status = $3, response_body = $4,
       locked_until = NULL
 WHERE merchant_id = $1 AND key = $2;

-- name: renew_idempotency_lease
UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => $3)
 WHERE merchant_id = $1 AND key = $2 AND state = 'in_flight';

-- name: release_idempotency_key
DELETE FROM idempotency_keys WHERE merchant_id = $1 AND key = $2 AND state = 'in_flight';

-- name: purge_expired_idempotency_keys
DELETE FROM idempotency_keys WHERE ctid IN (
    SELECT ctid FROM idempotency_keys WHERE expires_at < now() LIMIT $1);
