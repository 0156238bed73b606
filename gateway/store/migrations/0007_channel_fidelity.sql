-- What the gateway needs to act on what real channels say (issue 12, the gateway's side):
--
-- - an attempt given up while its channel may hold an order (a create answered "system error"
--   that may have created it) is 'closing': the status sync closes the order there until the
--   channel confirms; a closed attempt whose channel cannot close the order (it stays payable
--   until watch_until) is still queried until then (watched), so that a payment there is seen;
-- - the refund of a late payment counts on its payment (reserved, refunded_amount, refund.*
--   callbacks) when that payment was closed or failed, as before; when the payment is pending
--   or succeeded through another attempt it does not (counts_on_payment false): it gives back
--   a payer's second charge, and is none of the merchant's refunds;
-- - each channel notification id is applied once (channel_notification_ids, written in the
--   transaction of the change the notification causes);
-- - the notifications that were not applied are counted per channel, outcome and minute
--   (channel_notification_counts), so that a flood of forged ones costs no database write per
--   request; the one-row-each table they replace is folded into the counts and dropped.

ALTER TABLE payment_attempts
    DROP CONSTRAINT payment_attempts_status_check,
    ADD CONSTRAINT payment_attempts_status_check
        CHECK (status IN ('creating', 'waiting', 'unknown', 'closing', 'succeeded', 'failed',
                          'failed_over', 'closed'));

ALTER TABLE payment_attempts ADD COLUMN watch_until timestamptz;

-- the attempts the status sync claims: open, closing, or watched (next_sync_at NULL once the
-- watch is over)
DROP INDEX payment_attempts_sync;
CREATE INDEX payment_attempts_sync ON payment_attempts (next_sync_at)
    WHERE status IN ('creating', 'waiting', 'unknown', 'closing') OR watch_until IS NOT NULL;

ALTER TABLE refunds ADD COLUMN counts_on_payment boolean NOT NULL DEFAULT true;

CREATE TABLE channel_notification_ids (
    channel          text NOT NULL,
    notification_id  text NOT NULL,
    applied_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, notification_id)
);
CREATE INDEX channel_notification_ids_applied_at ON channel_notification_ids (applied_at);

CREATE TABLE channel_notification_counts (
    channel                  text NOT NULL,
    outcome                  text NOT NULL,
    minute                   timestamptz NOT NULL,
    count                    bigint NOT NULL CHECK (count > 0),
    first_seen               timestamptz NOT NULL,
    last_seen                timestamptz NOT NULL,
    sample_channel_order_id  text,
    PRIMARY KEY (channel, outcome, minute)
);

ALTER TABLE channel_notification_counts
    ADD CONSTRAINT channel_notification_counts_outcome_check
        CHECK (outcome IN ('rejected', 'unknown_order', 'amount_mismatch'));

INSERT INTO channel_notification_counts (channel, outcome, minute, count, first_seen, last_seen,
    sample_channel_order_id)
SELECT channel, outcome, date_trunc('minute', received_at), count(*), min(received_at),
       max(received_at), min(channel_order_id)
  FROM channel_notifications
 WHERE NOT applied AND outcome IS NOT NULL
 GROUP BY channel, outcome, date_trunc('minute', received_at);

DROP TABLE channel_notifications;
