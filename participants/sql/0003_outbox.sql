-- The transactional outbox: reliable messages a service wrote in its own database
-- transactions, waiting for its relay to hand them to the coordinator (POST /v1/messages).
-- Applied into each participant's own schema by participants/schema.py; see outbox.py.
CREATE TABLE tcc_outbox (
    id              bigserial PRIMARY KEY,  -- oldest first
    gid             text NOT NULL UNIQUE,   -- the message's gid: a repeated hand-off is the same
    request         jsonb NOT NULL,         -- the body of POST /v1/messages, sent as it is
    -- pending: waits for the relay; handed_off: the coordinator has it; refused: the
    -- coordinator said it never will (400, 409, 422): an operator's turn, never dropped.
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'handed_off', 'refused')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    handed_off_at   timestamptz,
    CHECK ((status = 'handed_off') = (handed_off_at IS NOT NULL))
);

-- What the relay takes, oldest first; and what the prune deletes, oldest first.
CREATE INDEX tcc_outbox_pending ON tcc_outbox (id) WHERE status = 'pending';
CREATE INDEX tcc_outbox_handed_off ON tcc_outbox (handed_off_at) WHERE status = 'handed_off';
