-- Webhooks: secret rotation with a grace period (the previous secret keeps signing callbacks,
-- beside the new one, until it expires), and indexes for the delivery log and for failing an
-- endpoint's pending deliveries when it answers 410 Gone.

ALTER TABLE merchants
    ADD COLUMN webhook_secret_prev_enc bytea,
    ADD COLUMN webhook_secret_prev_expires_at timestamptz,
    ADD CONSTRAINT merchants_webhook_secret_prev
        CHECK ((webhook_secret_prev_enc IS NULL) = (webhook_secret_prev_expires_at IS NULL));

CREATE INDEX callback_deliveries_merchant
    ON callback_deliveries (merchant_id, created_at DESC, id DESC);
CREATE INDEX callback_deliveries_endpoint_pending
    ON callback_deliveries (endpoint_id) WHERE status = 'pending';
