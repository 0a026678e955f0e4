-- The TCC barrier: one row per (gid, branch_id, phase) a participant has seen.
-- Applied into each participant's own schema by participants/schema.py.
CREATE TABLE tcc_barrier (
    gid        text NOT NULL,
    branch_id  text NOT NULL,
    phase      text NOT NULL CHECK (phase IN ('try', 'confirm', 'cancel')),
    -- Which call wrote the row: a 'try' row written by a cancel marks an empty compensation.
    written_by text NOT NULL CHECK (written_by IN ('try', 'confirm', 'cancel')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gid, branch_id, phase)
);

CREATE INDEX tcc_barrier_created ON tcc_barrier (created_at);
