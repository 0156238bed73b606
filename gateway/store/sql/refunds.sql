-- Refunds, their reservation against the payment's amount, and the operators' records of
-- them.

-- name: insert_refund
INSERT INTO refunds (id, payment_id, merchant_id, merchant_refund_id, amount, currency,
    reason, status, channel, channel_order_id, channel_refund_id, next_sync_at,
    counts_on_payment)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $11, $12)
RETURNING *;

-- name: reserve_refund_amount
-- Called under the payment's row lock, after checking that the amount is available (the CHECK
-- on payments is the backstop).
UPDATE payments SET refund_reserved = refund_reserved + $2, updated_at = now() WHERE id = $1;

-- name: settle_refund_amount
-- A reserved refund of $2 settled: no longer reserved; refunded when $3 is true.
UPDATE payments
   SET refund_reserved = refund_reserved - $2,
       refunded_amount = refunded_amount + CASE WHEN $3 THEN $2 ELSE 0 END,
       updated_at = now()
 WHERE id = $1;

-- name: get_refund
SELECT * FROM refunds WHERE id = $1 AND merchant_id = $2;

-- name: get_refund_by_merchant_refund_id
SELECT * FROM refunds WHERE payment_id = $1 AND merchant_refund_id = $2;

-- name: get_refund_by_channel_refund_id
SELECT * FROM refunds WHERE channel = $1 AND channel_refund_id = $2;

-- name: succeeded_attempt
-- The attempt a succeeded payment was paid through: its refunds go to that channel order.
SELECT * FROM payment_attempts WHERE payment_id = $1 AND status = 'succeeded'
 ORDER BY seq DESC LIMIT 1;

-- name: settle_refund
-- pending -> succeeded | failed, with what the channel said.
UPDATE refunds SET status = $2, channel_refund_no = COALESCE($3, channel_refund_no),
       channel_code = $4, failure_code = $5, failure_message = $6,
       completed_at = now(), updated_at = now(), next_sync_at = NULL
 WHERE id = $1
RETURNING *;

-- name: claim_due_refunds
-- Lease up to $1 pending refunds whose sync is due (SKIP LOCKED), pushing their next sync $2
-- seconds away; each with its payment's amount (the channels want it with the refund).
WITH due AS (
    SELECT id FROM refunds
     WHERE status = 'pending' AND next_sync_at <= now()
     ORDER BY next_sync_at
     LIMIT $1
     FOR UPDATE SKIP LOCKED
)
UPDATE refunds r
   SET next_sync_at = now() + make_interval(secs => $2), sync_count = r.sync_count + 1
  FROM due, payments p
 WHERE r.id = due.id AND p.id = r.payment_id
RETURNING r.*, p.amount AS payment_amount;

-- name: reschedule_refund_sync
UPDATE refunds SET next_sync_at = $2 WHERE id = $1 AND status = 'pending';

-- name: refund_record_exists
-- Whether the operators' record $3 (an internal event type) of refund $2 of payment $1 was
-- written already.
SELECT EXISTS (SELECT 1 FROM events WHERE payment_id = $1 AND refund_id = $2 AND type = $3);
