-- Reconciliation: one run per channel and China (UTC+8) day (a re-run replaces it, in one
-- transaction), and its lines: one per statement line or per record of ours the statement
-- lacked. Amounts are bigint minor units.

CREATE TABLE reconciliation_runs (
    id               text PRIMARY KEY,
    channel          text NOT NULL,
    day              date NOT NULL,
    status           text NOT NULL CHECK (status IN ('completed', 'failed')),
    statement_lines  integer NOT NULL DEFAULT 0,
    our_records      integer NOT NULL DEFAULT 0,
    matched          integer NOT NULL DEFAULT 0,
    missing_ours     integer NOT NULL DEFAULT 0,
    missing_channel  integer NOT NULL DEFAULT 0,
    amount_mismatch  integer NOT NULL DEFAULT 0,
    status_mismatch  integer NOT NULL DEFAULT 0,
    other_channel    integer NOT NULL DEFAULT 0,
    summary          jsonb NOT NULL DEFAULT '{}',
    error            text,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz
);
CREATE UNIQUE INDEX reconciliation_runs_current ON reconciliation_runs (channel, day)
    WHERE status = 'completed';
CREATE INDEX reconciliation_runs_day ON reconciliation_runs (day, channel);

CREATE TABLE reconciliation_lines (
    run_id             text NOT NULL REFERENCES reconciliation_runs(id) ON DELETE CASCADE,
    seq                integer NOT NULL,
    outcome            text NOT NULL CHECK (outcome IN ('matched', 'missing_ours',
                           'missing_channel', 'amount_mismatch', 'status_mismatch')),
    kind               text NOT NULL CHECK (kind IN ('payment', 'refund')),
    channel_order_id   text NOT NULL,
    channel_refund_id  text,
    payment_id         text,
    refund_id          text,
    merchant_id        text,
    our_amount         bigint,
    their_amount       bigint,
    our_status         text,
    their_status       text,
    channel_trade_no   text,
    note               text,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX reconciliation_lines_discrepancies ON reconciliation_lines (run_id, outcome)
    WHERE outcome <> 'matched';

-- Our side of a day: succeeded payments by the moment they were paid, succeeded refunds by the
-- moment they completed (reconciliation and settlement both read a day's range of these).
CREATE INDEX payments_paid_at ON payments (paid_at) WHERE status = 'succeeded';
CREATE INDEX refunds_completed_at ON refunds (completed_at) WHERE status = 'succeeded';
