-- The notification module's tables. Times are epoch milliseconds (as in the
-- kernel tables) so the same SQL runs on SQLite and PostgreSQL.

-- One message to one customer on one channel, created from one event.
CREATE TABLE notifications (
    id              TEXT PRIMARY KEY,
    customer_id     TEXT NOT NULL,
    channel         TEXT NOT NULL,            -- email | sms | push
    template        TEXT NOT NULL,            -- order_confirmed, payment_refunded, ...
    status          TEXT NOT NULL,            -- pending | sent | retrying | dead | skipped
    recipient       TEXT,
    subject         TEXT,
    body_text       TEXT NOT NULL,
    body_html       TEXT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    -- attempts already made when the current round started (a staff retry
    -- starts a new round of max_attempts).
    round_start     BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    next_attempt_at BIGINT,
    sent_at         BIGINT,
    UNIQUE (event_id, channel)
);

CREATE INDEX notifications_due ON notifications (next_attempt_at)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX notifications_by_customer ON notifications (customer_id, id);

-- Every delivery attempt with its outcome and error.
CREATE TABLE notification_attempts (
    notification_id TEXT NOT NULL REFERENCES notifications (id),
    number          BIGINT NOT NULL,
    attempted_at    BIGINT NOT NULL,
    outcome         TEXT NOT NULL,            -- sent | failed | rejected
    error           TEXT,
    PRIMARY KEY (notification_id, number)
);

-- What a customer chose; absent = defaults (e-mail on, SMS and push off).
CREATE TABLE notification_preferences (
    customer_id   TEXT PRIMARY KEY,
    email         TEXT,
    phone         TEXT,
    push_token    TEXT,
    email_enabled BOOLEAN NOT NULL,
    sms_enabled   BOOLEAN NOT NULL,
    push_enabled  BOOLEAN NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- The latest e-mail address seen for a customer in order events.
CREATE TABLE notification_contacts (
    customer_id TEXT PRIMARY KEY,
    email       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
