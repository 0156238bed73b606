-- Core schema: merchants and keys, payments and their attempts, events and callback
-- deliveries (the outbox), idempotency records. Amounts are bigint minor units.

CREATE TABLE merchants (
    id                  text PRIMARY KEY,
    name                text NOT NULL,
    webhook_secret_enc  bytea NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE merchant_keys (
    id              text PRIMARY KEY,
    merchant_id     text NOT NULL REFERENCES merchants(id),
    key_type        text NOT NULL CHECK (key_type IN ('hmac-sha256', 'ed25519', 'rsa-sha256')),
    secret_enc      bytea,
    public_key_pem  text,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    CHECK ((key_type = 'hmac-sha256') = (secret_enc IS NOT NULL)),
    CHECK ((key_type <> 'hmac-sha256') = (public_key_pem IS NOT NULL))
);
CREATE INDEX merchant_keys_merchant ON merchant_keys (merchant_id) WHERE status = 'active';

CREATE TABLE payments (
    id                text PRIMARY KEY,
    merchant_id       text NOT NULL REFERENCES merchants(id),
    merchant_order_id text NOT NULL,
    status            text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'closed')),
    amount            bigint NOT NULL CHECK (amount > 0),
    currency          text NOT NULL,
    method            text NOT NULL,
    description       text NOT NULL,
    notify_url        text,
    metadata          jsonb NOT NULL DEFAULT '{}',
    payer             jsonb,
    channel           text,
    channel_order_id  text,
    channel_trade_no  text,
    next_action       jsonb,
    refunded_amount   bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    refund_reserved   bigint NOT NULL DEFAULT 0 CHECK (refund_reserved >= 0),
    failure_code      text,
    failure_message   text,
    attempt_count     integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    paid_at           timestamptz,
    closed_at         timestamptz,
    UNIQUE (merchant_id, merchant_order_id),
    CHECK (refunded_amount + refund_reserved <= amount)
);
CREATE INDEX payments_pending_expiry ON payments (expires_at) WHERE status = 'pending';

CREATE TABLE payment_attempts (
    id                text PRIMARY KEY,
    payment_id        text NOT NULL REFERENCES payments(id),
    seq               integer NOT NULL,
    channel           text NOT NULL,
    adapter           text NOT NULL,
    channel_order_id  text NOT NULL,
    status            text NOT NULL,
    channel_code      text,
    channel_message   text,
    decision          text,
    channel_trade_no  text,
    routing_rule      text,
    routing_version   text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    next_sync_at      timestamptz,
    sync_count        integer NOT NULL DEFAULT 0,
    UNIQUE (payment_id, seq),
    UNIQUE (channel, channel_order_id)
);
CREATE INDEX payment_attempts_sync ON payment_attempts (next_sync_at)
    WHERE status IN ('creating', 'waiting', 'unknown');

CREATE TABLE events (
    id           text PRIMARY KEY,
    merchant_id  text NOT NULL REFERENCES merchants(id),
    type         text NOT NULL,
    payment_id   text REFERENCES payments(id),
    refund_id    text,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_payment ON events (payment_id);

CREATE TABLE webhook_endpoints (
    id               text PRIMARY KEY,
    merchant_id      text NOT NULL REFERENCES merchants(id),
    url              text NOT NULL,
    events           text[] NOT NULL,
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'disabled', 'deleted')),
    disabled_reason  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_merchant ON webhook_endpoints (merchant_id) WHERE status = 'active';

CREATE TABLE callback_deliveries (
    id               text PRIMARY KEY,
    event_id         text NOT NULL REFERENCES events(id),
    merchant_id      text NOT NULL REFERENCES merchants(id),
    endpoint_id      text,
    url              text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivering', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    locked_until     timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
CREATE INDEX callback_deliveries_due ON callback_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX callback_deliveries_leased ON callback_deliveries (locked_until)
    WHERE status = 'delivering';
CREATE INDEX callback_deliveries_event ON callback_deliveries (event_id);

CREATE TABLE callback_attempts (
    id             bigserial PRIMARY KEY,
    delivery_id    text NOT NULL REFERENCES callback_deliveries(id),
    attempted_at   timestamptz NOT NULL DEFAULT now(),
    status_code    integer,
    latency_ms     integer,
    response_body  text,
    error          text
);
CREATE INDEX callback_attempts_delivery ON callback_attempts (delivery_id);

CREATE TABLE idempotency_keys (
    merchant_id      text NOT NULL REFERENCES merchants(id),
    key              text NOT NULL,
    method           text NOT NULL,
    path             text NOT NULL,
    request_hash     bytea NOT NULL,
    state            text NOT NULL CHECK (state IN ('in_flight', 'done')),
    response_status  integer,
    response_body    bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    locked_until     timestamptz,
    PRIMARY KEY (merchant_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

CREATE TABLE channel_notifications (
    id                bigserial PRIMARY KEY,
    channel           text NOT NULL,
    channel_order_id  text,
    kind              text,
    outcome           text,
    applied           boolean NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now()
);
