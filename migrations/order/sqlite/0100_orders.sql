-- Orders and their history. Times are epoch milliseconds; ids are UUID v7 text,
-- so ordering by id is ordering by creation time.
CREATE TABLE IF NOT EXISTS orders (
    id               TEXT    PRIMARY KEY,
    customer_id      TEXT    NOT NULL,
    customer_email   TEXT,
    status           TEXT    NOT NULL,
    items            TEXT    NOT NULL,
    total_minor      BIGINT  NOT NULL,
    currency         TEXT    NOT NULL,
    shipping_address TEXT    NOT NULL,
    payment_method   TEXT    NOT NULL,
    payment_id       TEXT,
    failure_reason   TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    version          BIGINT  NOT NULL,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT,
    payment_deadline BIGINT  NOT NULL,
    lease_until      BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS orders_customer ON orders (customer_id, id);
CREATE INDEX IF NOT EXISTS orders_status ON orders (status, id);
CREATE INDEX IF NOT EXISTS orders_due ON orders (next_attempt_at) WHERE status IN ('pending', 'awaiting_payment');

CREATE TABLE IF NOT EXISTS order_history (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id       TEXT    NOT NULL,
    from_status    TEXT,
    to_status      TEXT    NOT NULL,
    at             BIGINT  NOT NULL,
    actor          TEXT    NOT NULL,
    reason         TEXT,
    correlation_id TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS order_history_order ON order_history (order_id, seq);
