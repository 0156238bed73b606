-- Webhook endpoints, the delivery log, the dispatcher's claim and finish statements, and the
-- merchants' webhook secrets.

-- name: insert_endpoint
INSERT INTO webhook_endpoints (id, merchant_id, url, events) VALUES ($1, $2, $3, $4)
RETURNING *;

-- name: list_endpoints
SELECT * FROM webhook_endpoints WHERE merchant_id = $1 AND status <> 'deleted'
 ORDER BY created_at, id;

-- name: count_endpoints
SELECT count(*) FROM webhook_endpoints WHERE merchant_id = $1 AND status <> 'deleted';

-- name: delete_endpoint
UPDATE webhook_endpoints SET status = 'deleted', updated_at = now()
 WHERE id = $1 AND merchant_id = $2 AND status <> 'deleted'
RETURNING *;

-- name: disable_endpoint
-- Endpoint $1 answered 410 Gone: disable it (reason $2) and fail its pending deliveries with
-- error $3. Returns how many were failed; idempotent.
WITH disabled AS (
    UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = $2,
           updated_at = now()
     WHERE id = $1 AND status = 'active'
), dropped AS (
    UPDATE callback_deliveries SET status = 'failed', last_error = $3, updated_at = now()
     WHERE endpoint_id = $1 AND status = 'pending'
    RETURNING 1
)
SELECT count(*) FROM dropped;

-- name: list_deliveries
-- Merchant $1's deliveries, newest first, each with its event's type and its attempts. Status
-- $2 `pending` includes the ones being attempted now; $3 an event id; $4 how many; $5 the last
-- delivery id of the previous page.
SELECT d.*, e.type AS event_type,
       COALESCE((SELECT jsonb_agg(jsonb_build_object(
                    'attempted_at', a.attempted_at, 'status_code', a.status_code,
                    'latency_ms', a.latency_ms, 'error', a.error,
                    'response_body', a.response_body) ORDER BY a.id)
                   FROM callback_attempts a WHERE a.delivery_id = d.id), '[]'::jsonb)
       AS attempt_log
  FROM callback_deliveries d JOIN events e ON e.id = d.event_id
 WHERE d.merchant_id = $1
   AND ($2::text IS NULL OR d.status = $2
        OR ($2 = 'pending' AND d.status = 'delivering'))
   AND ($3::text IS NULL OR d.event_id = $3)
   AND ($5::text IS NULL OR (d.created_at, d.id) < (
            SELECT c.created_at, c.id FROM callback_deliveries c
             WHERE c.id = $5 AND c.merchant_id = $1))
 ORDER BY d.created_at DESC, d.id DESC
 LIMIT $4;

-- name: delivery_status
SELECT status FROM callback_deliveries WHERE id = $1 AND merchant_id = $2;

-- name: queue_failed_delivery
-- failed -> pending, due now (the merchant's retry). No row when it is no longer failed.
UPDATE callback_deliveries SET status = 'pending', next_attempt_at = now(), updated_at = now()
 WHERE id = $1 AND status = 'failed'
RETURNING id, event_id;

-- name: claim_due_deliveries
-- Lease up to $1 due deliveries: pending ones whose time has come, and attempts whose lease ran
-- out (their process died), with FOR UPDATE SKIP LOCKED so that dispatchers never take the same
-- row. Merchants $2 and hosts $3 are full (not even looked at); $4/$5 and $6/$7 are what this
-- dispatcher holds per merchant and per host, and none ends up with more than $8 (merchant) or
-- $9 (host). A delivery's host is the first group of pattern $12 in its lower-cased URL. Lease:
-- $10 seconds. An abandoned attempt found here is recorded with error $11. Each row comes with
-- its host, its event's body and request id, and the merchant's sealed webhook secrets (the
-- previous one only while its grace lasts).
WITH expired AS (
    SELECT d.id, d.merchant_id, h.host, d.next_attempt_at, d.locked_until
      FROM callback_deliveries d,
           LATERAL (SELECT COALESCE(substring(lower(d.url) FROM $12), '') AS host) h
     WHERE d.status = 'delivering' AND d.locked_until < now()
       AND d.merchant_id <> ALL ($2::text[]) AND h.host <> ALL ($3::text[])
     ORDER BY d.locked_until
     LIMIT $1
     FOR UPDATE OF d SKIP LOCKED
), due AS (
    SELECT d.id, d.merchant_id, h.host, d.next_attempt_at, NULL::timestamptz AS locked_until
      FROM callback_deliveries d,
           LATERAL (SELECT COALESCE(substring(lower(d.url) FROM $12), '') AS host) h
     WHERE d.status = 'pending' AND d.next_attempt_at <= now()
       AND d.merchant_id <> ALL ($2::text[]) AND h.host <> ALL ($3::text[])
     ORDER BY d.next_attempt_at
     LIMIT $1
     FOR UPDATE OF d SKIP LOCKED
), candidates AS (
    SELECT c.*,
           row_number() OVER (PARTITION BY c.merchant_id ORDER BY c.next_attempt_at, c.id)
               AS merchant_rank,
           row_number() OVER (PARTITION BY c.host ORDER BY c.next_attempt_at, c.id) AS host_rank
      FROM (SELECT * FROM expired UNION ALL SELECT * FROM due) c
), picked AS (
    SELECT c.id, c.host, c.locked_until AS lost_lease
      FROM candidates c
      LEFT JOIN unnest($4::text[], $5::int[]) AS by_merchant(merchant_id, n)
             ON by_merchant.merchant_id = c.merchant_id
      LEFT JOIN unnest($6::text[], $7::int[]) AS by_host(host, n) ON by_host.host = c.host
     WHERE c.merchant_rank <= $8 - COALESCE(by_merchant.n, 0)
       AND c.host_rank <= $9 - COALESCE(by_host.n, 0)
     ORDER BY c.next_attempt_at
     LIMIT $1
), lost AS (
    INSERT INTO callback_attempts (delivery_id, attempted_at, error)
    SELECT id, lost_lease - make_interval(secs => $10), $11 FROM picked
     WHERE lost_lease IS NOT NULL
), claimed AS (
    UPDATE callback_deliveries d
       SET status = 'delivering', locked_until = now() + make_interval(secs => $10),
           attempts = d.attempts + 1, updated_at = now()
      FROM picked
     WHERE d.id = picked.id
    RETURNING d.id, d.event_id, d.merchant_id, d.endpoint_id, d.url, picked.host, d.attempts
)
SELECT c.*, e.payload::text AS body, e.request_id, w.status AS endpoint_status,
       m.webhook_secret_enc AS secret_enc,
       CASE WHEN m.webhook_secret_prev_expires_at > now() THEN m.webhook_secret_prev_enc END
           AS previous_secret_enc
  FROM claimed c
  JOIN events e ON e.id = c.event_id
  JOIN merchants m ON m.id = c.merchant_id
  LEFT JOIN webhook_endpoints w ON w.id = c.endpoint_id;

-- name: put_back_deliveries
-- Deliveries $1 (claimed as attempt $2) found no free slot: pending again, due in $3 seconds,
-- as if never claimed (the claim's attempt is taken back, nothing is recorded). Only while the
-- lease is still theirs. Returns the ids put back.
UPDATE callback_deliveries d
   SET status = 'pending', attempts = d.attempts - 1, locked_until = NULL,
       next_attempt_at = now() + make_interval(secs => b.delay_s), updated_at = now()
  FROM unnest($1::text[], $2::int[], $3::float8[]) AS b(id, attempt_no, delay_s)
 WHERE d.id = b.id AND d.status = 'delivering' AND d.attempts = b.attempt_no
RETURNING d.id;

-- name: finish_callback_attempts
-- Record attempts and move their deliveries on, in one statement. A delivery changes only if
-- its dispatcher still holds the lease (a later claim raised `attempts` past the fence); the
-- attempt is recorded either way. Returns the deliveries that changed.
WITH f AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::timestamptz[], $5::int[],
                         $6::text[], $7::timestamptz[], $8::int[], $9::text[])
        AS f(id, attempt_no, status, next_at, status_code, error, attempted_at, latency_ms, body)
), finished AS (
    UPDATE callback_deliveries d
       SET status = f.status, next_attempt_at = COALESCE(f.next_at, d.next_attempt_at),
           locked_until = NULL, last_status_code = f.status_code, last_error = f.error,
           updated_at = now(),
           delivered_at = CASE WHEN f.status = 'succeeded' THEN now() ELSE d.delivered_at END
      FROM f
     WHERE d.id = f.id AND d.status = 'delivering' AND d.attempts = f.attempt_no
    RETURNING d.id
), recorded AS (
    INSERT INTO callback_attempts
        (delivery_id, attempted_at, status_code, latency_ms, response_body, error)
    SELECT id, attempted_at, status_code, latency_ms, body, error FROM f
)
SELECT id FROM finished;

-- name: due_delivery_stats
-- Deliveries due now (leases run out included), and the age in seconds of the oldest of them.
SELECT count(*) AS n, extract(epoch FROM now() - min(next_attempt_at))::float8 AS age
  FROM callback_deliveries
 WHERE (status = 'pending' AND next_attempt_at <= now())
    OR (status = 'delivering' AND locked_until < now());
