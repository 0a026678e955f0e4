-- Accounts with a balance and an amount frozen by tries not yet confirmed or cancelled.
-- balance + frozen summed over all accounts never changes: money only moves.
CREATE TABLE accounts (
    id      text PRIMARY KEY,
    balance bigint NOT NULL CHECK (balance >= 0),
    frozen  bigint NOT NULL DEFAULT 0 CHECK (frozen >= 0)
);

-- One row per branch: what its try froze, and what became of it.
CREATE TABLE freezes (
    gid        text NOT NULL,
    branch_id  text NOT NULL,
    account    text NOT NULL REFERENCES accounts (id),
    payee      text NOT NULL REFERENCES accounts (id),
    amount     bigint NOT NULL CHECK (amount > 0),
    state      text NOT NULL CHECK (state IN ('frozen', 'paid', 'released')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gid, branch_id)
);

-- Sample data for the demo.
INSERT INTO accounts (id, balance) VALUES ('alice', 1000), ('bob', 20), ('shop', 0);
