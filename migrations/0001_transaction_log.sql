-- The transaction log: global transactions, their branches, and an append-only
-- event timeline. Statuses are checked here as well as in coordinator/states.py.

CREATE TABLE tcc_transactions (
    gid              text PRIMARY KEY CHECK (gid ~ '^[A-Za-z0-9._:-]{1,128}$'),
    status           text NOT NULL CHECK (status IN (
                         'trying', 'confirming', 'confirmed', 'cancelling', 'cancelled',
                         'failed_to_confirm', 'failed_to_cancel')),
    dialect          text NOT NULL DEFAULT 'tcc' CHECK (dialect IN ('tcc', 'dtm')),
    service          text,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- sha256 of the normalised begin request: a repeated begin must match it.
    request_hash     text NOT NULL,
    timeout_s        double precision NOT NULL CHECK (timeout_s > 0),
    call_timeout_s   double precision CHECK (call_timeout_s > 0),
    deadline         timestamptz NOT NULL,
    cancel_reason    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    decided_at       timestamptz,
    finished_at      timestamptz,
    -- Start of the current phase-two retry budget (the decision, or an admin retry).
    phase_started_at timestamptz,
    phase_attempts   integer NOT NULL DEFAULT 0,
    -- When the coordinator must look at this transaction next: the deadline while
    -- trying, the next retry while in phase two, NULL once final or parked.
    next_attempt_at  timestamptz,
    lease_owner      text,
    lease_token      uuid,
    lease_expires_at timestamptz
);

-- The recovery scan: only active rows are indexed, so finished ones cost nothing.
CREATE INDEX tcc_transactions_due ON tcc_transactions (next_attempt_at)
    WHERE status IN ('trying', 'confirming', 'cancelling');
CREATE INDEX tcc_transactions_created ON tcc_transactions (created_at DESC, gid DESC);
CREATE INDEX tcc_transactions_status_created ON tcc_transactions (status, created_at DESC, gid DESC);
CREATE INDEX tcc_transactions_service_created ON tcc_transactions (service, created_at DESC, gid DESC);

CREATE TABLE tcc_branches (
    gid              text NOT NULL REFERENCES tcc_transactions (gid) ON DELETE CASCADE,
    branch_id        text NOT NULL CHECK (branch_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
    position         integer NOT NULL,
    name             text NOT NULL,
    try_url          text,
    confirm_url      text NOT NULL,
    cancel_url       text NOT NULL,
    payload          jsonb,
    -- sha256 of the registration: a repeated registration must match it.
    request_hash     text NOT NULL,
    status           text NOT NULL CHECK (status IN (
                         'registered', 'tried', 'try_failed', 'confirmed', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    last_http_status integer,
    last_error       text,
    last_latency_ms  double precision,
    next_retry_at    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gid, branch_id)
);

CREATE TABLE tcc_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gid         text NOT NULL REFERENCES tcc_transactions (gid) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind        text NOT NULL,
    branch_id   text,
    phase       text,
    http_status integer,
    latency_ms  double precision,
    error       text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX tcc_events_gid ON tcc_events (gid, id);
