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

-- name: list_branches
SELECT * FROM tcc_branches WHERE gid = $1 ORDER BY position;

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
-- An operator finished these branches by hand (all of them, or only branch $5): mark them
-- done, saying so ($3, states.resolved_by_hand).
UPDATE tcc_branches
SET status = $2, last_error = $3, next_retry_at = NULL,
    updated_at = now()
WHERE gid = $1 AND status = ANY($4::text[]) AND ($5::text IS NULL OR branch_id = $5)
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
-- took_over: someone held it and let the lease lapse (released leases have no owner).
WITH due AS (
    SELECT gid, lease_owner IS NOT NULL AS took_over FROM tcc_transactions
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
RETURNING t.gid, t.status, t.lease_token, due.took_over;

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

-- name: plan_for_these_values
-- For a statement whose plan depends on which optional filters are set (list_transactions):
-- the connections keep generic plans otherwise.
SET LOCAL plan_cache_mode = force_custom_plan;

-- name: list_transactions
-- Newest first; the cursor is the (created_at, gid) of the last row already seen. Planned
-- for the filters given (plan_for_these_values), so each uses its index: status, service,
-- the gid prefix ($9, a LIKE pattern: text_pattern_ops), or created_at.
SELECT * FROM tcc_transactions
WHERE ($1::text[] IS NULL OR status = ANY($1))
  AND ($2::text IS NULL OR service = $2)
  AND ($3::timestamptz IS NULL OR created_at >= $3)
  AND ($4::timestamptz IS NULL OR created_at < $4)
  AND ($5::timestamptz IS NULL OR (created_at, gid) < ($5, $6::text))
  AND ($8::text IS NULL OR dialect = $8)
  AND ($9::text IS NULL OR gid LIKE $9)
ORDER BY created_at DESC, gid DESC
LIMIT $7;

-- name: overview_counts
-- The open transactions by status (the few, from the status index), and those begun in
-- the last $1 seconds by status and minute (index-only on status and created_at).
SELECT 'open' AS part, status, NULL::timestamptz AS minute, count(*) AS n
FROM tcc_transactions
WHERE status IN ('trying', 'confirming', 'cancelling', 'failed_to_confirm', 'failed_to_cancel')
GROUP BY status
UNION ALL
SELECT 'recent', status, date_trunc('minute', created_at), count(*)
FROM tcc_transactions
WHERE status IN ('trying', 'confirming', 'cancelling', 'failed_to_confirm', 'failed_to_cancel',
                 'confirmed', 'cancelled')
  AND created_at >= now() - make_interval(secs => $1)
GROUP BY status, date_trunc('minute', created_at);

-- name: backlog
-- The metrics' gauges: unfinished transactions by status, and the oldest one's age.
SELECT status, count(*) AS n, extract(epoch FROM now() - min(created_at))::float8 AS oldest_s
FROM tcc_transactions
WHERE status IN ('trying', 'confirming', 'cancelling', 'failed_to_confirm', 'failed_to_cancel')
GROUP BY status;

-- name: overview_attention
-- What needs an operator, $1 of each kind: parked; in phase two for over a minute or more
-- than three rounds; the oldest open; trying with the deadline within a minute.
(SELECT 'parked' AS kind, t.* FROM tcc_transactions t
 WHERE status IN ('failed_to_confirm', 'failed_to_cancel')
 ORDER BY updated_at LIMIT $1)
UNION ALL
(SELECT 'retrying_long', t.* FROM tcc_transactions t
 WHERE status IN ('confirming', 'cancelling')
   AND (phase_attempts > 3 OR decided_at < now() - interval '1 minute')
 ORDER BY decided_at LIMIT $1)
UNION ALL
(SELECT 'oldest_unfinished', t.* FROM tcc_transactions t
 WHERE status IN ('trying', 'confirming', 'cancelling', 'failed_to_confirm', 'failed_to_cancel')
 ORDER BY created_at LIMIT $1)
UNION ALL
(SELECT 'near_deadline', t.* FROM tcc_transactions t
 WHERE status = 'trying' AND next_attempt_at < now() + interval '1 minute'
 ORDER BY next_attempt_at LIMIT $1);

-- name: pending_branches
-- How many branches of a parked transaction still wait for their phase-two call.
SELECT count(*) FROM tcc_branches WHERE gid = $1 AND status = ANY($2::text[]);

-- name: begin_transactions
-- Group commit: many begins in one statement, each a transaction with its branches and
-- their timeline entries. $1-$9: the transactions as parallel arrays ($9: the begin event's
-- detail; $20: how many branches each has); $10-$19: every branch, $10 saying which
-- transaction (1-based) it belongs to and $11 its position there; $21-$22: each one's trace
-- context. A gid that exists already is left alone (ON CONFLICT): its row
-- comes back empty and the caller looks at what holds it. A gid appears once per batch.
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[],
                         $6::float8[], $7::float8[], $8::jsonb[], $9::jsonb[], $20::int[],
                         $21::text[], $22::text[])
        WITH ORDINALITY AS i(gid, dialect, service, metadata, request_hash, timeout_s,
                             call_timeout_s, options, begin_detail, branch_count,
                             traceparent, tracestate, n)
), txn AS (
    INSERT INTO tcc_transactions (
        gid, status, dialect, service, metadata, request_hash, timeout_s, call_timeout_s,
        deadline, next_attempt_at, options, branch_count, traceparent, tracestate
    )
    SELECT gid, 'trying', dialect, service, metadata, request_hash, timeout_s, call_timeout_s,
           now() + make_interval(secs => timeout_s), now() + make_interval(secs => timeout_s),
           options, branch_count, traceparent, tracestate
    FROM input ORDER BY n
    ON CONFLICT (gid) DO NOTHING
    RETURNING *
), branches AS (
    INSERT INTO tcc_branches (
        gid, branch_id, position, name, try_url, confirm_url, cancel_url, payload,
        request_hash, status, data
    )
    SELECT txn.gid, b.branch_id, b.position, b.name, b.try_url, b.confirm_url, b.cancel_url,
           b.payload, b.request_hash, 'registered', b.data
    FROM unnest($10::int[], $11::int[], $12::text[], $13::text[], $14::text[], $15::text[],
                $16::text[], $17::jsonb[], $18::text[], $19::text[])
             WITH ORDINALITY AS b(n, position, branch_id, name, try_url, confirm_url,
                                  cancel_url, payload, request_hash, data, ord)
         JOIN input ON input.n = b.n
         JOIN txn ON txn.gid = input.gid
    ORDER BY b.ord
    RETURNING *
), events AS (
    INSERT INTO tcc_events (gid, kind, branch_id, detail)
    SELECT gid, kind, branch_id, detail FROM (
        SELECT txn.gid, 'begin' AS kind, NULL::text AS branch_id, input.begin_detail AS detail,
               input.n, -1 AS ord
        FROM txn JOIN input ON input.gid = txn.gid
        UNION ALL
        SELECT b.gid, 'branch_registered', b.branch_id,
               jsonb_build_object('name', b.name, 'coordinator_runs_try', b.try_url IS NOT NULL),
               input.n, b.position
        FROM branches b JOIN input ON input.gid = b.gid
    ) AS e
    ORDER BY n, ord
    RETURNING *
)
SELECT i.gid,
       (SELECT t::tcc_transactions FROM txn t WHERE t.gid = i.gid) AS txn,
       ARRAY(SELECT b::tcc_branches FROM branches b WHERE b.gid = i.gid ORDER BY position)
           AS branches,
       ARRAY(SELECT e::tcc_events FROM events e WHERE e.gid = i.gid ORDER BY id) AS events
FROM input i
ORDER BY i.n;

-- name: decide_after_tries
-- Group commit of auto mode's decisions: for each transaction, its tries' answers and the
-- decision in one statement (see TransactionLog.decide_after_tries). $1 gids, $2 the first
-- branch whose try failed (or NULL), per transaction; $3-$9 every try, $3 saying which
-- transaction (1-based) it belongs to ($5: its verdict is "tried"); $10 owner; $11 lease
-- seconds. The decision mirrors core.states.judge_decision for this case; what it does not
-- cover decides nothing. Rows are locked in gid order, so batches cannot deadlock.
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS i(gid, failed, n)
), txn AS (
    -- branch_count is the locked row's, the freshest; a snapshot that counts fewer branches
    -- is older than a registration, and then nothing is decided (the caller goes on).
    SELECT t.gid, t.status, t.deadline <= now() AS deadline_passed, input.n, input.failed,
           t.branch_count = (SELECT count(*) FROM tcc_branches c WHERE c.gid = t.gid) AS fresh
    FROM tcc_transactions t JOIN input ON input.gid = t.gid
    ORDER BY t.gid
    FOR UPDATE OF t
), tries AS (
    SELECT * FROM unnest($3::int[], $4::text[], $5::bool[], $6::int[], $7::text[],
                         $8::float8[], $9::text[])
        WITH ORDINALITY AS x(n, branch_id, tried, http_status, error, latency_ms, verdict, ord)
), recorded AS (
    UPDATE tcc_branches b
    SET status = CASE WHEN x.tried THEN 'tried' ELSE 'try_failed' END,
        attempts = b.attempts + 1, last_http_status = x.http_status, last_error = x.error,
        last_latency_ms = x.latency_ms, updated_at = now()
    FROM tries x JOIN txn ON txn.n = x.n
    WHERE b.gid = txn.gid AND b.branch_id = x.branch_id AND b.status = 'registered'
    RETURNING b.*
), decision AS (
    SELECT txn.gid, txn.n,
           CASE
               WHEN txn.status <> 'trying' THEN NULL
               WHEN txn.failed IS NOT NULL OR txn.deadline_passed THEN 'cancelling'
               WHEN txn.fresh
                    AND (SELECT count(*) FROM recorded r WHERE r.gid = txn.gid)
                    = (SELECT count(*) FROM tries x WHERE x.n = txn.n)
                    AND NOT EXISTS (
                        SELECT 1 FROM tcc_branches o
                        WHERE o.gid = txn.gid
                          AND o.branch_id NOT IN (SELECT x.branch_id FROM tries x
                                                  WHERE x.n = txn.n)
                          AND (o.status = 'try_failed'
                               OR (o.status = 'registered' AND o.try_url IS NOT NULL))
                    )
               THEN 'confirming'
           END AS target,
           CASE
               WHEN txn.failed IS NOT NULL THEN 'try_failed: ' || txn.failed
               WHEN txn.deadline_passed THEN 'timeout'
           END AS reason
    FROM txn
), decided AS (
    UPDATE tcc_transactions t
    SET status = d.target,
        cancel_reason = CASE WHEN d.target = 'cancelling' THEN d.reason END,
        decided_at = now(), phase_started_at = now(), phase_attempts = 0,
        next_attempt_at = now(), updated_at = now(),
        lease_owner = $10, lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => $11)
    FROM decision d
    WHERE t.gid = d.gid AND d.target IS NOT NULL AND t.status = 'trying'
    RETURNING t.*
), events AS (
    INSERT INTO tcc_events (gid, kind, branch_id, phase, http_status, latency_ms, error, detail)
    SELECT gid, kind, branch_id, phase, http_status, latency_ms, error, detail FROM (
        SELECT txn.gid, 'try_result' AS kind, x.branch_id, 'try' AS phase, x.http_status,
               x.latency_ms, x.error,
               jsonb_build_object('verdict', x.verdict, 'late', r.branch_id IS NULL) AS detail,
               txn.n, x.ord
        FROM tries x
             JOIN txn ON txn.n = x.n
             LEFT JOIN recorded r ON r.gid = txn.gid AND r.branch_id = x.branch_id
        UNION ALL
        SELECT d.gid, 'decision', NULL, NULL, NULL, NULL, NULL,
               jsonb_build_object(
                   'decision', CASE WHEN d.status = 'confirming' THEN 'confirm' ELSE 'cancel' END,
                   'reason', d.cancel_reason, 'by', $10::text),
               txn.n, 2147483647
        FROM decided d JOIN txn ON txn.gid = d.gid
    ) AS e
    ORDER BY n, ord
    RETURNING *
)
SELECT i.gid,
       (SELECT status FROM txn WHERE txn.gid = i.gid) AS status_before,
       (SELECT t::tcc_transactions FROM decided t WHERE t.gid = i.gid) AS decided,
       ARRAY(
           SELECT b::tcc_branches FROM (
               SELECT * FROM recorded r WHERE r.gid = i.gid
               UNION ALL
               SELECT o.* FROM tcc_branches o
               WHERE o.gid = i.gid
                 AND o.branch_id NOT IN (SELECT r.branch_id FROM recorded r WHERE r.gid = i.gid)
           ) AS b
           ORDER BY position
       ) AS branches,
       ARRAY(SELECT e::tcc_events FROM events e WHERE e.gid = i.gid ORDER BY id) AS events
FROM input i
ORDER BY i.n;

-- name: finish_done_rounds
-- Group commit of rounds in which every call came back done: record the calls, end the
-- phase and release the lease, each fenced by its lease token. $1 gids, $2 lease tokens,
-- $3 the decisions (confirm or cancel), per round; $4-$8 every call, $4 saying which round
-- (1-based) it belongs to; $9 the owner; $10/$11 the statuses a branch may be confirmed /
-- cancelled from. Each round's final status, event kinds and phase follow from its decision.
WITH input AS (
    SELECT i.*,
           CASE i.decision WHEN 'confirm' THEN 'confirmed' ELSE 'cancelled' END AS final,
           CASE i.decision WHEN 'confirm' THEN 'confirming' ELSE 'cancelling' END AS phase_status,
           CASE i.decision WHEN 'confirm' THEN 'confirm_call' ELSE 'cancel_call' END AS call_kind
    FROM unnest($1::text[], $2::uuid[], $3::text[]) WITH ORDINALITY AS i(gid, token, decision, n)
), holder AS (
    SELECT t.gid, input.n, input.final, input.phase_status, input.call_kind, input.decision
    FROM tcc_transactions t JOIN input ON input.gid = t.gid AND t.lease_token = input.token
    ORDER BY t.gid
    FOR UPDATE OF t
), calls AS (
    SELECT * FROM unnest($4::int[], $5::text[], $6::int[], $7::text[], $8::float8[])
        WITH ORDINALITY AS c(n, branch_id, http_status, error, latency_ms, ord)
), moved AS (
    UPDATE tcc_branches b
    SET status = h.final, attempts = b.attempts + 1, last_http_status = c.http_status,
        last_error = c.error, last_latency_ms = c.latency_ms, next_retry_at = NULL,
        updated_at = now()
    FROM calls c JOIN holder h ON h.n = c.n
    WHERE b.gid = h.gid AND b.branch_id = c.branch_id
      AND b.status = ANY(CASE WHEN h.decision = 'confirm' THEN $10::text[]
                              ELSE $11::text[] END)
    RETURNING b.*
), finished AS (
    UPDATE tcc_transactions t
    SET status = h.final, phase_attempts = t.phase_attempts + 1, updated_at = now(),
        next_attempt_at = NULL, finished_at = now(),
        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
    FROM holder h
    WHERE t.gid = h.gid AND t.status = h.phase_status
    RETURNING t.*
), events AS (
    INSERT INTO tcc_events (gid, kind, branch_id, phase, http_status, latency_ms, error, detail)
    SELECT gid, kind, branch_id, phase, http_status, latency_ms, error, detail FROM (
        SELECT h.gid, h.call_kind AS kind, c.branch_id, h.decision AS phase, c.http_status,
               c.latency_ms, c.error, '{"done": true}'::jsonb AS detail, h.n, c.ord
        FROM calls c JOIN holder h ON h.n = c.n
        UNION ALL
        SELECT f.gid, f.status, NULL, NULL, NULL, NULL, NULL,
               jsonb_build_object('rounds', f.phase_attempts, 'by', $9::text), h.n, 2147483647
        FROM finished f JOIN holder h ON h.gid = f.gid
    ) AS e
    ORDER BY n, ord
    RETURNING *
)
SELECT i.gid,
       (SELECT t::tcc_transactions FROM finished t WHERE t.gid = i.gid) AS finished,
       ARRAY(
           SELECT b::tcc_branches FROM (
               SELECT * FROM moved m WHERE m.gid = i.gid
               UNION ALL
               SELECT o.* FROM tcc_branches o
               WHERE o.gid = i.gid AND EXISTS (SELECT 1 FROM holder h WHERE h.gid = i.gid)
                 AND o.branch_id NOT IN (SELECT m.branch_id FROM moved m WHERE m.gid = i.gid)
           ) AS b
           ORDER BY position
       ) AS branches,
       ARRAY(SELECT e::tcc_events FROM events e WHERE e.gid = i.gid ORDER BY id) AS events
FROM input i
ORDER BY i.n;

-- name: register_branch
-- A branch registered while the transaction is trying, in one statement: the transaction
-- is locked (registrations and decisions on it are serialised), the rules are checked, and
-- the branch and its timeline entry are written when they allow. $2-$9: the branch; $10 the
-- most branches a transaction may have. What the rules saw comes back, so that the caller
-- can say why nothing was written.
WITH txn AS (
    -- branch_count is the locked row's, so position and limit hold against a registration
    -- that committed while this one waited for the lock (which the snapshot may not show;
    -- a branch id registered meanwhile then fails the primary key, and the caller retries).
    SELECT gid, status, deadline <= now() AS deadline_passed, branch_count
    FROM tcc_transactions WHERE gid = $1 FOR UPDATE
), existing AS (
    SELECT b.* FROM tcc_branches b, txn WHERE b.gid = txn.gid AND b.branch_id = $2
), inserted AS (
    INSERT INTO tcc_branches (
        gid, branch_id, position, name, try_url, confirm_url, cancel_url, payload,
        request_hash, status, data
    )
    SELECT txn.gid, $2, txn.branch_count, $3, $4, $5, $6, $7, $8, 'registered', $9
    FROM txn
    WHERE txn.status = 'trying' AND NOT txn.deadline_passed AND txn.branch_count < $10
      AND NOT EXISTS (SELECT 1 FROM existing)
    RETURNING *
), counted AS (
    UPDATE tcc_transactions t SET branch_count = t.branch_count + 1
    FROM inserted WHERE t.gid = inserted.gid
), event AS (
    INSERT INTO tcc_events (gid, kind, branch_id, detail)
    SELECT gid, 'branch_registered', branch_id,
           jsonb_build_object('name', name, 'coordinator_runs_try', try_url IS NOT NULL)
    FROM inserted
)
SELECT (SELECT status FROM txn) AS status,
       (SELECT deadline_passed FROM txn) AS deadline_passed,
       (SELECT branch_count FROM txn) AS branches,
       (SELECT e::tcc_branches FROM existing e) AS existing,
       (SELECT e.request_hash FROM existing e) AS existing_hash,
       (SELECT i::tcc_branches FROM inserted i) AS inserted;

-- name: record_try
-- A try's answer and its timeline entry in one statement. CAS: only a branch whose try has
-- not been judged takes it ($7: the statuses it may move from); a late answer is only
-- logged. The branch comes back as the log holds it, with the transaction's status.
WITH moved AS (
    UPDATE tcc_branches
    SET status = $3, attempts = attempts + 1, last_http_status = $4, last_error = $5,
        last_latency_ms = $6, updated_at = now()
    WHERE gid = $1 AND branch_id = $2 AND status = ANY($7::text[])
    RETURNING *
), current AS (
    SELECT * FROM moved
    UNION ALL
    SELECT * FROM tcc_branches
    WHERE gid = $1 AND branch_id = $2 AND NOT EXISTS (SELECT 1 FROM moved)
), event AS (
    INSERT INTO tcc_events (gid, kind, branch_id, phase, http_status, latency_ms, error, detail)
    SELECT gid, 'try_result', branch_id, 'try', $4, $6, $5,
           jsonb_build_object('verdict', $8::text, 'late', NOT EXISTS (SELECT 1 FROM moved))
    FROM current
)
SELECT (SELECT c::tcc_branches FROM current c) AS branch,
       EXISTS (SELECT 1 FROM moved) AS recorded;

-- name: decide_judged
-- A decision in one statement. The transaction is locked; the decision is written only when
-- the rules allow it, which are core.states.judge_decision's: $2 the status it moves to,
-- $9 whether it is a confirm (which also needs the deadline ahead and every try answered
-- and none failed). $3 cancel reason, $4 owner, $5 lease seconds, $6 the statuses it may
-- move from, $7/$8 options and call timeout to set with it (NULL: none), $10 the operator
-- who decided (NULL: the client or the coordinator). What the rules saw
-- comes back (the status, the deadline, the branches), for the caller's judgement.
WITH txn AS (
    SELECT t AS row, t.gid, t.status, t.branch_count, t.deadline <= now() AS deadline_passed
    FROM tcc_transactions t WHERE t.gid = $1 FOR UPDATE
), branches AS (
    SELECT b.* FROM tcc_branches b, txn WHERE b.gid = txn.gid
), allowed AS (
    -- The branches must be the locked row's (its branch_count): a snapshot older than a
    -- registration decides nothing, and the caller asks again.
    SELECT txn.gid FROM txn
    WHERE txn.status = ANY($6::text[])
      AND txn.branch_count = (SELECT count(*) FROM branches)
      AND (NOT $9::bool OR (
              NOT txn.deadline_passed
              AND NOT EXISTS (
                  SELECT 1 FROM branches b
                  WHERE b.status = 'try_failed'
                     OR (b.status = 'registered' AND b.try_url IS NOT NULL))))
), decided AS (
    UPDATE tcc_transactions t
    SET status = $2, cancel_reason = $3, decided_at = now(), phase_started_at = now(),
        phase_attempts = 0, next_attempt_at = now(), updated_at = now(),
        lease_owner = $4, lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => $5),
        options = CASE WHEN $7::jsonb IS NULL THEN t.options ELSE t.options || $7::jsonb END,
        call_timeout_s = COALESCE($8, t.call_timeout_s)
    FROM allowed
    WHERE t.gid = allowed.gid
    RETURNING t.*
), event AS (
    INSERT INTO tcc_events (gid, kind, detail)
    SELECT gid, 'decision',
           jsonb_build_object(
               'decision', CASE WHEN $9::bool THEN 'confirm' ELSE 'cancel' END,
               'reason', $3::text, 'by', $4::text)
           || CASE WHEN $10::text IS NULL THEN '{}'::jsonb
                   ELSE jsonb_build_object('actor', $10::text) END
    FROM decided
)
SELECT (SELECT row FROM txn) AS before,
       (SELECT deadline_passed FROM txn) AS deadline_passed,
       (SELECT branch_count = (SELECT count(*) FROM branches) FROM txn) AS fresh,
       (SELECT d::tcc_transactions FROM decided d) AS decided,
       ARRAY(SELECT b::tcc_branches FROM branches b ORDER BY position) AS branches;

-- name: transaction_detail
-- A transaction, its branches and the first $2 events of its timeline, as of one moment
-- (one statement sees one snapshot).
SELECT (SELECT t::tcc_transactions FROM tcc_transactions t WHERE t.gid = $1) AS txn,
       ARRAY(SELECT b::tcc_branches FROM tcc_branches b WHERE b.gid = $1 ORDER BY position)
           AS branches,
       ARRAY(SELECT e::tcc_events FROM tcc_events e WHERE e.gid = $1 ORDER BY id LIMIT $2)
           AS events;

-- name: now
SELECT now();

-- --- alerts (TCC_ALERT_WEBHOOK) ---------------------------------------------------------

-- name: insert_alert
-- Written in the transaction of the change it reports. One per kind, stay in phase two
-- (an operator's retry starts a new stay) and round: two coordinators never raise it twice.
INSERT INTO tcc_alerts (gid, kind, phase_started_at, round, body)
SELECT gid, $2, coalesce(phase_started_at, decided_at, created_at), phase_attempts, $3
FROM tcc_transactions WHERE gid = $1
ON CONFLICT (gid, kind, phase_started_at, round) DO NOTHING;

-- name: claim_alerts
-- Due alerts nobody holds, under a lease ($1 owner, $3 seconds): SKIP LOCKED splits them
-- between coordinators, and a delivery cut short by a crash is sent again once it lapses.
UPDATE tcc_alerts a
SET lease_owner = $1, lease_expires_at = now() + make_interval(secs => $3)
FROM (
    SELECT id FROM tcc_alerts
    WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= now()
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) due
WHERE a.id = due.id
RETURNING a.id, a.gid, a.kind, a.body, a.attempts,
          extract(epoch FROM now() - a.created_at)::float8 AS age_s;

-- name: alert_delivered
UPDATE tcc_alerts
SET delivered_at = now(), attempts = attempts + 1, last_error = NULL,
    lease_owner = NULL, lease_expires_at = NULL
WHERE id = $1 AND lease_owner = $2;

-- name: alert_failed
-- The next try in $4 seconds, or (NULL) given up.
UPDATE tcc_alerts
SET attempts = attempts + 1, last_error = $3,
    next_attempt_at = CASE WHEN $4::float8 IS NULL THEN next_attempt_at
                           ELSE now() + make_interval(secs => $4::float8) END,
    given_up_at = CASE WHEN $4::float8 IS NULL THEN now() END,
    lease_owner = NULL, lease_expires_at = NULL
WHERE id = $1 AND lease_owner = $2;

-- --- retention (TCC_RETENTION_DAYS, tcc prune) -------------------------------------------

-- name: prune_finished
-- One batch of finished transactions begun and ended more than $1 seconds ago, oldest
-- first; their branches and events go with them (ON DELETE CASCADE). SKIP LOCKED: a row
-- someone holds waits for the next batch instead of holding this one up. The created_at
-- condition follows from the finished_at one; it is there for the created_at index. The
-- batch's gids go in as an array, so that even the connections' generic plan deletes them
-- through the primary key instead of joining them to a scan of the whole table.
DELETE FROM tcc_transactions WHERE gid = ANY (ARRAY(
    SELECT gid FROM tcc_transactions
    WHERE created_at < now() - make_interval(secs => $1)
      AND finished_at < now() - make_interval(secs => $1)
      AND status IN ('confirmed', 'cancelled')
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: count_prunable
SELECT count(*) FROM tcc_transactions
WHERE created_at < now() - make_interval(secs => $1)
  AND finished_at < now() - make_interval(secs => $1)
  AND status IN ('confirmed', 'cancelled');

-- name: prune_alerts
-- Alerts already delivered or given up, older than $1 seconds, a batch of $2.
DELETE FROM tcc_alerts WHERE id IN (
    SELECT id FROM tcc_alerts
    WHERE created_at < now() - make_interval(secs => $1)
      AND (delivered_at IS NOT NULL OR given_up_at IS NOT NULL)
    ORDER BY id
    LIMIT $2
);

-- name: parked_branches
-- Why each of the parked transactions $1 waits: its first branch not yet done (its
-- status not one of $2).
SELECT DISTINCT ON (gid) * FROM tcc_branches
WHERE gid = ANY($1::text[]) AND status <> ALL($2::text[])
ORDER BY gid, position;

-- --- coordinators (the console's view of who runs) ---------------------------------------

-- name: coordinator_seen
-- A coordinator's recovery scan: note it alive, with what the scan claimed ($2) and how many
-- of those another process had let lapse ($3).
INSERT INTO tcc_coordinators AS c (owner, scans, claimed, taken_over, last_claim_at)
VALUES ($1, 1, $2::bigint, $3::bigint, CASE WHEN $2::bigint > 0 THEN now() END)
ON CONFLICT (owner) DO UPDATE
SET last_seen_at = now(), stopped_at = NULL, scans = c.scans + 1,
    claimed = c.claimed + $2::bigint, taken_over = c.taken_over + $3::bigint,
    last_claim_at = CASE WHEN $2::bigint > 0 THEN now() ELSE c.last_claim_at END;

-- name: coordinator_stopped
UPDATE tcc_coordinators SET stopped_at = now(), last_seen_at = now() WHERE owner = $1;

-- name: coordinators_seen
-- The coordinators seen in the last $1 seconds (stopped ones too), newest first, with the
-- live leases each holds now.
SELECT c.*, extract(epoch FROM now() - c.last_seen_at)::float8 AS seen_ago_s,
       (SELECT count(*) FROM tcc_transactions t
        WHERE t.lease_owner = c.owner AND t.lease_expires_at > now()) AS leases_held
FROM tcc_coordinators c
WHERE c.last_seen_at > now() - make_interval(secs => $1)
ORDER BY c.started_at DESC
LIMIT 50;

-- name: prune_coordinators
-- Coordinators not seen for $1 seconds.
DELETE FROM tcc_coordinators WHERE last_seen_at < now() - make_interval(secs => $1);

-- --- console sessions -----------------------------------------------------------------------

-- name: open_session
INSERT INTO tcc_console_sessions (id, key_name, scope, key_digest, remote, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6));

-- name: session_is_live
-- Whether session $1 is neither revoked nor expired; noted as seen (at most twice a minute,
-- so that a console polling its pages does not write at every poll).
WITH live AS (
    SELECT id FROM tcc_console_sessions
    WHERE id = $1 AND revoked_at IS NULL AND expires_at > now()
), seen AS (
    UPDATE tcc_console_sessions SET last_seen_at = now()
    WHERE id IN (SELECT id FROM live) AND last_seen_at < now() - interval '30 seconds'
)
SELECT count(*) FROM live;

-- name: revoke_sessions
-- End live sessions: the one whose id begins with $2, or every one of key $3, or (both
-- null) all; by $1. The number ended.
WITH ended AS (
    UPDATE tcc_console_sessions SET revoked_at = now(), revoked_by = $1
    WHERE revoked_at IS NULL AND expires_at > now()
      AND ($2::text IS NULL OR id LIKE $2 || '%')
      AND ($3::text IS NULL OR key_name = $3)
    RETURNING id
)
SELECT count(*) FROM ended;

-- name: revoke_sessions_of_other_keys
-- End the live sessions opened with a key that is not among the configured ones (name,
-- scope, digest of its hash, as arrays $2, $3, $4); by $1.
WITH ended AS (
    UPDATE tcc_console_sessions s SET revoked_at = now(), revoked_by = $1
    WHERE revoked_at IS NULL AND expires_at > now()
      AND (key_name, scope, key_digest) NOT IN (
          SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))
    RETURNING id
)
SELECT count(*) FROM ended;

-- name: list_sessions
-- Console sessions, newest first: live ones only unless $1.
SELECT * FROM tcc_console_sessions
WHERE $1::bool OR (revoked_at IS NULL AND expires_at > now())
ORDER BY created_at DESC
LIMIT $2;

-- name: prune_sessions
-- Sessions that ended (expired or revoked) more than $1 seconds ago.
DELETE FROM tcc_console_sessions
WHERE least(expires_at, coalesce(revoked_at, expires_at)) < now() - make_interval(secs => $1);
