-- The participant registry: a service registers its participant once, and branches may name
-- it instead of repeating its URLs. Each row also holds the participant's circuit breaker,
-- shared by every coordinator on this log (one storm, not one per coordinator) and kept
-- across restarts. The transitions are compare-and-set statements (core/breaker.py decides
-- them); every time in them is the database's.
CREATE TABLE tcc_participants (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._:-]{1,128}$'),
    -- Either a base URL (the phase URLs are <base>/try, /confirm, /cancel) or the three URLs
    -- themselves, resolved when it is registered; try_url is NULL for a participant whose
    -- tries its callers run themselves.
    base_url text,
    try_url text,
    confirm_url text NOT NULL,
    cancel_url text NOT NULL,
    health_url text,
    call_timeout_s double precision CHECK (call_timeout_s > 0),
    owner_service text,
    registered_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    breaker_state text NOT NULL DEFAULT 'closed'
        CHECK (breaker_state IN ('closed', 'open', 'half_open')),
    -- When it entered its state, and why it opened.
    breaker_since timestamptz NOT NULL DEFAULT now(),
    breaker_reason text,
    -- Open: when a probe may be sent. Times it opened since it last recovered (each stays
    -- open twice as long as the one before, up to a bound).
    breaker_retry_at timestamptz,
    breaker_opens integer NOT NULL DEFAULT 0 CHECK (breaker_opens >= 0),
    -- Half-open: the coordinator sending the one probe, until when.
    probe_owner text,
    probe_expires_at timestamptz,
    -- Closed after recovering: calls resume at a rate that ramps up from this moment.
    ramp_started_at timestamptz
);

-- Which registered participant a branch calls: named by the client, or found by its URLs.
-- The branch keeps its URLs as they were when it was logged.
ALTER TABLE tcc_branches ADD COLUMN participant text;

-- Participant calls counted per minute by every coordinator (each adds what it saw since its
-- last flush): the console's and the API's calls per minute, error rates and latencies.
CREATE TABLE tcc_participant_minutes (
    participant text NOT NULL,
    minute timestamptz NOT NULL,
    phase text NOT NULL,
    calls integer NOT NULL CHECK (calls >= 0),
    errors integer NOT NULL CHECK (errors >= 0 AND errors <= calls),
    latency_ms_sum double precision NOT NULL,
    latency_ms_max double precision NOT NULL,
    PRIMARY KEY (participant, minute, phase)
);

-- An alert may now be about a participant (its breaker opened) rather than a transaction.
ALTER TABLE tcc_alerts
    ALTER COLUMN gid DROP NOT NULL,
    ADD COLUMN participant text,
    DROP CONSTRAINT tcc_alerts_kind_check,
    ADD CONSTRAINT tcc_alerts_kind_check CHECK (kind IN ('parked', 'retrying', 'breaker_open')),
    ADD CONSTRAINT tcc_alerts_subject_check CHECK ((gid IS NULL) <> (participant IS NULL));
-- One alert per opening of a breaker, whoever writes it.
CREATE UNIQUE INDEX tcc_alerts_participant_once ON tcc_alerts (participant, kind, phase_started_at)
    WHERE participant IS NOT NULL;
