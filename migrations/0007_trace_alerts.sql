-- The trace context of a transaction (W3C traceparent / tracestate of its begin span), so
-- that every later span and participant call, in any coordinator, joins the same trace.
-- Their lengths are bounded by the code that writes them (coordinator/tracing.py): a CHECK
-- here would scan the whole table under an exclusive lock when this migration runs.
ALTER TABLE tcc_transactions
    ADD COLUMN traceparent text,
    ADD COLUMN tracestate text;

-- Alerts to deliver to TCC_ALERT_WEBHOOK: written in the same database transaction as the
-- change they report (an outbox), delivered by whichever coordinator claims them first.
-- No foreign key: an alert may outlive its transaction's retention, and is pruned on its own.
CREATE TABLE tcc_alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gid text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('parked', 'retrying')),
    -- Which stay in phase two it is about (an operator's retry starts a new one) and its
    -- round: one alert per kind and round of a stay, whoever writes it.
    phase_started_at timestamptz NOT NULL,
    round integer NOT NULL,
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    delivered_at timestamptz,
    given_up_at timestamptz,
    lease_owner text,
    lease_expires_at timestamptz,
    UNIQUE (gid, kind, phase_started_at, round)
);
CREATE INDEX tcc_alerts_due ON tcc_alerts (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
