-- Every SQL statement the coordinator runs, one named block each ("-- name: x"), each opening
-- with a line saying what it does. coordinator/txlog/postgres.py refers to the blocks by name
-- (coordinator/txlog/queries.py compiles them once).
--
-- :name is a parameter, bound by name at each call. Every status, event kind and guard a
-- write applies is such a parameter, worked out by coordinator/core/writes.py: no statement
-- decides a rule itself. {name} is a set of statuses the core defines (queries.STATUS_SETS),
-- written in when the file is read, for the reads and scans a partial index serves.
-- Times always come from the database clock (now()), never from the host.

-- name: migrations_lock
-- Only one process migrates at a time; the others wait here.
SELECT pg_advisory_lock(7259143027164385001);

-- name: migrations_unlock
-- Let the next process migrate (it finds nothing to do).
SELECT pg_advisory_unlock(7259143027164385001);

-- name: migrations_create_table
-- Where the applied migrations are recorded.
CREATE TABLE IF NOT EXISTS tcc_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_table_exists
-- Whether any migration ran here.
SELECT to_regclass('tcc_schema_migrations') IS NOT NULL;

-- name: migrations_applied
-- The migrations applied, in order.
SELECT version, name FROM tcc_schema_migrations ORDER BY version;

-- name: migrations_record
-- A migration applied (in its own database transaction).
INSERT INTO tcc_schema_migrations (version, name) VALUES (:version, :name);

-- name: transaction_request_hash
-- What the begin of :gid asked for (NULL: no such transaction).
SELECT request_hash FROM tcc_transactions WHERE gid = :gid;

-- name: get_transaction
-- One transaction.
SELECT * FROM tcc_transactions WHERE gid = :gid;

-- name: lock_transaction
-- Serialises an operator's action with registrations and decisions on one transaction.
SELECT *, deadline <= now() AS deadline_passed FROM tcc_transactions WHERE gid = :gid FOR UPDATE;

-- name: get_branch
-- One branch.
SELECT * FROM tcc_branches WHERE gid = :gid AND branch_id = :branch_id;

-- name: list_branches
-- A transaction's branches in registration order.
SELECT * FROM tcc_branches WHERE gid = :gid ORDER BY position;

-- name: retry_parked
-- An operator sends a parked transaction back into phase two (to :target, from one of
-- :sources) with a fresh retry budget. With an :owner the caller runs the first round
-- itself; without one (the CLI) the next recovery scan of any coordinator picks it up.
UPDATE tcc_transactions
SET status = :target, phase_started_at = now(), next_attempt_at = now(), updated_at = now(),
    phase_attempts = 0, lease_owner = :owner,
    lease_token = CASE WHEN :owner::text IS NULL THEN NULL ELSE gen_random_uuid() END,
    lease_expires_at = CASE WHEN :owner::text IS NULL THEN NULL
                            ELSE now() + make_interval(secs => :lease_ttl_s) END
WHERE gid = :gid AND status = ANY(:sources::text[])
RETURNING *;

-- name: resolve_branches
-- An operator finished these branches by hand (all of them, or only :branch_id): those in
-- one of :sources move to :target, their :last_error saying so.
UPDATE tcc_branches
SET status = :target, last_error = :last_error, next_retry_at = NULL, updated_at = now()
WHERE gid = :gid AND status = ANY(:sources::text[])
  AND (:branch_id::text IS NULL OR branch_id = :branch_id)
RETURNING branch_id;

-- name: resolve_transaction
-- The parked transaction itself, once no branch waits: to :target, from one of :sources.
UPDATE tcc_transactions
SET status = :target, finished_at = now(), updated_at = now(), next_attempt_at = NULL,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE gid = :gid AND status = ANY(:sources::text[])
RETURNING *;

-- name: claim_due
-- Active transactions whose deadline or retry time has come and that nobody holds, :limit of
-- them, leased to :owner for :lease_ttl_s seconds: SKIP LOCKED so that coordinators scanning
-- together split the work. The statuses are tcc_transactions_due's, so that index serves it.
-- took_over: someone held it and let the lease lapse (released leases have no owner).
WITH due AS (
    SELECT gid, lease_owner IS NOT NULL AS took_over FROM tcc_transactions
    WHERE status IN {active_statuses}
      AND next_attempt_at <= now()
      AND (lease_expires_at IS NULL OR lease_expires_at <= now())
    ORDER BY next_attempt_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE tcc_transactions t
SET lease_owner = :owner, lease_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => :lease_ttl_s)
FROM due
WHERE t.gid = due.gid
RETURNING t.gid, t.status, t.lease_token, due.took_over;

-- name: renew_lease
-- The holder of the lease (:token) keeps it :lease_ttl_s seconds more.
UPDATE tcc_transactions SET lease_expires_at = now() + make_interval(secs => :lease_ttl_s)
WHERE gid = :gid AND lease_token = :token
RETURNING gid;

-- name: release_lease
-- The holder of the lease (:token) lets it go.
UPDATE tcc_transactions
SET lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE gid = :gid AND lease_token = :token;

-- name: round_context
-- What a phase-two round needs, read under the lease; budget_spent and deadline_passed use
-- the DB clock.
SELECT *, phase_started_at + make_interval(secs => :give_up_after_s) <= now() AS budget_spent,
       deadline <= now() AS deadline_passed
FROM tcc_transactions WHERE gid = :gid AND lease_token = :token;

-- name: record_phase_call
-- A confirm or cancel call's answer (core.writes.phase_call), fenced: only the holder of the
-- current lease (:token) records it. A branch in one of :sources counts the call and moves to
-- :target (NULL: it stays). FOR SHARE waits for a concurrent takeover to commit and then sees
-- its new token, so a stale holder can never slip a write in between.
WITH holder AS (
    SELECT gid FROM tcc_transactions WHERE gid = :gid AND lease_token = :token FOR SHARE
), moved AS (
    UPDATE tcc_branches b
    SET status = coalesce(:target::text, b.status), attempts = b.attempts + 1,
        last_http_status = :http_status, last_error = :error, last_latency_ms = :latency_ms,
        next_retry_at = NULL, updated_at = now()
    FROM holder
    WHERE b.gid = holder.gid AND b.branch_id = :branch_id AND b.status = ANY(:sources::text[])
    RETURNING b.branch_id
)
SELECT EXISTS (SELECT 1 FROM holder) AS holds_lease, EXISTS (SELECT 1 FROM moved) AS recorded;

-- name: finish_round
-- The end of a round (core.writes.round_end), fenced by the lease (:token): the transaction
-- moves to :target from one of :sources, its next round due in :retry_in_s seconds (NULL:
-- none), ended if :finishes. The lease is released so any coordinator can take the next round.
UPDATE tcc_transactions
SET status = :target, phase_attempts = phase_attempts + 1, updated_at = now(),
    next_attempt_at = now() + make_interval(secs => :retry_in_s::float8),
    finished_at = CASE WHEN :finishes::bool THEN now() END,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE gid = :gid AND lease_token = :token AND status = ANY(:sources::text[])
RETURNING *;

-- name: change_course
-- A saga stops its actions and compensates (core.writes.course_change), fenced by the lease
-- (:token), which it keeps: from one of :sources to :target with :cancel_reason; the
-- compensations start with a fresh retry budget.
UPDATE tcc_transactions
SET status = :target, cancel_reason = :cancel_reason, phase_started_at = now(),
    phase_attempts = 0, next_attempt_at = now(), updated_at = now()
WHERE gid = :gid AND lease_token = :token AND status = ANY(:sources::text[])
RETURNING *;

-- name: postpone
-- A prepared message asked about again, or a round held by an open circuit, in :retry_in_s
-- seconds (core.writes.postpone_query, hold_round), fenced by the lease (:token), which it
-- lets go; only while it is in one of :sources. A message's questions are counted
-- (:counts_round; phase_attempts: a decision starts it again from 0) for the backoff.
UPDATE tcc_transactions
SET next_attempt_at = now() + make_interval(secs => :retry_in_s::float8), updated_at = now(),
    phase_attempts = phase_attempts + CASE WHEN :counts_round::bool THEN 1 ELSE 0 END,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE gid = :gid AND lease_token = :token AND status = ANY(:sources::text[])
RETURNING *;

-- name: claim_stale_try
-- A try that never got an answer logged (its coordinator died mid-call, or the log was
-- unreachable) may be run again once older than a call could take (:stale_after_s), while
-- the transaction is in one of :open_in and the branch, whose try the coordinator runs, in
-- one of :pending_in (core.writes.STALE_TRY). The CAS on updated_at lets one repeat re-run it.
UPDATE tcc_branches b SET updated_at = now()
FROM tcc_transactions t
WHERE b.gid = :gid AND b.branch_id = :branch_id AND t.gid = b.gid
  AND t.status = ANY(:open_in::text[]) AND b.status = ANY(:pending_in::text[])
  AND b.try_url IS NOT NULL
  AND b.updated_at < now() - make_interval(secs => :stale_after_s)
RETURNING b.*;

-- name: schedule_branch_retry
-- The branches the next round calls, and when.
UPDATE tcc_branches SET next_retry_at = :at
WHERE gid = :gid AND branch_id = ANY(:branch_ids::text[]);

-- name: insert_event
-- A line of the timeline.
INSERT INTO tcc_events (gid, kind, branch_id, phase, http_status, latency_ms, error, detail)
VALUES (:gid, :kind, :branch_id, :phase, :http_status, :latency_ms, :error, :detail);

-- name: insert_or_repeat_event
-- A failure identical to the latest event of the same branch (same kind, phase, HTTP
-- status, error and detail) only counts as one more repeat of it: a participant that stays
-- down for a day must not grow the timeline by one row per round and branch.
WITH latest AS (
    SELECT id, kind, phase, http_status, error, detail FROM tcc_events
    WHERE gid = :gid AND branch_id IS NOT DISTINCT FROM :branch_id
    ORDER BY id DESC
    LIMIT 1
), repeated AS (
    UPDATE tcc_events e
    SET repeats = e.repeats + 1, last_at = clock_timestamp(), latency_ms = :latency_ms
    FROM latest
    WHERE e.gid = :gid AND e.id = latest.id AND latest.kind = :kind AND latest.phase IS NOT DISTINCT FROM :phase
      AND latest.http_status IS NOT DISTINCT FROM :http_status
      AND latest.error IS NOT DISTINCT FROM :error AND latest.detail = :detail::jsonb
    RETURNING e.id
)
INSERT INTO tcc_events (gid, kind, branch_id, phase, http_status, latency_ms, error, detail)
SELECT :gid, :kind, :branch_id, :phase, :http_status, :latency_ms, :error, :detail
WHERE NOT EXISTS (SELECT 1 FROM repeated);

-- name: list_events
-- One page of the timeline, oldest first, after the event id :after_id (0: from the start).
SELECT * FROM tcc_events WHERE gid = :gid AND id > :after_id ORDER BY id LIMIT :limit;

-- name: plan_for_these_values
-- For a statement whose plan depends on which optional filters are set (list_transactions):
-- the connections keep generic plans otherwise.
SET LOCAL plan_cache_mode = force_custom_plan;

-- name: list_transactions
-- Newest first; the cursor is the (created_at, gid) of the last row already seen. Planned
-- for the filters given (plan_for_these_values), so each uses its index: status, service,
-- the gid prefix (:gid_like, a LIKE pattern: text_pattern_ops), or created_at.
SELECT * FROM tcc_transactions
WHERE (:statuses::text[] IS NULL OR status = ANY(:statuses))
  AND (:service::text IS NULL OR service = :service)
  AND (:created_from::timestamptz IS NULL OR created_at >= :created_from)
  AND (:created_to::timestamptz IS NULL OR created_at < :created_to)
  AND (:after_at::timestamptz IS NULL OR (created_at, gid) < (:after_at, :after_gid::text))
  AND (:dialect::text IS NULL OR dialect = :dialect)
  AND (:kind::text IS NULL OR kind = :kind)
  AND (:gid_like::text IS NULL OR gid LIKE :gid_like)
ORDER BY created_at DESC, gid DESC
LIMIT :limit;

-- name: overview_counts
-- The unfinished transactions by status (the few, from the status index), and those begun
-- in the last :window_s seconds by status and minute (index-only on status and created_at).
SELECT 'open' AS part, status, NULL::timestamptz AS minute, count(*) AS n
FROM tcc_transactions
WHERE status IN {unfinished_statuses}
GROUP BY status
UNION ALL
SELECT 'recent', status, date_trunc('minute', created_at), count(*)
FROM tcc_transactions
WHERE status IN {all_statuses}
  AND created_at >= now() - make_interval(secs => :window_s)
GROUP BY status, date_trunc('minute', created_at);

-- name: backlog
-- The metrics' gauges: unfinished transactions by status, and the oldest one's age.
SELECT status, count(*) AS n, extract(epoch FROM now() - min(created_at))::float8 AS oldest_s
FROM tcc_transactions
WHERE status IN {unfinished_statuses}
GROUP BY status;

-- name: overview_attention
-- What needs an operator, :limit of each kind: parked (tcc_transactions_parked's statuses);
-- in phase two for over a minute or more than three rounds; the oldest unfinished; undecided
-- with the deadline within a minute.
(SELECT 'parked' AS attention, t.* FROM tcc_transactions t
 WHERE status IN {parked_statuses}
 ORDER BY updated_at LIMIT :limit)
UNION ALL
(SELECT 'retrying_long', t.* FROM tcc_transactions t
 WHERE status IN {phase_two_statuses}
   AND (phase_attempts > 3 OR decided_at < now() - interval '1 minute')
 ORDER BY decided_at LIMIT :limit)
UNION ALL
(SELECT 'oldest_unfinished', t.* FROM tcc_transactions t
 WHERE status IN {unfinished_statuses}
 ORDER BY created_at LIMIT :limit)
UNION ALL
(SELECT 'near_deadline', t.* FROM tcc_transactions t
 WHERE status IN {undecided_statuses} AND next_attempt_at < now() + interval '1 minute'
 ORDER BY next_attempt_at LIMIT :limit);

-- name: pending_branches
-- How many branches of a parked transaction are still in one of :statuses.
SELECT count(*) FROM tcc_branches WHERE gid = :gid AND status = ANY(:statuses::text[]);

-- name: begin_transactions
-- Group commit of begins (core.writes.begin): many in one statement, each a transaction (in
-- :status) with its branches (in :branch_status) and their timeline entries (:begin_kind,
-- :branch_kind). Per transaction (:gids ... :tracestates): its values, :begin_details its
-- entry's detail, :branch_counts how many branches it has. Per branch (:branch_of: which
-- transaction, 1-based; :positions there): its values, :branch_details its entry's detail. A
-- gid that exists already is left alone (ON CONFLICT): its row comes back empty and the
-- caller looks at what holds it. A gid appears once per batch.
WITH input AS (
    SELECT * FROM unnest(:gids::text[], :dialects::text[], :kinds::text[], :services::text[],
                         :metadata::jsonb[], :request_hashes::text[], :timeouts_s::float8[],
                         :call_timeouts_s::float8[], :options::jsonb[], :begin_details::jsonb[],
                         :branch_counts::int[], :traceparents::text[], :tracestates::text[])
        WITH ORDINALITY AS i(gid, dialect, kind, service, metadata, request_hash, timeout_s,
                             call_timeout_s, options, begin_detail, branch_count, traceparent,
                             tracestate, n)
), txn AS (
    INSERT INTO tcc_transactions (
        gid, status, dialect, kind, service, metadata, request_hash, timeout_s, call_timeout_s,
        deadline, next_attempt_at, options, branch_count, traceparent, tracestate
    )
    SELECT gid, :status, dialect, kind, service, metadata, request_hash, timeout_s,
           call_timeout_s,
           now() + make_interval(secs => timeout_s), now() + make_interval(secs => timeout_s),
           options, branch_count, traceparent, tracestate
    FROM input ORDER BY n
    ON CONFLICT (gid) DO NOTHING
    RETURNING *
), new_branches AS (
    SELECT * FROM unnest(:branch_of::int[], :positions::int[], :branch_ids::text[],
                         :names::text[], :try_urls::text[], :confirm_urls::text[],
                         :cancel_urls::text[], :payloads::jsonb[],
                         :branch_request_hashes::text[], :data::text[],
                         :branch_details::jsonb[], :branch_participants::text[])
        WITH ORDINALITY AS b(n, position, branch_id, name, try_url, confirm_url, cancel_url,
                             payload, request_hash, data, detail, participant, ord)
), branches AS (
    INSERT INTO tcc_branches (
        gid, branch_id, position, name, try_url, confirm_url, cancel_url, payload,
        request_hash, status, data, participant
    )
    SELECT txn.gid, b.branch_id, b.position, b.name, b.try_url, b.confirm_url, b.cancel_url,
           b.payload, b.request_hash, :branch_status, b.data, b.participant
    FROM new_branches b
         JOIN input ON input.n = b.n
         JOIN txn ON txn.gid = input.gid
    ORDER BY b.ord
    RETURNING *
), events AS (
    INSERT INTO tcc_events (gid, kind, branch_id, detail)
    SELECT gid, kind, branch_id, detail FROM (
        SELECT txn.gid, :begin_kind::text AS kind, NULL::text AS branch_id,
               input.begin_detail AS detail, input.n, -1 AS ord
        FROM txn JOIN input ON input.gid = txn.gid
        UNION ALL
        SELECT b.gid, :branch_kind::text, b.branch_id, nb.detail, input.n, b.position
        FROM branches b
             JOIN input ON input.gid = b.gid
             JOIN new_branches nb ON nb.n = input.n AND nb.branch_id = b.branch_id
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
-- Group commit of auto mode (core.writes.AutoDecision): per transaction, its tries' answers
-- and then its decision, in one statement. The batch's distinct rules come once each,
-- numbered from 1: the answers (:answer_*: the status the branch moves to, from a status that
-- move allows by :move_from/:move_to, the branch table; the entry, and its detail if the
-- branch did not take it) and the decisions (:decision_*). Per try (:try_of: which
-- transaction, 1-based; :try_answers: its answer's number) the call. Then a transaction in one
-- of :sources takes its decision (:decisions: its number) if that one's guard holds
-- (:decision_guarded: the deadline ahead if :deadline_ahead, every try recorded if
-- :tries_recorded, no branch in :blocking nor, with a try the coordinator runs, in
-- :try_pending, and the branches as fresh as the locked row), else the timeout decision
-- (:timeout_*) once the deadline has passed, else none. The decider (:owner) takes the lease
-- for :lease_ttl_s seconds. Rows are locked in gid order, so batches cannot deadlock.
WITH decisions AS (
    SELECT * FROM unnest(:decision_targets::text[], :decision_reasons::text[],
                         :decision_kinds::text[], :decision_details::jsonb[],
                         :decision_guarded::bool[])
        WITH ORDINALITY AS d(target, reason, kind, detail, guarded, rule)
), input AS (
    SELECT i.gid, i.n, d.target, d.reason, d.kind, d.detail, d.guarded
    FROM unnest(:gids::text[], :decisions::int[]) WITH ORDINALITY AS i(gid, rule, n)
         JOIN decisions d ON d.rule = i.rule
), txn AS (
    -- branch_count is the locked row's, the freshest; a snapshot that counts fewer branches
    -- is older than a registration, and then a guarded decision is not taken.
    SELECT t.gid, t.status, t.deadline <= now() AS deadline_passed,
           t.branch_count = (SELECT count(*) FROM tcc_branches c WHERE c.gid = t.gid) AS fresh,
           input.n, input.target, input.reason, input.kind, input.detail, input.guarded
    FROM tcc_transactions t JOIN input ON input.gid = t.gid
    ORDER BY t.gid
    FOR UPDATE OF t
), answers AS (
    SELECT * FROM unnest(:answer_targets::text[], :answer_kinds::text[],
                         :answer_phases::text[], :answer_details::jsonb[],
                         :answer_late_details::jsonb[])
        WITH ORDINALITY AS a(target, kind, phase, detail, late_detail, rule)
), tries AS (
    SELECT x.n, x.branch_id, x.http_status, x.error, x.latency_ms, x.ord,
           a.target, a.kind, a.phase, a.detail, a.late_detail
    FROM unnest(:try_of::int[], :try_branches::text[], :try_answers::int[],
                :try_http_statuses::int[], :try_errors::text[], :try_latencies_ms::float8[])
             WITH ORDINALITY AS x(n, branch_id, rule, http_status, error, latency_ms, ord)
         JOIN answers a ON a.rule = x.rule
), recorded AS (
    UPDATE tcc_branches b
    SET status = x.target, attempts = b.attempts + 1, last_http_status = x.http_status,
        last_error = x.error, last_latency_ms = x.latency_ms, next_retry_at = NULL,
        updated_at = now()
    FROM tries x JOIN txn ON txn.n = x.n
    WHERE b.gid = txn.gid AND b.branch_id = x.branch_id
      AND (b.status, x.target) IN (SELECT * FROM unnest(:move_from::text[], :move_to::text[]))
    RETURNING b.*
), judged AS (
    SELECT txn.*,
           txn.status = ANY(:sources::text[]) AS open,
           NOT txn.guarded OR (
               NOT (:deadline_ahead::bool AND txn.deadline_passed)
               AND (NOT :tries_recorded::bool
                    OR (SELECT count(*) FROM recorded r WHERE r.gid = txn.gid)
                       = (SELECT count(*) FROM tries x WHERE x.n = txn.n))
               AND txn.fresh
               AND NOT EXISTS (
                   -- the branches as this statement leaves them
                   SELECT 1 FROM (
                       SELECT r.status, r.try_url FROM recorded r WHERE r.gid = txn.gid
                       UNION ALL
                       SELECT o.status, o.try_url FROM tcc_branches o
                       WHERE o.gid = txn.gid
                         AND o.branch_id NOT IN (SELECT r.branch_id FROM recorded r
                                                 WHERE r.gid = txn.gid)
                   ) AS b
                   WHERE b.status = ANY(:blocking::text[])
                      OR (b.status = ANY(:try_pending::text[]) AND b.try_url IS NOT NULL))
           ) AS guard_holds
    FROM txn
), decision AS (
    SELECT j.gid, j.n,
           CASE WHEN j.guard_holds THEN j.target ELSE :timeout_target::text END AS target,
           CASE WHEN j.guard_holds THEN j.reason ELSE :timeout_reason::text END AS reason,
           CASE WHEN j.guard_holds THEN j.kind ELSE :timeout_kind::text END AS kind,
           CASE WHEN j.guard_holds THEN j.detail ELSE :timeout_detail::jsonb END AS detail
    FROM judged j
    WHERE j.open AND (j.guard_holds OR j.deadline_passed)
), decided AS (
    UPDATE tcc_transactions t
    SET status = d.target, cancel_reason = d.reason,
        decided_at = now(), phase_started_at = now(), phase_attempts = 0,
        next_attempt_at = now(), updated_at = now(),
        lease_owner = :owner, lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => :lease_ttl_s)
    FROM decision d
    WHERE t.gid = d.gid AND t.status = ANY(:sources::text[])
    RETURNING t.*
), events AS (
    INSERT INTO tcc_events (gid, kind, branch_id, phase, http_status, latency_ms, error, detail)
    SELECT gid, kind, branch_id, phase, http_status, latency_ms, error, detail FROM (
        SELECT txn.gid, x.kind, x.branch_id, x.phase, x.http_status, x.latency_ms, x.error,
               CASE WHEN r.branch_id IS NULL THEN x.late_detail ELSE x.detail END AS detail,
               txn.n, x.ord
        FROM tries x
             JOIN txn ON txn.n = x.n
             LEFT JOIN recorded r ON r.gid = txn.gid AND r.branch_id = x.branch_id
        UNION ALL
        SELECT d.gid, d.kind, NULL, NULL, NULL, NULL, NULL, d.detail, d.n, 2147483647
        FROM decision d JOIN decided t ON t.gid = d.gid
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
-- Group commit of rounds in which every call came back done (core.writes.DoneRound): the
-- calls, the end of the phase and the lease released, each round fenced by its lease token.
-- The batch's distinct rules come once each, numbered from 1 (:rule_*): what the calls do
-- (the status a branch moves to, from a status that move allows by :move_from/:move_to, the
-- branch table; the entry, and its detail if the branch did not take it) and the round's end
-- (the transaction moves from its phase status to the end's, its next round due in so many
-- seconds (NULL: none), ended or not; its entry, with the rounds the stay took if it counts
-- them). Per round (:gids, :tokens, :rules: its rule's number); per call (:call_of: which
-- round, 1-based) the answer.
WITH rules AS (
    SELECT * FROM unnest(:rule_call_targets::text[], :rule_call_kinds::text[],
                         :rule_call_phases::text[], :rule_call_details::jsonb[],
                         :rule_call_late_details::jsonb[], :rule_end_sources::text[],
                         :rule_end_targets::text[], :rule_end_retries_in_s::float8[],
                         :rule_end_finishes::bool[], :rule_end_kinds::text[],
                         :rule_end_details::jsonb[], :rule_end_counts_rounds::bool[])
        WITH ORDINALITY AS r(call_target, call_kind, call_phase, call_detail,
                             call_late_detail, source, target, retry_in_s, finishes, kind,
                             detail, counts_rounds, rule)
), input AS (
    SELECT i.gid, i.token, i.n, r.*
    FROM unnest(:gids::text[], :tokens::uuid[], :rules::int[])
             WITH ORDINALITY AS i(gid, token, rule_of, n)
         JOIN rules r ON r.rule = i.rule_of
), holder AS (
    SELECT input.*
    FROM tcc_transactions t JOIN input ON input.gid = t.gid AND t.lease_token = input.token
    ORDER BY t.gid
    FOR UPDATE OF t
), calls AS (
    SELECT * FROM unnest(:call_of::int[], :call_branches::text[], :call_http_statuses::int[],
                         :call_errors::text[], :call_latencies_ms::float8[])
        WITH ORDINALITY AS c(n, branch_id, http_status, error, latency_ms, ord)
), moved AS (
    UPDATE tcc_branches b
    SET status = h.call_target, attempts = b.attempts + 1, last_http_status = c.http_status,
        last_error = c.error, last_latency_ms = c.latency_ms, next_retry_at = NULL,
        updated_at = now()
    FROM calls c JOIN holder h ON h.n = c.n
    WHERE b.gid = h.gid AND b.branch_id = c.branch_id
      AND (b.status, h.call_target)
          IN (SELECT * FROM unnest(:move_from::text[], :move_to::text[]))
    RETURNING b.*
), finished AS (
    UPDATE tcc_transactions t
    SET status = h.target, phase_attempts = t.phase_attempts + 1, updated_at = now(),
        next_attempt_at = now() + make_interval(secs => h.retry_in_s),
        finished_at = CASE WHEN h.finishes THEN now() END,
        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
    FROM holder h
    WHERE t.gid = h.gid AND t.status = h.source
    RETURNING t.*
), events AS (
    INSERT INTO tcc_events (gid, kind, branch_id, phase, http_status, latency_ms, error, detail)
    SELECT gid, kind, branch_id, phase, http_status, latency_ms, error, detail FROM (
        SELECT h.gid, h.call_kind AS kind, c.branch_id, h.call_phase AS phase, c.http_status,
               c.latency_ms, c.error,
               CASE WHEN m.branch_id IS NULL THEN h.call_late_detail ELSE h.call_detail END
                   AS detail,
               h.n, c.ord
        FROM calls c
             JOIN holder h ON h.n = c.n
             LEFT JOIN moved m ON m.gid = h.gid AND m.branch_id = c.branch_id
        UNION ALL
        SELECT f.gid, h.kind, NULL, NULL, NULL, NULL, NULL,
               CASE WHEN h.counts_rounds
                    THEN jsonb_build_object('rounds', f.phase_attempts) ELSE '{}'::jsonb END
               || h.detail,
               h.n, 2147483647
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
-- A branch registered in one statement (core.writes.register): the transaction is locked
-- (registrations and decisions on it are serialised), and the branch (in :status) and its
-- timeline entry (:kind, :detail) are written while the transaction is in one of :open_in,
-- before its deadline and below :max_branches. What the rules saw comes back, so that the
-- caller can say why nothing was written (RegisterWrite.refusal).
WITH txn AS (
    -- branch_count is the locked row's, so position and limit hold against a registration
    -- that committed while this one waited for the lock (which the snapshot may not show;
    -- a branch id registered meanwhile then fails the primary key, and the caller retries).
    SELECT gid, status, deadline <= now() AS deadline_passed, branch_count
    FROM tcc_transactions WHERE gid = :gid FOR UPDATE
), existing AS (
    SELECT b.* FROM tcc_branches b, txn WHERE b.gid = txn.gid AND b.branch_id = :branch_id
), inserted AS (
    INSERT INTO tcc_branches (
        gid, branch_id, position, name, try_url, confirm_url, cancel_url, payload,
        request_hash, status, data, participant
    )
    SELECT txn.gid, :branch_id, txn.branch_count, :name, :try_url, :confirm_url, :cancel_url,
           :payload, :request_hash, :status, :data, :participant
    FROM txn
    WHERE txn.status = ANY(:open_in::text[]) AND NOT txn.deadline_passed
      AND txn.branch_count < :max_branches
      AND NOT EXISTS (SELECT 1 FROM existing)
    RETURNING *
), counted AS (
    UPDATE tcc_transactions t SET branch_count = t.branch_count + 1
    FROM inserted WHERE t.gid = inserted.gid
), event AS (
    INSERT INTO tcc_events (gid, kind, branch_id, detail)
    SELECT gid, :kind, branch_id, :detail FROM inserted
)
SELECT (SELECT status FROM txn) AS status,
       (SELECT deadline_passed FROM txn) AS deadline_passed,
       (SELECT branch_count FROM txn) AS branches,
       (SELECT e::tcc_branches FROM existing e) AS existing,
       (SELECT e.request_hash FROM existing e) AS existing_hash,
       (SELECT i::tcc_branches FROM inserted i) AS inserted;

-- name: record_try
-- A try's answer (core.writes.try_answer) and its timeline entry in one statement. CAS: a
-- branch in one of :sources takes it, moving to :target; a late answer is only logged (with
-- :late_detail). The branch comes back as the log holds it.
WITH moved AS (
    UPDATE tcc_branches
    SET status = coalesce(:target::text, status), attempts = attempts + 1,
        last_http_status = :http_status, last_error = :error, last_latency_ms = :latency_ms,
        next_retry_at = NULL, updated_at = now()
    WHERE gid = :gid AND branch_id = :branch_id AND status = ANY(:sources::text[])
    RETURNING *
), current AS (
    SELECT * FROM moved
    UNION ALL
    SELECT * FROM tcc_branches
    WHERE gid = :gid AND branch_id = :branch_id AND NOT EXISTS (SELECT 1 FROM moved)
), event AS (
    INSERT INTO tcc_events (gid, kind, branch_id, phase, http_status, latency_ms, error, detail)
    SELECT gid, :kind, branch_id, :phase, :http_status, :latency_ms, :error,
           CASE WHEN EXISTS (SELECT 1 FROM moved) THEN :detail::jsonb
                ELSE :late_detail::jsonb END
    FROM current
)
SELECT (SELECT c::tcc_branches FROM current c) AS branch,
       EXISTS (SELECT 1 FROM moved) AS recorded;

-- name: decide_judged
-- A decision in one statement (core.writes.decision). The transaction is locked, and moves
-- to :target from one of :sources when the guard holds: the branches as fresh as the locked
-- row, the deadline ahead if :deadline_ahead, no branch in :blocking nor, with a try the
-- coordinator runs, in :try_pending. With it: :cancel_reason, the options given with it
-- (:options merged in, :call_timeout_s set; NULL: none), the lease to :owner for :lease_ttl_s
-- seconds, and the timeline entry (:kind, :detail). What the guard saw comes back (the
-- status, the deadline, the branches) for the caller's judgement.
WITH txn AS (
    SELECT t AS row, t.gid, t.status, t.branch_count, t.deadline <= now() AS deadline_passed
    FROM tcc_transactions t WHERE t.gid = :gid FOR UPDATE
), branches AS (
    SELECT b.* FROM tcc_branches b, txn WHERE b.gid = txn.gid
), allowed AS (
    -- The branches must be the locked row's (its branch_count): a snapshot older than a
    -- registration decides nothing, and the caller asks again.
    SELECT txn.gid FROM txn
    WHERE txn.status = ANY(:sources::text[])
      AND txn.branch_count = (SELECT count(*) FROM branches)
      AND NOT (:deadline_ahead::bool AND txn.deadline_passed)
      AND NOT EXISTS (
          SELECT 1 FROM branches b
          WHERE b.status = ANY(:blocking::text[])
             OR (b.status = ANY(:try_pending::text[]) AND b.try_url IS NOT NULL))
), decided AS (
    UPDATE tcc_transactions t
    SET status = :target, cancel_reason = :cancel_reason, decided_at = now(),
        phase_started_at = now(), phase_attempts = 0, next_attempt_at = now(),
        updated_at = now(), lease_owner = :owner, lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => :lease_ttl_s),
        options = CASE WHEN :options::jsonb IS NULL THEN t.options
                       ELSE t.options || :options::jsonb END,
        call_timeout_s = coalesce(:call_timeout_s, t.call_timeout_s)
    FROM allowed
    WHERE t.gid = allowed.gid
    RETURNING t.*
), event AS (
    INSERT INTO tcc_events (gid, kind, detail)
    SELECT gid, :kind, :detail FROM decided
)
SELECT (SELECT row FROM txn) AS before,
       (SELECT deadline_passed FROM txn) AS deadline_passed,
       (SELECT branch_count = (SELECT count(*) FROM branches) FROM txn) AS fresh,
       (SELECT d::tcc_transactions FROM decided d) AS decided,
       ARRAY(SELECT b::tcc_branches FROM branches b ORDER BY position) AS branches;

-- name: transaction_detail
-- A transaction, its branches and the first :events_limit events of its timeline, as of one
-- moment (one statement sees one snapshot).
SELECT (SELECT t::tcc_transactions FROM tcc_transactions t WHERE t.gid = :gid) AS txn,
       ARRAY(SELECT b::tcc_branches FROM tcc_branches b WHERE b.gid = :gid ORDER BY position)
           AS branches,
       ARRAY(SELECT e::tcc_events FROM tcc_events e WHERE e.gid = :gid ORDER BY id
             LIMIT :events_limit) AS events;

-- name: now
-- The database clock, the only one the log reads.
SELECT now();

-- --- alerts (TCC_ALERT_WEBHOOK) ---------------------------------------------------------

-- name: insert_alert
-- An alert of :kind about :gid, written in the transaction of the change it reports. One per
-- kind, stay in phase two (an operator's retry starts a new stay) and round: two coordinators
-- never raise it twice.
INSERT INTO tcc_alerts (gid, kind, phase_started_at, round, body)
SELECT gid, :kind, coalesce(phase_started_at, decided_at, created_at), phase_attempts, :body
FROM tcc_transactions WHERE gid = :gid
ON CONFLICT (gid, kind, phase_started_at, round) DO NOTHING;

-- name: claim_alerts
-- Due alerts nobody holds, :limit of them, leased to :owner for :lease_ttl_s seconds: SKIP
-- LOCKED splits them between coordinators, and a delivery cut short by a crash is sent again
-- once it lapses.
UPDATE tcc_alerts a
SET lease_owner = :owner, lease_expires_at = now() + make_interval(secs => :lease_ttl_s)
FROM (
    SELECT id FROM tcc_alerts
    WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= now()
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY next_attempt_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
) due
WHERE a.id = due.id
RETURNING a.id, a.gid, a.participant, a.kind, a.body, a.attempts,
          extract(epoch FROM now() - a.created_at)::float8 AS age_s;

-- name: alert_delivered
-- The holder (:owner) delivered alert :id.
UPDATE tcc_alerts
SET delivered_at = now(), attempts = attempts + 1, last_error = NULL,
    lease_owner = NULL, lease_expires_at = NULL
WHERE id = :id AND lease_owner = :owner;

-- name: alert_failed
-- The holder (:owner) failed to deliver alert :id: the next try in :retry_in_s seconds, or
-- (NULL) given up.
UPDATE tcc_alerts
SET attempts = attempts + 1, last_error = :error,
    next_attempt_at = CASE WHEN :retry_in_s::float8 IS NULL THEN next_attempt_at
                           ELSE now() + make_interval(secs => :retry_in_s::float8) END,
    given_up_at = CASE WHEN :retry_in_s::float8 IS NULL THEN now() END,
    lease_owner = NULL, lease_expires_at = NULL
WHERE id = :id AND lease_owner = :owner;

-- --- retention (TCC_RETENTION_DAYS, tcc prune) -------------------------------------------

-- name: prune_finished
-- One batch (:limit) of finished transactions begun and ended more than :older_than_s
-- seconds ago, oldest first; their branches and events go with them (ON DELETE CASCADE).
-- SKIP LOCKED: a row someone holds waits for the next batch instead of holding this one up.
-- The created_at condition follows from the finished_at one; it is there for the created_at
-- index. The batch's gids go in as an array, so that even the connections' generic plan
-- deletes them through the primary key instead of joining them to a scan of the whole table.
DELETE FROM tcc_transactions WHERE gid = ANY (ARRAY(
    SELECT gid FROM tcc_transactions
    WHERE created_at < now() - make_interval(secs => :older_than_s)
      AND finished_at < now() - make_interval(secs => :older_than_s)
      AND status IN {final_statuses}
    ORDER BY created_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
));

-- name: count_prunable
-- How many prune_finished would delete (a dry run).
SELECT count(*) FROM tcc_transactions
WHERE created_at < now() - make_interval(secs => :older_than_s)
  AND finished_at < now() - make_interval(secs => :older_than_s)
  AND status IN {final_statuses};

-- name: prune_alerts
-- Alerts already delivered or given up, older than :older_than_s seconds, a batch of :limit.
DELETE FROM tcc_alerts WHERE id IN (
    SELECT id FROM tcc_alerts
    WHERE created_at < now() - make_interval(secs => :older_than_s)
      AND (delivered_at IS NOT NULL OR given_up_at IS NOT NULL)
    ORDER BY id
    LIMIT :limit
);

-- name: parked_branches
-- Why each of the parked transactions :gids waits: its first branch not yet done whose last
-- call failed (else its first not yet done), done being :done_statuses[i] for a transaction in
-- :parked_statuses[i] (core.states.done_while_parked). (A saga compensates its steps last
-- first: the step that keeps failing need not be the first.)
SELECT DISTINCT ON (b.gid) b.* FROM tcc_branches b
JOIN tcc_transactions t ON t.gid = b.gid
JOIN unnest(:parked_statuses::text[], :done_statuses::text[]) AS d(parked, done)
  ON d.parked = t.status
WHERE b.gid = ANY(:gids::text[]) AND b.status <> d.done
ORDER BY b.gid, b.last_error IS NULL, b.position;

-- --- coordinators (the console's view of who runs) ---------------------------------------

-- name: coordinator_seen
-- A coordinator's recovery scan: note :owner alive, with what the scan claimed (:claimed)
-- and how many of those another process had let lapse (:taken_over).
INSERT INTO tcc_coordinators AS c (owner, scans, claimed, taken_over, last_claim_at)
VALUES (:owner, 1, :claimed::bigint, :taken_over::bigint,
        CASE WHEN :claimed::bigint > 0 THEN now() END)
ON CONFLICT (owner) DO UPDATE
SET last_seen_at = now(), stopped_at = NULL, scans = c.scans + 1,
    claimed = c.claimed + :claimed::bigint, taken_over = c.taken_over + :taken_over::bigint,
    last_claim_at = CASE WHEN :claimed::bigint > 0 THEN now() ELSE c.last_claim_at END;

-- name: coordinator_stopped
-- :owner shut down cleanly.
UPDATE tcc_coordinators SET stopped_at = now(), last_seen_at = now() WHERE owner = :owner;

-- name: coordinators_seen
-- The coordinators seen in the last :within_s seconds (stopped ones too), newest first, with
-- the live leases each holds now.
SELECT c.*, extract(epoch FROM now() - c.last_seen_at)::float8 AS seen_ago_s,
       (SELECT count(*) FROM tcc_transactions t
        WHERE t.lease_owner = c.owner AND t.lease_expires_at > now()) AS leases_held
FROM tcc_coordinators c
WHERE c.last_seen_at > now() - make_interval(secs => :within_s)
ORDER BY c.started_at DESC
LIMIT 50;

-- name: prune_coordinators
-- Coordinators not seen for :unseen_for_s seconds.
DELETE FROM tcc_coordinators WHERE last_seen_at < now() - make_interval(secs => :unseen_for_s);

-- --- console sessions -----------------------------------------------------------------------

-- name: open_session
-- A console login, lasting :ttl_s seconds.
INSERT INTO tcc_console_sessions (id, key_name, scope, key_digest, remote, expires_at)
VALUES (:id, :key_name, :scope, :key_digest, :remote, now() + make_interval(secs => :ttl_s));

-- name: session_is_live
-- Whether session :id is neither revoked nor expired; noted as seen (at most twice a minute,
-- so that a console polling its pages does not write at every poll).
WITH live AS (
    SELECT id FROM tcc_console_sessions
    WHERE id = :id AND revoked_at IS NULL AND expires_at > now()
), seen AS (
    UPDATE tcc_console_sessions SET last_seen_at = now()
    WHERE id IN (SELECT id FROM live) AND last_seen_at < now() - interval '30 seconds'
)
SELECT count(*) FROM live;

-- name: revoke_sessions
-- End live sessions: the one whose id begins with :id_prefix, or every one of key
-- :key_name, or (both null) all; by :by. The number ended.
WITH ended AS (
    UPDATE tcc_console_sessions SET revoked_at = now(), revoked_by = :by
    WHERE revoked_at IS NULL AND expires_at > now()
      AND (:id_prefix::text IS NULL OR id LIKE :id_prefix || '%')
      AND (:key_name::text IS NULL OR key_name = :key_name)
    RETURNING id
)
SELECT count(*) FROM ended;

-- name: revoke_sessions_of_other_keys
-- End the live sessions opened with a key that is not among the configured ones (:names,
-- :scopes, :digests: each key's name, scope and digest of its hash); by :by.
WITH ended AS (
    UPDATE tcc_console_sessions s SET revoked_at = now(), revoked_by = :by
    WHERE revoked_at IS NULL AND expires_at > now()
      AND (key_name, scope, key_digest) NOT IN (
          SELECT * FROM unnest(:names::text[], :scopes::text[], :digests::text[]))
    RETURNING id
)
SELECT count(*) FROM ended;

-- name: list_sessions
-- Console sessions, newest first, :limit of them: live ones only unless :include_ended.
SELECT * FROM tcc_console_sessions
WHERE :include_ended::bool OR (revoked_at IS NULL AND expires_at > now())
ORDER BY created_at DESC
LIMIT :limit;

-- name: prune_sessions
-- Sessions that ended (expired or revoked) more than :ended_for_s seconds ago.
DELETE FROM tcc_console_sessions
WHERE least(expires_at, coalesce(revoked_at, expires_at)) < now() - make_interval(secs => :ended_for_s);

-- --- participants: the registry, their breakers, their calls -----------------------------

-- name: register_participant
-- A participant registered (or registered again: its URLs, health URL, timeout and TLS
-- profile are replaced, its owner too when one is given, its breaker is kept), unless it exists and
-- belongs to another service than :owner_service while :replace_any is false (then no row).
-- inserted says whether it is new.
INSERT INTO tcc_participants AS p (
    name, base_url, try_url, confirm_url, cancel_url, health_url, call_timeout_s,
    tls_profile, owner_service, registered_by
)
VALUES (:name, :base_url, :try_url, :confirm_url, :cancel_url, :health_url,
        :call_timeout_s::float8, :tls_profile, :owner_service, :registered_by)
ON CONFLICT (name) DO UPDATE
SET base_url = excluded.base_url, try_url = excluded.try_url,
    confirm_url = excluded.confirm_url, cancel_url = excluded.cancel_url,
    health_url = excluded.health_url, call_timeout_s = excluded.call_timeout_s,
    tls_profile = excluded.tls_profile, owner_service = coalesce(excluded.owner_service, p.owner_service),
    registered_by = excluded.registered_by, updated_at = now()
WHERE :replace_any::bool OR p.owner_service = excluded.owner_service
RETURNING *, (xmax = 0) AS inserted;

-- name: remove_participant
-- A participant taken out of the registry (branches that named it keep their URLs): only one
-- of :owner's when given.
DELETE FROM tcc_participants
WHERE name = :name AND (:owner::text IS NULL OR owner_service = :owner::text)
RETURNING name;

-- name: list_participants
-- Every registered participant with its breaker, the database clock they were read at, and
-- how many coordinators were seen running in the last :live_within_s seconds.
SELECT now() AS read_at,
       (SELECT count(*) FROM tcc_coordinators
        WHERE stopped_at IS NULL
          AND last_seen_at > now() - make_interval(secs => :live_within_s))::int
           AS live_coordinators,
       ARRAY(SELECT p::tcc_participants FROM tcc_participants p ORDER BY p.name) AS participants;

-- name: get_participant
-- One registered participant.
SELECT * FROM tcc_participants WHERE name = :name;

-- name: move_breaker
-- One compare-and-set on a participant's breaker (core.breaker.BreakerMove): from one of
-- :sources to :target, only if it opened :opens_seen times (when given), only once its open
-- time is over or its probe lapsed (:when_due), only for the probe's holder (:holder, when
-- given). An opening raises its alert (:alert_kind, :alert_body) in the same statement, once
-- however many coordinators try.
WITH moved AS (
    UPDATE tcc_participants
    SET breaker_state = :target, breaker_since = now(),
        breaker_reason = coalesce(:reason, breaker_reason),
        breaker_retry_at = now() + make_interval(secs => :open_for_s::float8),
        breaker_opens = coalesce(:opens::int, breaker_opens),
        probe_owner = :probe_owner,
        probe_expires_at = now() + make_interval(secs => :probe_ttl_s::float8),
        ramp_started_at = CASE WHEN :ramps::bool THEN now() END
    WHERE name = :name AND breaker_state = ANY(:sources::text[])
      AND (:opens_seen::int IS NULL OR breaker_opens = :opens_seen::int)
      AND (NOT :when_due::bool OR breaker_retry_at <= now() OR probe_expires_at < now())
      AND (:holder::text IS NULL OR probe_owner = :holder::text)
    RETURNING *
), alert AS (
    INSERT INTO tcc_alerts (participant, kind, phase_started_at, round, body)
    SELECT name, :alert_kind::text, breaker_since, breaker_opens, :alert_body::jsonb
    FROM moved WHERE :alert_kind::text IS NOT NULL
    ON CONFLICT DO NOTHING
)
SELECT * FROM moved;

-- name: add_call_tallies
-- What one coordinator counted since its last flush, added to the current minute's rows
-- (one per participant and phase).
INSERT INTO tcc_participant_minutes AS m (
    participant, minute, phase, calls, errors, latency_ms_sum, latency_ms_max
)
SELECT participant, date_trunc('minute', now()), phase, calls, errors, latency_sum, latency_max
FROM unnest(:participants::text[], :phases::text[], :calls::int[], :errors::int[],
            :latency_sums::float8[], :latency_maxes::float8[])
    AS t(participant, phase, calls, errors, latency_sum, latency_max)
ON CONFLICT (participant, minute, phase) DO UPDATE
SET calls = m.calls + excluded.calls, errors = m.errors + excluded.errors,
    latency_ms_sum = m.latency_ms_sum + excluded.latency_ms_sum,
    latency_ms_max = greatest(m.latency_ms_max, excluded.latency_ms_max);

-- name: call_tallies
-- The calls counted in the last :window_s seconds, per participant, minute and phase, and the
-- database clock.
SELECT participant, minute, phase, calls, errors, latency_ms_sum, latency_ms_max,
       now() AS read_at
FROM tcc_participant_minutes
WHERE minute > date_trunc('minute', now() - make_interval(secs => :window_s))
ORDER BY participant, minute;

-- name: waiting_on_participants
-- Per registered participant, the transactions in phase two or parked with a branch on it
-- not yet done: a transaction in one of :txn_statuses waits on its branches that are not in
-- the matching :done_statuses (core.writes.WAITING).
SELECT b.participant, count(DISTINCT b.gid) AS waiting
FROM tcc_transactions t
     JOIN unnest(:txn_statuses::text[], :done_statuses::text[]) AS w(status, done)
         ON w.status = t.status
     JOIN tcc_branches b ON b.gid = t.gid AND b.status <> w.done
WHERE t.status IN {unfinished_statuses} AND b.participant IS NOT NULL
GROUP BY b.participant;

-- name: prune_call_tallies
-- Per-minute call counts older than :older_than_s seconds.
DELETE FROM tcc_participant_minutes
WHERE minute < now() - make_interval(secs => :older_than_s);
