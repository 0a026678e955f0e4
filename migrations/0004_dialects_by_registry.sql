-- Dialects are registered in code (coordinator/dialects/): adding one must not need a
-- migration, so the log no longer lists them.
ALTER TABLE tcc_transactions DROP CONSTRAINT tcc_transactions_dialect_check;
