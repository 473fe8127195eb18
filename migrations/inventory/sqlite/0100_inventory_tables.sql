-- The inventory module's own tables (the kernel's outbox, inbox and idempotency
-- keys come from migration 0001). Times are epoch milliseconds.
CREATE TABLE IF NOT EXISTS products (
    sku                 TEXT    PRIMARY KEY,
    name                TEXT    NOT NULL,
    description         TEXT,
    price_minor         BIGINT  NOT NULL CHECK (price_minor >= 0),
    currency            TEXT    NOT NULL,
    active              BOOLEAN NOT NULL DEFAULT 1,
    low_stock_threshold BIGINT  NOT NULL DEFAULT 5,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL
);

CREATE TABLE IF NOT EXISTS warehouses (
    code       TEXT   PRIMARY KEY,
    name       TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

-- One row per (sku, warehouse); the CHECKs are the last line of defence
-- against overselling (the adapter guards every write as well).
CREATE TABLE IF NOT EXISTS stock_levels (
    sku       TEXT   NOT NULL REFERENCES products (sku),
    warehouse TEXT   NOT NULL REFERENCES warehouses (code),
    on_hand   BIGINT NOT NULL CHECK (on_hand >= 0),
    reserved  BIGINT NOT NULL CHECK (reserved >= 0 AND reserved <= on_hand),
    PRIMARY KEY (sku, warehouse)
);

-- A reservation and its allocation (lines with their warehouses, as JSON).
CREATE TABLE IF NOT EXISTS reservations (
    id         TEXT   PRIMARY KEY,
    order_id   TEXT   NOT NULL,
    status     TEXT   NOT NULL,
    lines      TEXT   NOT NULL,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_held_expiry ON reservations (expires_at) WHERE status = 'held';

-- The audit trail: one row per change of a stock level.
CREATE TABLE IF NOT EXISTS stock_movements (
    id             TEXT   PRIMARY KEY,
    sku            TEXT   NOT NULL,
    warehouse      TEXT   NOT NULL,
    kind           TEXT   NOT NULL,
    quantity       BIGINT NOT NULL,
    on_hand        BIGINT NOT NULL,
    reserved       BIGINT NOT NULL,
    actor          TEXT   NOT NULL,
    reason         TEXT,
    reference      TEXT,
    reservation_id TEXT,
    correlation_id TEXT   NOT NULL,
    at             BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS stock_movements_by_sku ON stock_movements (sku, id);
