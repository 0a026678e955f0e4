-- How many branches a transaction has, kept on its row. Registering a branch and taking a
-- decision both lock the row; a statement that read the branches from an older snapshot
-- than the locked row finds the count differs, and is run again (see queries.sql).
ALTER TABLE tcc_transactions ADD COLUMN branch_count integer NOT NULL DEFAULT 0;
UPDATE tcc_transactions t
SET branch_count = (SELECT count(*) FROM tcc_branches b WHERE b.gid = t.gid)
WHERE EXISTS (SELECT 1 FROM tcc_branches b WHERE b.gid = t.gid);
