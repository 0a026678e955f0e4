-- A timeline stays readable however long a participant stays down: an identical failure
-- repeated round after round is one event with a count and the time of its last repeat.
ALTER TABLE tcc_events ADD COLUMN repeats integer NOT NULL DEFAULT 1 CHECK (repeats >= 1);
ALTER TABLE tcc_events ADD COLUMN last_at timestamptz;
