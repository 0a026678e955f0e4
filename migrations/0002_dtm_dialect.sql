-- DTM's HTTP protocol (the 'dtm' dialect) lives in the same log.

-- Per-transaction protocol options, e.g. DTM's retry_interval, branch_headers, wait_result.
ALTER TABLE tcc_transactions ADD COLUMN options jsonb NOT NULL DEFAULT '{}'::jsonb;

-- A DTM branch carries an opaque string that is sent as the body of its confirm and
-- cancel calls (NULL: no body, and the call is a GET, as DTM does).
ALTER TABLE tcc_branches ADD COLUMN data text;
