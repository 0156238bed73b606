-- Payments, their attempts, the events they cause and the callback deliveries of those events
-- (the outbox), the operators' records of them, the ids of the channel notifications applied
-- and the counts of those that were not.

-- name: insert_payment_with_attempt
-- The payment and its first attempt in one statement (one round trip, one commit). No row when
-- the merchant's merchant_order_id exists already (its unique key; nothing is inserted then).
WITH p AS (
    INSERT INTO payments (id, merchant_id, merchant_order_id, status, amount, currency,
        method, description, notify_url, metadata, payer, channel, channel_order_id,
        attempt_count, expires_at)
    VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13)
    ON CONFLICT (merchant_id, merchant_order_id) DO NOTHING
    RETURNING *
), a AS (
    INSERT INTO payment_attempts (id, payment_id, seq, channel, adapter,
        channel_order_id, status, routing_rule, routing_version, next_sync_at)
    SELECT $14, p.id, 1, $11, $15, $12, 'creating', $16, $17,
           now() + interval '60 seconds' FROM p
)
SELECT * FROM p;

-- name: insert_attempt
-- A further attempt (failover), status creating; the sync looks at it in a minute should its
-- create never answer.
INSERT INTO payment_attempts (id, payment_id, seq, channel, adapter, channel_order_id,
    status, routing_rule, routing_version, next_sync_at)
VALUES ($1, $2, $3, $4, $5, $6, 'creating', $7, $8, now() + interval '60 seconds');

-- name: get_payment
SELECT * FROM payments WHERE id = $1 AND merchant_id = $2;

-- name: get_payment_by_order
SELECT * FROM payments WHERE merchant_id = $1 AND merchant_order_id = $2;

-- name: lock_payment
-- The payment's row lock: every change of a payment, its attempts and refunds is made under it.
SELECT * FROM payments WHERE id = $1 FOR UPDATE;

-- name: switch_payment_channel
-- The payment now tries its attempt number $4, at channel $2.
UPDATE payments SET channel = $2, channel_order_id = $3, attempt_count = $4, updated_at = now()
 WHERE id = $1;

-- name: finish_payment
-- A new status; NULL arguments leave their column as it is.
UPDATE payments
   SET status = $2, paid_at = COALESCE($3, paid_at),
       channel_trade_no = COALESCE($4, channel_trade_no), closed_at = COALESCE($5, closed_at),
       failure_code = COALESCE($6, failure_code),
       failure_message = COALESCE($7, failure_message), updated_at = now()
 WHERE id = $1
RETURNING *;

-- name: set_payment_next_action
UPDATE payments SET next_action = $2, updated_at = now() WHERE id = $1 RETURNING *;

-- name: get_attempt
SELECT * FROM payment_attempts WHERE id = $1;

-- name: current_attempt
-- The payment's latest attempt.
SELECT * FROM payment_attempts WHERE payment_id = $1 ORDER BY seq DESC LIMIT 1;

-- name: attempt_by_channel_order
SELECT * FROM payment_attempts WHERE channel = $1 AND channel_order_id = $2;

-- name: mark_attempt_waiting
-- creating -> waiting for the attempt, and the payer's next action on the payment, in one
-- statement. Guarded by both states, so that a notification that got there first wins: no row
-- then.
WITH a AS (
    UPDATE payment_attempts SET status = 'waiting', channel_code = $5,
           channel_trade_no = COALESCE($4, channel_trade_no), next_sync_at = $6,
           updated_at = now()
     WHERE id = $1 AND status = 'creating'
    RETURNING id
)
UPDATE payments p SET next_action = $3,
       channel_trade_no = COALESCE($4, p.channel_trade_no), updated_at = now()
  FROM a
 WHERE p.id = $2 AND p.status = 'pending'
RETURNING p.*;

-- name: mark_attempt_unknown
-- creating -> unknown: the create's answer was lost (timeout); the sync asks the channel.
UPDATE payment_attempts
   SET status = 'unknown', channel_code = $2, channel_message = $3, next_sync_at = $4,
       updated_at = now()
 WHERE id = $1 AND status = 'creating';

-- name: mark_attempt_failed_over
-- creating -> failed_over: nothing was created at the channel; the next one is tried.
UPDATE payment_attempts
   SET status = 'failed_over', channel_code = $2, channel_message = $3, decision = $4,
       next_sync_at = NULL, updated_at = now()
 WHERE id = $1;

-- name: mark_attempt_closing
-- creating -> closing: failed over, but the channel may hold the order; the sync closes it
-- there from $5 on.
UPDATE payment_attempts
   SET status = 'closing', channel_code = $2, channel_message = $3, decision = $4,
       next_sync_at = $5, updated_at = now()
 WHERE id = $1 AND status = 'creating';

-- name: close_given_up_attempt
-- closing -> closed: the channel confirmed the close (or said it was paid: a late payment).
-- Watched until $2 (next query at $3) when the order stays payable there; else left alone.
UPDATE payment_attempts
   SET status = 'closed', watch_until = $2, next_sync_at = $3, updated_at = now()
 WHERE id = $1 AND status = 'closing';

-- name: finish_attempt
-- A final status, with what the channel said; the sync leaves it alone from now on, unless
-- its order stays payable at the channel until $7 (watched: next query at $8).
UPDATE payment_attempts
   SET status = $2, channel_code = $3, channel_message = $4, decision = $5,
       channel_trade_no = $6, watch_until = $7, next_sync_at = $8, updated_at = now()
 WHERE id = $1;

-- name: mark_attempt_waiting_after_query
-- creating | unknown -> waiting: a query found the order waiting for the payer.
UPDATE payment_attempts SET status = 'waiting', channel_code = $2, updated_at = now()
 WHERE id = $1;

-- name: note_late_payment_on_attempt
-- The channel's word on an attempt paid after its payment was closed or failed.
UPDATE payment_attempts
   SET channel_trade_no = $2, channel_code = $3, channel_message = $4, updated_at = now()
 WHERE id = $1;

-- name: claim_due_attempts
-- Lease up to $1 attempts whose sync is due (SKIP LOCKED: any number of processes), by pushing
-- their next sync $2 seconds away; each with what the sync needs of its payment. Open, closing
-- and watched attempts (the predicate of the index payment_attempts_sync).
WITH due AS (
    SELECT id FROM payment_attempts
     WHERE (status IN ('creating', 'waiting', 'unknown', 'closing') OR watch_until IS NOT NULL)
       AND next_sync_at <= now()
     ORDER BY next_sync_at
     LIMIT $1
     FOR UPDATE SKIP LOCKED
)
UPDATE payment_attempts a
   SET next_sync_at = now() + make_interval(secs => $2), sync_count = a.sync_count + 1
  FROM due, payments p
 WHERE a.id = due.id AND p.id = a.payment_id
RETURNING a.id, a.payment_id, a.channel, a.channel_order_id, a.status, a.sync_count,
          a.watch_until, p.merchant_id, p.status AS payment_status, p.expires_at;

-- name: reschedule_attempt_sync
-- The next sync of an attempt the sync still follows; NULL ends a watch.
UPDATE payment_attempts SET next_sync_at = $2
 WHERE id = $1
   AND (status IN ('creating', 'waiting', 'unknown', 'closing') OR watch_until IS NOT NULL);

-- name: count_due_attempts
-- The sync's backlog.
SELECT count(*) FROM payment_attempts
 WHERE (status IN ('creating', 'waiting', 'unknown', 'closing') OR watch_until IS NOT NULL)
   AND next_sync_at <= now();

-- name: insert_event
INSERT INTO events (id, merchant_id, type, payment_id, refund_id, payload, created_at,
    request_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: insert_event_deliveries
-- Event $1's deliveries: to the payment's notify_url ($3, if any) and to every active endpoint
-- of merchant $2 subscribed to its type $4. Returns how many.
WITH d AS (
    INSERT INTO callback_deliveries (id, event_id, merchant_id, endpoint_id, url)
    SELECT 'dlv_' || replace(gen_random_uuid()::text, '-', ''), $1, $2, NULL, $3
     WHERE $3::text IS NOT NULL
    UNION ALL
    SELECT 'dlv_' || replace(gen_random_uuid()::text, '-', ''), $1, $2, e.id, e.url
      FROM webhook_endpoints e
     WHERE e.merchant_id = $2 AND e.status = 'active' AND $4 = ANY (e.events)
    RETURNING 1
)
SELECT count(*) FROM d;

-- name: notify_dispatchers
-- Wake the callback dispatchers (LISTEN $1) when the transaction commits.
SELECT pg_notify($1, '');

-- name: payment_record_exists
-- Whether the operators' record $2 (an internal event type) of channel order $3 of payment $1
-- was written already.
SELECT EXISTS (SELECT 1 FROM events WHERE payment_id = $1 AND type = $2
                  AND payload->>'channel_order_id' = $3);

-- name: claim_notification_id
-- Notification $2 of channel $1 is applied now, in the caller's transaction: a row when it is
-- the first time, none when it was applied before (or is being applied by a transaction that
-- then commits).
INSERT INTO channel_notification_ids (channel, notification_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING
RETURNING true;

-- name: purge_notification_ids
-- Forget the notification ids applied more than $1 seconds ago (longer than any channel
-- repeats a notification; a repeat after that would be applied again, idempotently).
DELETE FROM channel_notification_ids WHERE applied_at < now() - make_interval(secs => $1);

-- name: add_notification_counts
-- Add counts of notifications not applied, one row per (channel, outcome, minute): $1..$7 are
-- arrays, one element per bucket (each bucket once). Buckets other processes wrote add up.
INSERT INTO channel_notification_counts AS c (channel, outcome, minute, count, first_seen,
    last_seen, sample_channel_order_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[],
                     $5::timestamptz[], $6::timestamptz[], $7::text[])
ON CONFLICT (channel, outcome, minute) DO UPDATE
   SET count = c.count + EXCLUDED.count,
       first_seen = least(c.first_seen, EXCLUDED.first_seen),
       last_seen = greatest(c.last_seen, EXCLUDED.last_seen),
       sample_channel_order_id = COALESCE(c.sample_channel_order_id,
                                          EXCLUDED.sample_channel_order_id);
