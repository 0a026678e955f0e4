-- Items with stock on hand, stock reserved by tries, and stock sold by confirms.
-- stock + reserved + sold per item never changes: units only move.
CREATE TABLE items (
    sku      text PRIMARY KEY,
    name     text NOT NULL,
    stock    integer NOT NULL CHECK (stock >= 0),
    reserved integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold     integer NOT NULL DEFAULT 0 CHECK (sold >= 0)
);

CREATE TABLE reservations (
    gid        text NOT NULL,
    branch_id  text NOT NULL,
    sku        text NOT NULL REFERENCES items (sku),
    qty        integer NOT NULL CHECK (qty > 0),
    state      text NOT NULL CHECK (state IN ('reserved', 'sold', 'released')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gid, branch_id)
);

-- Sample data for the demo.
INSERT INTO items (sku, name, stock) VALUES ('book', 'A good book', 100), ('mug', 'A mug', 5),
    ('lamp', 'A lamp', 0);
