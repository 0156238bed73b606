-- Reconciliation runs and lines, our side of a channel's day, and the settlement aggregates.

-- name: day_payments
-- Channel $1's payments that succeeded in [$2, $3).
SELECT id, merchant_id, channel_order_id, amount FROM payments
 WHERE status = 'succeeded' AND paid_at >= $2 AND paid_at < $3 AND channel = $1;

-- name: day_refunds
-- Channel $1's refunds that succeeded in [$2, $3).
SELECT id, payment_id, merchant_id, channel_order_id, channel_refund_id, amount FROM refunds
 WHERE status = 'succeeded' AND completed_at >= $2 AND completed_at < $3 AND channel = $1;

-- name: find_attempts
-- Attempts by the channel's order id, of any status and day, with their payment.
SELECT a.channel, a.channel_order_id, a.status AS attempt_status,
       p.id AS payment_id, p.merchant_id, p.amount, p.status AS payment_status,
       p.channel_order_id AS payment_channel_order_id, p.paid_at
  FROM payment_attempts a JOIN payments p ON p.id = a.payment_id
 WHERE a.channel = ANY($1::text[]) AND a.channel_order_id = ANY($2::text[]);

-- name: find_refunds
-- Refunds by the channel's refund id, of any status and day.
SELECT * FROM refunds WHERE channel = ANY($1::text[]) AND channel_refund_id = ANY($2::text[]);

-- name: lock_channel_day
-- Serialise the runs of one channel and day (until the transaction ends).
SELECT pg_advisory_xact_lock(hashtextextended($1, 0));

-- name: delete_runs
-- Every earlier run of a channel and day, with its lines (ON DELETE CASCADE); how many.
WITH d AS (DELETE FROM reconciliation_runs WHERE channel = $1 AND day = $2 RETURNING 1)
SELECT count(*) FROM d;

-- name: insert_run
INSERT INTO reconciliation_runs (id, channel, day, status, error, started_at, finished_at)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: finish_run
UPDATE reconciliation_runs
   SET statement_lines = $2, our_records = $3, matched = $4, missing_ours = $5,
       missing_channel = $6, amount_mismatch = $7, status_mismatch = $8, other_channel = $9,
       summary = $10, finished_at = $11
 WHERE id = $1;

-- name: current_run
-- The completed run of a channel and day, if any.
SELECT * FROM reconciliation_runs WHERE channel = $1 AND day = $2 AND status = 'completed';

-- name: run_lines
-- A run's lines in order.
SELECT seq, outcome, kind, channel_order_id, channel_refund_id, payment_id, refund_id,
       merchant_id, our_amount, their_amount, our_status, their_status, channel_trade_no, note
  FROM reconciliation_lines WHERE run_id = $1 ORDER BY seq;

-- name: settled_payment_groups
-- Succeeded payments paid in [$1, $2), counted per merchant, channel, currency and amount (fees
-- are per payment, so equal amounts share one fee).
SELECT merchant_id, channel, currency, amount, count(*) AS count FROM payments
 WHERE status = 'succeeded' AND paid_at >= $1 AND paid_at < $2
 GROUP BY merchant_id, channel, currency, amount;

-- name: settled_refund_groups
-- Succeeded refunds completed in [$1, $2), per merchant, channel and currency.
SELECT merchant_id, channel, currency, count(*) AS count, sum(amount)::bigint AS amount
  FROM refunds
 WHERE status = 'succeeded' AND completed_at >= $1 AND completed_at < $2
 GROUP BY merchant_id, channel, currency;
