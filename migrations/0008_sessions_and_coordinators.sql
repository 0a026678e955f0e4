-- Console sessions, kept in the log so that ending one ends it on every coordinator: a
-- logout, `tcc sessions revoke`, or a key removed from the configuration (revoked by the
-- first coordinator that starts without it, and never revived by putting the key back).
-- The cookie carries a random session id; only its SHA-256 is stored here, so reading this
-- table is not enough to make a cookie.
CREATE TABLE tcc_console_sessions (
    id text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{64}$'),
    key_name text NOT NULL,
    scope text NOT NULL CHECK (scope IN ('admin', 'viewer')),
    -- A digest of the key's configured hash: which key (not just which name) it was.
    key_digest text NOT NULL,
    remote text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    revoked_by text,
    CHECK (expires_at > created_at)
);
CREATE INDEX tcc_console_sessions_live ON tcc_console_sessions (key_name)
    WHERE revoked_at IS NULL;

-- Every coordinator process notes itself at each recovery scan: the console shows which are
-- alive, what they claimed, and when they stopped. Rows of long-gone processes are pruned.
CREATE TABLE tcc_coordinators (
    owner text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz,
    scans bigint NOT NULL DEFAULT 0,
    claimed bigint NOT NULL DEFAULT 0,
    taken_over bigint NOT NULL DEFAULT 0,
    last_claim_at timestamptz
);
