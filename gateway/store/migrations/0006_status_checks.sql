-- Every status column holds exactly the values of its enum (gateway/domain/states.py; the
-- reconciliation outcomes are gateway/reconcile/matching.py's Outcome), so that no code path
-- can store a state the state machines do not know. tests/unit/gateway/test_status_checks.py
-- keeps this file and the enums equal, and checks that each column has this one constraint.
-- Each is named <table>_<column>_check: the ones 0001-0004 declared inline (same names, same
-- values) are replaced; payment_attempts.status and channel_notifications.outcome had none.

ALTER TABLE payments
    DROP CONSTRAINT payments_status_check,
    ADD CONSTRAINT payments_status_check
        CHECK (status IN ('pending', 'succeeded', 'failed', 'closed'));

ALTER TABLE payment_attempts
    ADD CONSTRAINT payment_attempts_status_check
        CHECK (status IN ('creating', 'waiting', 'unknown', 'succeeded', 'failed',
                          'failed_over', 'closed'));

ALTER TABLE refunds
    DROP CONSTRAINT refunds_status_check,
    ADD CONSTRAINT refunds_status_check
        CHECK (status IN ('pending', 'succeeded', 'failed'));

ALTER TABLE callback_deliveries
    DROP CONSTRAINT callback_deliveries_status_check,
    ADD CONSTRAINT callback_deliveries_status_check
        CHECK (status IN ('pending', 'delivering', 'succeeded', 'failed'));

ALTER TABLE webhook_endpoints
    DROP CONSTRAINT webhook_endpoints_status_check,
    ADD CONSTRAINT webhook_endpoints_status_check
        CHECK (status IN ('active', 'disabled', 'deleted'));

ALTER TABLE merchant_keys
    DROP CONSTRAINT merchant_keys_status_check,
    ADD CONSTRAINT merchant_keys_status_check
        CHECK (status IN ('active', 'revoked'));

ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_state_check,
    ADD CONSTRAINT idempotency_keys_state_check
        CHECK (state IN ('in_flight', 'done'));

ALTER TABLE channel_notifications
    ADD CONSTRAINT channel_notifications_outcome_check
        CHECK (outcome IN ('rejected', 'unknown_order'));

ALTER TABLE reconciliation_runs
    DROP CONSTRAINT reconciliation_runs_status_check,
    ADD CONSTRAINT reconciliation_runs_status_check
        CHECK (status IN ('completed', 'failed'));

ALTER TABLE reconciliation_lines
    DROP CONSTRAINT reconciliation_lines_outcome_check,
    ADD CONSTRAINT reconciliation_lines_outcome_check
        CHECK (outcome IN ('matched', 'missing_ours', 'missing_channel', 'amount_mismatch',
                           'status_mismatch'));
