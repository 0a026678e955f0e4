-- Orders created by checkout's try, paid by its confirm, cancelled by its cancel.
CREATE TABLE orders (
    id         text PRIMARY KEY,  -- the global transaction id
    customer   text NOT NULL,
    sku        text NOT NULL,
    qty        integer NOT NULL CHECK (qty > 0),
    amount     bigint NOT NULL CHECK (amount > 0),
    status     text NOT NULL CHECK (status IN ('pending', 'paid', 'cancelled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The shop's price list.
CREATE TABLE catalog (
    sku   text PRIMARY KEY,
    price bigint NOT NULL CHECK (price > 0)
);

INSERT INTO catalog (sku, price) VALUES ('book', 12), ('mug', 8), ('lamp', 40);
