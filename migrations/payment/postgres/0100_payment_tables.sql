-- The payment module's tables: payments (one per order), refunds, and the
-- append-only ledger of money movements. Times are epoch milliseconds, ids TEXT,
-- so the same SQL runs on SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS payments (
    id                    TEXT    NOT NULL PRIMARY KEY,
    order_id              TEXT    NOT NULL UNIQUE,
    customer_id           TEXT    NOT NULL,
    status                TEXT    NOT NULL
        CHECK (status IN ('pending', 'succeeded', 'failed', 'partially_refunded', 'refunded')),
    amount_minor          BIGINT  NOT NULL CHECK (amount_minor > 0),
    currency              TEXT    NOT NULL,
    -- Sum of succeeded refunds.
    refunded_minor        BIGINT  NOT NULL DEFAULT 0,
    -- Sum of pending and succeeded refunds: what is no longer refundable.
    refund_reserved_minor BIGINT  NOT NULL DEFAULT 0,
    payment_method        TEXT    NOT NULL,
    provider              TEXT    NOT NULL,
    provider_ref          TEXT,
    failure_code          TEXT,
    -- When the current provider call started (a lease); NULL when none is in flight.
    attempt_at            BIGINT,
    created_at            BIGINT  NOT NULL,
    updated_at            BIGINT  NOT NULL,
    CHECK (refunded_minor >= 0 AND refunded_minor <= refund_reserved_minor
           AND refund_reserved_minor <= amount_minor)
);
CREATE INDEX IF NOT EXISTS payments_customer ON payments (customer_id, id);

CREATE TABLE IF NOT EXISTS refunds (
    id            TEXT    NOT NULL PRIMARY KEY,
    payment_id    TEXT    NOT NULL REFERENCES payments (id),
    -- The caller's idempotency key: a retry with it resumes this refund.
    request_key   TEXT    NOT NULL,
    amount_minor  BIGINT  NOT NULL CHECK (amount_minor > 0),
    currency      TEXT    NOT NULL,
    reason        TEXT,
    status        TEXT    NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    provider_ref  TEXT,
    failure_code  TEXT,
    attempt_at    BIGINT,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    UNIQUE (payment_id, request_key)
);

CREATE TABLE IF NOT EXISTS payment_ledger (
    seq           BIGSERIAL PRIMARY KEY,
    id            TEXT    NOT NULL UNIQUE,
    payment_id    TEXT    NOT NULL REFERENCES payments (id),
    refund_id     TEXT,
    kind          TEXT    NOT NULL CHECK (kind IN ('charge', 'refund')),
    -- Signed: a charge is positive, a refund negative.
    amount_minor  BIGINT  NOT NULL,
    currency      TEXT    NOT NULL,
    provider_ref  TEXT,
    created_at    BIGINT  NOT NULL
);
CREATE INDEX IF NOT EXISTS payment_ledger_payment ON payment_ledger (payment_id, seq);

-- Append-only: rows are never changed or removed.
CREATE OR REPLACE FUNCTION payment_ledger_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'payment_ledger is append-only';
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS payment_ledger_no_change ON payment_ledger;
CREATE TRIGGER payment_ledger_no_change BEFORE UPDATE OR DELETE ON payment_ledger
    FOR EACH ROW EXECUTE FUNCTION payment_ledger_append_only();
