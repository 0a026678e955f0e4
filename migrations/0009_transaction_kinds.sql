-- Sagas and reliable messages share the log with TCC transactions: the same statuses,
-- branches and timeline, told apart by their kind. Existing rows are TCC; the CHECK is added
-- NOT VALID and then validated, so the table is not locked against writes while it is read.
ALTER TABLE tcc_transactions ADD COLUMN kind text NOT NULL DEFAULT 'tcc';
ALTER TABLE tcc_transactions ADD CONSTRAINT tcc_transactions_kind_check
    CHECK (kind IN ('tcc', 'saga', 'msg')) NOT VALID;
ALTER TABLE tcc_transactions VALIDATE CONSTRAINT tcc_transactions_kind_check;
