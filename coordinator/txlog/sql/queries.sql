-- Every SQL statement the coordinator runs, one named block each ("-- name: x").
-- coordinator/txlog/postgres.py refers to the blocks by name (coordinator/txlog/queries.py).
-- Times always come from the database clock (now()), never from the host.

-- name: migrations_lock
SELECT pg_advisory_lock(7259143027164385001);

-- name: migrations_unlock
SELECT pg_advisory_unlock(7259143027164385001);

-- name: migrations_create_table
CREATE TABLE IF NOT EXISTS tcc_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_table_exists
SELECT to_regclass('tcc_schema_migrations') IS NOT NULL;

-- name: migrations_applied
SELECT version, name FROM tcc_schema_migrations ORDER BY version;

-- name: migrations_record
INSERT INTO tcc_schema_migrations (version, name) VALUES ($1, $2);

-- name: ping
SELECT 1;

-- name: insert_transaction
-- $6 is timeout_s; ON CONFLICT lets a repeated begin find the original.
INSERT INTO tcc_transactions (
    gid, status, dialect, service, metadata, request_hash, timeout_s, call_timeout_s,
    deadline, next_attempt_at, options
)
VALUES ($1, 'trying', $2, $3, $4, $5, $6, $7,
        now() + make_interval(secs => $6), now() + make_interval(secs => $6), $8)
ON CONFLICT (gid) DO NOTHING
RETURNING *;

-- name: transaction_request_hash
SELECT request_hash FROM tcc_transactions WHERE gid = $1;

-- name: get_transaction
SELECT * FROM tcc_transactions WHERE gid = $1;

-- name: lock_transaction
-- Serialises registrations and decisions on one transaction.
SELECT *, deadline <= now() AS deadline_passed FROM tcc_transactions WHERE gid = $1 FOR UPDATE;

-- name: insert_branch
INSERT INTO tcc_branches (
    gid, branch_id, position, name, try_url, confirm_url, cancel_url, payload,
    request_hash, status, data
)
VALUES ($1, $2, (SELECT count(*) FROM tcc_branches WHERE gid = $1), $3, $4, $5, $6, $7, $8,
        'registered', $9)
ON CONFLICT (gid, branch_id) DO NOTHING
RETURNING *;

-- name: get_branch
SELECT * FROM tcc_branches WHERE gid = $1 AND branch_id = $2;

-- name: count_branches
SELECT count(*) FROM tcc_branches WHERE gid = $1;

-- name: list_branches
SELECT * FROM tcc_branches WHERE gid = $1 ORDER BY position;

-- name: record_try_result
-- CAS: only a branch whose try has not been judged yet takes the result. A late
-- answer for a branch already cancelled (the deadline passed) changes nothing.
UPDATE tcc_branches
SET status = $3, attempts = attempts + 1, last_http_status = $4, last_error = $5,
    last_latency_ms = $6, updated_at = now()
WHERE gid = $1 AND branch_id = $2 AND status = ANY($7::text[])
RETURNING *;

-- name: decide
-- CAS from the statuses the state machine allows; the lease goes to the decider,
-- who runs the first phase-two round at once.
UPDATE tcc_transactions
SET status = $2, cancel_reason = $3, decided_at = now(), phase_started_at = now(),
    phase_attempts = 0, next_attempt_at = now(), updated_at = now(),
    lease_owner = $4, lease_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => $5)
WHERE gid = $1 AND status = ANY($6::text[])
RETURNING *;

-- name: retry_parked
-- An operator sends a parked transaction back into phase two with a fresh retry
-- budget. With an owner ($2) the caller runs the first round itself; without one
-- (the CLI) the next recovery scan of any coordinator picks it up.
UPDATE tcc_transactions
SET status = $3, phase_started_at = now(), next_attempt_at = now(), updated_at = now(),
    phase_attempts = 0, lease_owner = $2,
    lease_token = CASE WHEN $2::text IS NULL THEN NULL ELSE gen_random_uuid() END,
    lease_expires_at = CASE WHEN $2::text IS NULL THEN NULL
                            ELSE now() + make_interval(secs => $4) END
WHERE gid = $1 AND status = $5
RETURNING *;

-- name: resolve_branches
-- An operator finished these branches by hand: mark them done, saying so.
UPDATE tcc_branches
SET status = $2, last_error = 'resolved by an operator: ' || $3, next_retry_at = NULL,
    updated_at = now()
WHERE gid = $1 AND status = ANY($4::text[])
RETURNING branch_id;

-- name: resolve_transaction
UPDATE tcc_transactions
SET status = $2, finished_at = now(), updated_at = now(), next_attempt_at = NULL,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE gid = $1 AND status = $3
RETURNING *;

-- name: claim_due
-- Active transactions whose deadline or retry time has come and that nobody
-- holds: SKIP LOCKED so that coordinators scanning together split the work.
WITH due AS (
    SELECT gid FROM tcc_transactions
    WHERE status IN ('trying', 'confirming', 'cancelling')
      AND next_attempt_at <= now()
      AND (lease_expires_at IS NULL OR lease_expires_at <= now())
    ORDER BY next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE tcc_transactions t
SET lease_owner = $1, lease_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => $3)
FROM due
WHERE t.gid = due.gid
RETURNING t.gid, t.status, t.lease_token;

-- name: renew_lease
UPDATE tcc_transactions SET lease_expires_at = now() + make_interval(secs => $3)
WHERE gid = $1 AND lease_token = $2
RETURNING gid;

-- name: release_lease
UPDATE tcc_transactions
SET lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE gid = $1 AND lease_token = $2;

-- name: round_context
-- What a phase-two round needs, read under the lease; budget_spent uses the DB clock.
SELECT *, phase_started_at + make_interval(secs => $3) <= now() AS budget_spent
FROM tcc_transactions WHERE gid = $1 AND lease_token = $2;

-- name: record_phase_call
-- Fenced: only the holder of the current lease may record a phase-two outcome.
-- FOR SHARE waits for a concurrent takeover to commit and then sees its new token,
-- so a stale holder can never slip a write in between.
WITH holder AS (
    SELECT gid FROM tcc_transactions WHERE gid = $1 AND lease_token = $8 FOR SHARE
), moved AS (
    UPDATE tcc_branches b
    SET status = CASE WHEN $3 THEN $4 ELSE b.status END,
        attempts = b.attempts + 1, last_http_status = $5, last_error = $6,
        last_latency_ms = $7, next_retry_at = NULL, updated_at = now()
    FROM holder
    WHERE b.gid = holder.gid AND b.branch_id = $2 AND b.status = ANY($9::text[])
    RETURNING b.branch_id
)
SELECT EXISTS (SELECT 1 FROM holder) AS holds_lease, EXISTS (SELECT 1 FROM moved) AS recorded;

-- name: finish_round
-- Fenced CAS that ends a round: final, parked, or the next retry time (now() + $5 s).
-- The lease is released so any coordinator can take the next round.
UPDATE tcc_transactions
SET status = $3, phase_attempts = phase_attempts + 1, updated_at = now(),
    next_attempt_at = CASE WHEN $3 IN ('confirming', 'cancelling')
                           THEN now() + make_interval(secs => $5) END,
    finished_at = CASE WHEN $3 IN ('confirmed', 'cancelled') THEN now() END,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE gid = $1 AND lease_token = $2 AND status = ANY($4::text[])
RETURNING *;

-- name: claim_stale_try
-- A try that never got an answer logged (its coordinator died mid-call, or the log
-- was unreachable) may be run again once it is older than a call could take.
-- The CAS on updated_at lets only one repeat re-run it.
UPDATE tcc_branches b SET updated_at = now()
FROM tcc_transactions t
WHERE b.gid = $1 AND b.branch_id = $2 AND t.gid = b.gid AND t.status = 'trying'
  AND b.status = 'registered' AND b.try_url IS NOT NULL
  AND b.updated_at < now() - make_interval(secs => $3)
RETURNING b.*;

-- name: schedule_branch_retry
UPDATE tcc_branches SET next_retry_at = $3
WHERE gid = $1 AND branch_id = ANY($2::text[]);

-- name: insert_event
INSERT INTO tcc_events (gid, kind, branch_id, phase, http_status, latency_ms, error, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: insert_or_repeat_event
-- A failure identical to the latest event of the same branch (same kind, phase, HTTP
-- status, error and detail) only counts as one more repeat of it: a participant that stays
-- down for a day must not grow the timeline by one row per round and branch.
WITH latest AS (
    SELECT id, kind, phase, http_status, error, detail FROM tcc_events
    WHERE gid = $1 AND branch_id IS NOT DISTINCT FROM $3
    ORDER BY id DESC
    LIMIT 1
), repeated AS (
    UPDATE tcc_events e
    SET repeats = e.repeats + 1, last_at = clock_timestamp(), latency_ms = $6
    FROM latest
    WHERE e.id = latest.id AND latest.kind = $2 AND latest.phase IS NOT DISTINCT FROM $4
      AND latest.http_status IS NOT DISTINCT FROM $5 AND latest.error IS NOT DISTINCT FROM $7
      AND latest.detail = $8::jsonb
    RETURNING e.id
)
INSERT INTO tcc_events (gid, kind, branch_id, phase, http_status, latency_ms, error, detail)
SELECT $1, $2, $3, $4, $5, $6, $7, $8
WHERE NOT EXISTS (SELECT 1 FROM repeated);

-- name: list_events
-- One page of the timeline, oldest first, after the event id $2 (0: from the start).
SELECT * FROM tcc_events WHERE gid = $1 AND id > $2 ORDER BY id LIMIT $3;

-- name: set_options
-- Protocol options given again when deciding (DTM's submit); only while trying.
UPDATE tcc_transactions
SET options = options || $2, call_timeout_s = COALESCE($3, call_timeout_s), updated_at = now()
WHERE gid = $1 AND status = 'trying'
RETURNING gid;

-- name: list_transactions
-- Newest first; the cursor is the (created_at, gid) of the last row already seen.
SELECT * FROM tcc_transactions
WHERE ($1::text[] IS NULL OR status = ANY($1))
  AND ($2::text IS NULL OR service = $2)
  AND ($3::timestamptz IS NULL OR created_at >= $3)
  AND ($4::timestamptz IS NULL OR created_at < $4)
  AND ($5::timestamptz IS NULL OR (created_at, gid) < ($5, $6::text))
ORDER BY created_at DESC, gid DESC
LIMIT $7;
