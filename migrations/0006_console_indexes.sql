-- For the console over a large log. A gid prefix search uses this index whatever the
-- database's collation (a LIKE 'abc%' can use the primary key only under the C collation).
CREATE INDEX tcc_transactions_gid_prefix ON tcc_transactions (gid text_pattern_ops);
-- Parked transactions are few and wanted at once: a small index of their own.
CREATE INDEX tcc_transactions_parked ON tcc_transactions (updated_at)
    WHERE status IN ('failed_to_confirm', 'failed_to_cancel');
