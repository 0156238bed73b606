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
-- row. URLs $2 are saturated (not even looked at); $3/$4 is what this dispatcher holds per URL,
-- and no URL ends up with more than $5. Lease: $6 seconds. An abandoned attempt found here is
-- recorded with error $7. Each row comes with its event's body and request id, and the
-- merchant's sealed webhook secrets (the previous one only while its grace lasts).
WITH expired AS (
    SELECT id, url, next_attempt_at, locked_until FROM callback_deliveries
     WHERE status = 'delivering' AND locked_until < now() AND url <> ALL ($2::text[])
     ORDER BY locked_until
     LIMIT $1
     FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id, url, next_attempt_at, NULL::timestamptz AS locked_until FROM callback_deliveries
     WHERE status = 'pending' AND next_attempt_at <= now() AND url <> ALL ($2::text[])
     ORDER BY next_attempt_at
     LIMIT $1
     FOR UPDATE SKIP LOCKED
), candidates AS (
    SELECT c.*, row_number() OVER (PARTITION BY c.url ORDER BY c.next_attempt_at, c.id) AS rank
      FROM (SELECT * FROM expired UNION ALL SELECT * FROM due) c
), picked AS (
    SELECT c.id, c.locked_until AS lost_lease
      FROM candidates c
      LEFT JOIN unnest($3::text[], $4::int[]) AS busy(url, n) ON busy.url = c.url
     WHERE c.rank <= $5 - COALESCE(busy.n, 0)
     ORDER BY c.next_attempt_at
     LIMIT $1
), lost AS (
    INSERT INTO callback_attempts (delivery_id, attempted_at, error)
    SELECT id, lost_lease - make_interval(secs => $6), $7 FROM picked
     WHERE lost_lease IS NOT NULL
), claimed AS (
    UPDATE callback_deliveries d
       SET status = 'delivering', locked_until = now() + make_interval(secs => $6),
           attempts = d.attempts + 1, updated_at = now()
      FROM picked
     WHERE d.id = picked.id
    RETURNING d.id, d.event_id, d.merchant_id, d.endpoint_id, d.url, d.attempts
)
SELECT c.*, e.payload::text AS body, e.request_id, w.status AS endpoint_status,
       m.webhook_secret_enc AS secret_enc,
       CASE WHEN m.webhook_secret_prev_expires_at > now() THEN m.webhook_secret_prev_enc END
           AS previous_secret_enc
  FROM claimed c
  JOIN events e ON e.id = c.event_id
  JOIN merchants m ON m.id = c.merchant_id
  LEFT JOIN webhook_endpoints w ON w.id = c.endpoint_id;

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
