-- What operators read across merchants (`/admin/…`, the console): payments with everything that
-- happened to them, merchants without their secrets, every merchant's deliveries, reconciliation
-- runs and their discrepancies. Lists are newest first, paged by the last id of the previous
-- page (as the merchant API's).

-- name: admin_list_payments
-- Filters (NULL: any): merchant $1, status $2, channel $3, created in [$4, $5); $6 how many;
-- $7 the last payment id of the previous page.
SELECT * FROM payments p
 WHERE ($1::text IS NULL OR p.merchant_id = $1)
   AND ($2::text IS NULL OR p.status = $2)
   AND ($3::text IS NULL OR p.channel = $3)
   AND ($4::timestamptz IS NULL OR p.created_at >= $4)
   AND ($5::timestamptz IS NULL OR p.created_at < $5)
   AND ($7::text IS NULL OR (p.created_at, p.id) < (
            SELECT c.created_at, c.id FROM payments c WHERE c.id = $7))
 ORDER BY p.created_at DESC, p.id DESC
 LIMIT $6;

-- name: admin_get_payment
SELECT * FROM payments WHERE id = $1;

-- name: admin_payment_attempts
SELECT * FROM payment_attempts WHERE payment_id = $1 ORDER BY seq;

-- name: admin_payment_events
SELECT * FROM events WHERE payment_id = $1 ORDER BY created_at, id;

-- name: admin_payment_refunds
SELECT * FROM refunds WHERE payment_id = $1 ORDER BY created_at, id;

-- name: admin_list_refunds
-- Every merchant's refunds, newest first. Filters (NULL: any): status $1, merchant $2, payment
-- $3; $4 how many; $5 the last refund id of the previous page.
SELECT * FROM refunds r
 WHERE ($1::text IS NULL OR r.status = $1)
   AND ($2::text IS NULL OR r.merchant_id = $2)
   AND ($3::text IS NULL OR r.payment_id = $3)
   AND ($5::text IS NULL OR (r.created_at, r.id) < (
            SELECT c.created_at, c.id FROM refunds c WHERE c.id = $5))
 ORDER BY r.created_at DESC, r.id DESC
 LIMIT $4;

-- name: admin_payment_deliveries
-- The deliveries of payment $1's events (those of its refunds included), oldest first, each
-- with its event's type and its attempts.
SELECT d.*, e.type AS event_type, callback_attempt_log(d.id) AS attempt_log
  FROM events e JOIN callback_deliveries d ON d.event_id = e.id
 WHERE e.payment_id = $1
 ORDER BY d.created_at, d.id;

-- name: admin_list_deliveries
-- Every merchant's deliveries, newest first, each with its event's type and attempts. Filters
-- (NULL: any): status $1 (`pending` includes the ones being attempted now), merchant $2, event
-- $3; $4 how many; $5 the last delivery id of the previous page.
SELECT d.*, e.type AS event_type, callback_attempt_log(d.id) AS attempt_log
  FROM callback_deliveries d JOIN events e ON e.id = d.event_id
 WHERE ($1::text IS NULL OR d.status = $1
        OR ($1 = 'pending' AND d.status = 'delivering'))
   AND ($2::text IS NULL OR d.merchant_id = $2)
   AND ($3::text IS NULL OR d.event_id = $3)
   AND ($5::text IS NULL OR (d.created_at, d.id) < (
            SELECT c.created_at, c.id FROM callback_deliveries c WHERE c.id = $5))
 ORDER BY d.created_at DESC, d.id DESC
 LIMIT $4;

-- name: admin_delivery
-- One delivery of any merchant, locked until the transaction ends (an operator's retry).
SELECT id, merchant_id, event_id, status FROM callback_deliveries WHERE id = $1 FOR UPDATE;

-- name: admin_list_merchants
-- Merchants, newest first, with how many active keys each holds and when a rotated webhook
-- secret stops signing (while one does); $1 how many, $2 the last merchant id of the previous
-- page.
SELECT m.id, m.name, m.created_at,
       (SELECT count(*) FROM merchant_keys k
         WHERE k.merchant_id = m.id AND k.status = 'active') AS active_keys,
       CASE WHEN m.webhook_secret_prev_expires_at > now()
            THEN m.webhook_secret_prev_expires_at END AS previous_webhook_secret_expires_at
  FROM merchants m
 WHERE ($2::text IS NULL OR (m.created_at, m.id) < (
            SELECT c.created_at, c.id FROM merchants c WHERE c.id = $2))
 ORDER BY m.created_at DESC, m.id DESC
 LIMIT $1;

-- name: admin_get_merchant
-- A merchant without its secrets (as in admin_list_merchants).
SELECT m.id, m.name, m.created_at,
       (SELECT count(*) FROM merchant_keys k
         WHERE k.merchant_id = m.id AND k.status = 'active') AS active_keys,
       CASE WHEN m.webhook_secret_prev_expires_at > now()
            THEN m.webhook_secret_prev_expires_at END AS previous_webhook_secret_expires_at
  FROM merchants m WHERE m.id = $1;

-- name: admin_merchant_keys
-- A merchant's keys, active and revoked, without their secrets.
SELECT id, merchant_id, key_type, status, created_at, revoked_at FROM merchant_keys
 WHERE merchant_id = $1 ORDER BY created_at, id;

-- name: admin_merchant_key
SELECT id, merchant_id, key_type, status, created_at, revoked_at FROM merchant_keys
 WHERE id = $1;

-- name: admin_merchant_endpoints
SELECT * FROM webhook_endpoints WHERE merchant_id = $1 AND status <> 'deleted'
 ORDER BY created_at, id;

-- name: admin_list_runs
-- Reconciliation runs, newest first: channel $1, day $2, status $3 (NULL: any); $4 how many,
-- $5 the last run id of the previous page.
SELECT * FROM reconciliation_runs r
 WHERE ($1::text IS NULL OR r.channel = $1)
   AND ($2::date IS NULL OR r.day = $2)
   AND ($3::text IS NULL OR r.status = $3)
   AND ($5::text IS NULL OR (r.started_at, r.id) < (
            SELECT c.started_at, c.id FROM reconciliation_runs c WHERE c.id = $5))
 ORDER BY r.started_at DESC, r.id DESC
 LIMIT $4;

-- name: admin_get_run
SELECT * FROM reconciliation_runs WHERE id = $1;

-- name: admin_run_discrepancies
-- Run $1's lines that did not match, in order: $2 how many, after line $3 (NULL: from the
-- first).
SELECT seq, outcome, kind, channel_order_id, channel_refund_id, payment_id, refund_id,
       merchant_id, our_amount, their_amount, our_status, their_status, channel_trade_no, note
  FROM reconciliation_lines
 WHERE run_id = $1 AND outcome <> 'matched' AND ($3::integer IS NULL OR seq > $3)
 ORDER BY seq
 LIMIT $2;
