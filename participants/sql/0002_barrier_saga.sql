-- The barrier learns the phases of sagas and messages: 'action' (a saga step's forward call,
-- or a message step's delivery) and 'compensate' (a saga step's undo). An 'action' row
-- written by a compensate marks an empty compensation, as a 'try' row written by a cancel does.
ALTER TABLE tcc_barrier
    DROP CONSTRAINT tcc_barrier_phase_check,
    ADD CONSTRAINT tcc_barrier_phase_check
        CHECK (phase IN ('try', 'confirm', 'cancel', 'action', 'compensate')),
    DROP CONSTRAINT tcc_barrier_written_by_check,
    ADD CONSTRAINT tcc_barrier_written_by_check
        CHECK (written_by IN ('try', 'confirm', 'cancel', 'action', 'compensate'));
