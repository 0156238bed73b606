-- Refunds: reserved against the payment's amount under the payment's row lock
-- (payments.refund_reserved), settled into payments.refunded_amount when they succeed.

CREATE TABLE refunds (
    id                 text PRIMARY KEY,
    payment_id         text NOT NULL REFERENCES payments(id),
    merchant_id        text NOT NULL REFERENCES merchants(id),
    merchant_refund_id text NOT NULL,
    amount             bigint NOT NULL CHECK (amount > 0),
    currency           text NOT NULL,
    reason             text,
    status             text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    channel            text NOT NULL,
    channel_order_id   text NOT NULL,
    channel_refund_id  text NOT NULL,
    channel_refund_no  text,
    channel_code       text,
    failure_code       text,
    failure_message    text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    next_sync_at       timestamptz,
    sync_count         integer NOT NULL DEFAULT 0,
    UNIQUE (payment_id, merchant_refund_id),
    UNIQUE (channel, channel_refund_id)
);
CREATE INDEX refunds_sync ON refunds (next_sync_at) WHERE status = 'pending';
CREATE INDEX refunds_merchant ON refunds (merchant_id, created_at);

ALTER TABLE events ADD CONSTRAINT events_refund_fk FOREIGN KEY (refund_id) REFERENCES refunds(id);
