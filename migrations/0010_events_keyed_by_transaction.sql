-- The timeline is only ever read by transaction, in id order (a page, the latest event of a
-- branch, prune): one index serves all of it. The primary key becomes (gid, id), and the
-- id-only key and the separate (gid, id) index go: each event costs one index entry, not
-- two (docs/performance.md, "What each index and timeline row costs"). The new index is
-- built before the old ones are dropped; on a large log this step holds a lock on the
-- timeline while it builds (docs/deploy.md).
CREATE UNIQUE INDEX tcc_events_gid_id ON tcc_events (gid, id);
ALTER TABLE tcc_events DROP CONSTRAINT tcc_events_pkey;
ALTER TABLE tcc_events ADD CONSTRAINT tcc_events_pkey PRIMARY KEY USING INDEX tcc_events_gid_id;
DROP INDEX tcc_events_gid;
