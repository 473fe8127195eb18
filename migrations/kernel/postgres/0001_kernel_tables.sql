-- Kernel tables every module database has: outbox, inbox, idempotency keys.
-- Times are epoch milliseconds so the same SQL runs on SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS outbox (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    event_type   TEXT    NOT NULL,
    envelope     TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    available_at BIGINT  NOT NULL,
    attempts     BIGINT  NOT NULL DEFAULT 0,
    published_at BIGINT,
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (available_at) WHERE published_at IS NULL;

CREATE TABLE IF NOT EXISTS inbox (
    consumer   TEXT   NOT NULL,
    event_id   TEXT   NOT NULL,
    handled_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE IF NOT EXISTS idempotency_keys (
    principal    TEXT   NOT NULL,
    method       TEXT   NOT NULL,
    route        TEXT   NOT NULL,
    idem_key     TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,
    status       BIGINT,
    content_type TEXT,
    location     TEXT,
    body         TEXT,
    created_at   BIGINT NOT NULL,
    completed_at BIGINT,
    PRIMARY KEY (principal, method, route, idem_key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);
