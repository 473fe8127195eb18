//! The notification store on SQLite and PostgreSQL (sqlx, `query_as` + `FromRow`).
//!
//! The SQL is written once and generated per backend by a macro. The
//! differences: a write transaction starts with `BEGIN IMMEDIATE` on SQLite
//! (take the single write lock up front), and claiming due notifications locks
//! them with `FOR UPDATE SKIP LOCKED` on PostgreSQL so concurrent workers take
//! different rows.

use std::sync::Arc;

use agora_kernel::db::{SqlDatabase, from_epoch_ms};
use anyhow::Context;
use uuid::Uuid;

use crate::domain::models::{
    Attempt, AttemptOutcome, Channel, ChannelChoice, Email, Notification, NotificationId, Phone,
    Preferences, PushToken, Status, Template,
};
use crate::domain::ports::NotificationStore;

/// The module's own migrations, run after the kernel's. Versions start at 100.
///
/// # Errors
/// A failed migration.
pub async fn migrate(db: &SqlDatabase) -> anyhow::Result<()> {
    let mut sqlite = sqlx::migrate!("../../migrations/notification/sqlite");
    sqlite.set_ignore_missing(true);
    let mut postgres = sqlx::migrate!("../../migrations/notification/postgres");
    postgres.set_ignore_missing(true);
    db.migrate(&sqlite, &postgres).await
}

/// The store for a migrated database.
pub fn store_for(db: &SqlDatabase) -> Arc<dyn NotificationStore> {
    match db {
        SqlDatabase::Sqlite(pool) => Arc::new(sqlite::Store::new(pool.clone())),
        SqlDatabase::Postgres(pool) => Arc::new(postgres::Store::new(pool.clone())),
    }
}

const COLUMNS: &str = "id, customer_id, channel, template, status, recipient, subject, body_text, \
     body_html, attempts, round_start, last_error, event_id, event_type, correlation_id, \
     created_at, updated_at, next_attempt_at, sent_at";

#[derive(sqlx::FromRow)]
struct NotificationRow {
    id: String,
    customer_id: String,
    channel: String,
    template: String,
    status: String,
    recipient: Option<String>,
    subject: Option<String>,
    body_text: String,
    body_html: Option<String>,
    attempts: i64,
    round_start: i64,
    last_error: Option<String>,
    event_id: String,
    event_type: String,
    correlation_id: String,
    created_at: i64,
    updated_at: i64,
    next_attempt_at: Option<i64>,
    sent_at: Option<i64>,
}

impl NotificationRow {
    fn into_domain(self) -> anyhow::Result<Notification> {
        Ok(Notification {
            id: NotificationId::parse(&self.id).context("bad notification id in the store")?,
            customer_id: self.customer_id,
            channel: Channel::parse(&self.channel).context("bad channel in the store")?,
            template: Template::parse(&self.template).context("bad template in the store")?,
            status: Status::parse(&self.status).context("bad status in the store")?,
            recipient: self.recipient,
            subject: self.subject,
            body_text: self.body_text,
            body_html: self.body_html,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            round_start: u32::try_from(self.round_start).unwrap_or(0),
            last_error: self.last_error,
            event_id: Uuid::parse_str(&self.event_id).context("bad event id in the store")?,
            event_type: self.event_type,
            correlation_id: self.correlation_id,
            created_at: from_epoch_ms(self.created_at),
            updated_at: from_epoch_ms(self.updated_at),
            next_attempt_at: self.next_attempt_at.map(from_epoch_ms),
            sent_at: self.sent_at.map(from_epoch_ms),
        })
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    number: i64,
    attempted_at: i64,
    outcome: String,
    error: Option<String>,
}

impl AttemptRow {
    fn into_domain(self) -> anyhow::Result<Attempt> {
        Ok(Attempt {
            number: u32::try_from(self.number).unwrap_or(u32::MAX),
            attempted_at: from_epoch_ms(self.attempted_at),
            outcome: AttemptOutcome::parse(&self.outcome).context("bad outcome in the store")?,
            error: self.error,
        })
    }
}

#[derive(sqlx::FromRow)]
struct PreferencesRow {
    customer_id: String,
    email: Option<String>,
    phone: Option<String>,
    push_token: Option<String>,
    email_enabled: bool,
    sms_enabled: bool,
    push_enabled: bool,
}

impl PreferencesRow {
    fn into_domain(self) -> anyhow::Result<Preferences> {
        Ok(Preferences {
            customer_id: self.customer_id,
            email: self
                .email
                .map(|e| Email::parse(&e))
                .transpose()
                .context("bad e-mail in the store")?,
            phone: self
                .phone
                .map(|e| Phone::parse(&e))
                .transpose()
                .context("bad phone in the store")?,
            push_token: self
                .push_token
                .map(|e| PushToken::parse(&e))
                .transpose()
                .context("bad push token in the store")?,
            channels: ChannelChoice {
                email: self.email_enabled,
                sms: self.sms_enabled,
                push: self.push_enabled,
            },
        })
    }
}

fn ms(t: chrono::DateTime<chrono::Utc>) -> i64 {
    agora_kernel::db::epoch_ms(t)
}

macro_rules! sql_store {
    ($name:ident, $pool:ty, $db:ty, $begin:literal, $lock:literal) => {
        pub mod $name {
            use super::*;
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};

            use crate::domain::models::{AttemptResult, ListFilter};
            use crate::domain::ports::RetryError;

            type Conn = <$db as sqlx::Database>::Connection;

            /// The notification store of one database.
            #[derive(Clone)]
            pub struct Store {
                pool: $pool,
            }

            impl Store {
                pub fn new(pool: $pool) -> Self {
                    Self { pool }
                }

                async fn begin(&self) -> anyhow::Result<sqlx::Transaction<'static, $db>> {
                    self.pool
                        .begin_with($begin)
                        .await
                        .context("failed to start a transaction")
                }
            }

            async fn load(conn: &mut Conn, id: &str) -> anyhow::Result<Option<Notification>> {
                let row: Option<NotificationRow> =
                    sqlx::query_as(&format!("SELECT {COLUMNS} FROM notifications WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(&mut *conn)
                        .await
                        .context("failed to read a notification")?;
                row.map(NotificationRow::into_domain).transpose()
            }

            async fn insert(conn: &mut Conn, n: &Notification) -> anyhow::Result<()> {
                sqlx::query(&format!(
                    "INSERT INTO notifications ({COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
                ))
                .bind(n.id.to_string())
                .bind(&n.customer_id)
                .bind(n.channel.as_str())
                .bind(n.template.as_str())
                .bind(n.status.as_str())
                .bind(&n.recipient)
                .bind(&n.subject)
                .bind(&n.body_text)
                .bind(&n.body_html)
                .bind(i64::from(n.attempts))
                .bind(i64::from(n.round_start))
                .bind(&n.last_error)
                .bind(n.event_id.to_string())
                .bind(&n.event_type)
                .bind(&n.correlation_id)
                .bind(ms(n.created_at))
                .bind(ms(n.updated_at))
                .bind(n.next_attempt_at.map(ms))
                .bind(n.sent_at.map(ms))
                .execute(&mut *conn)
                .await
                .context("failed to insert a notification")?;
                Ok(())
            }

            async fn record_one(
                conn: &mut Conn,
                id: NotificationId,
                r: &AttemptResult,
            ) -> anyhow::Result<bool> {
                let a = &r.attempt;
                let sent_at = (r.new_status == Status::Sent).then_some(ms(a.attempted_at));
                let done = sqlx::query(
                    "UPDATE notifications SET status = $1, attempts = $2, last_error = $3, \
                     next_attempt_at = $4, sent_at = COALESCE($5, sent_at), updated_at = $6 \
                     WHERE id = $7 AND status IN ('pending', 'retrying') AND attempts = $8",
                )
                .bind(r.new_status.as_str())
                .bind(i64::from(a.number))
                .bind(&a.error)
                .bind(r.next_attempt_at.map(ms))
                .bind(sent_at)
                .bind(ms(a.attempted_at))
                .bind(id.to_string())
                .bind(i64::from(a.number) - 1)
                .execute(&mut *conn)
                .await
                .context("failed to update a notification")?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO notification_attempts (notification_id, number, attempted_at, \
                     outcome, error) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id.to_string())
                .bind(i64::from(a.number))
                .bind(ms(a.attempted_at))
                .bind(a.outcome.as_str())
                .bind(&a.error)
                .execute(&mut *conn)
                .await
                .context("failed to record an attempt")?;
                Ok(true)
            }

            #[async_trait]
            impl NotificationStore for Store {
                async fn ingest(
                    &self,
                    consumer: &str,
                    event_id: Uuid,
                    contact: Option<(&str, &str)>,
                    notifications: &[Notification],
                ) -> anyhow::Result<bool> {
                    let mut tx = self.begin().await?;
                    if !agora_kernel::inbox::$name::record(&mut *tx, consumer, event_id).await? {
                        return Ok(false);
                    }
                    if let Some((customer_id, email)) = contact {
                        sqlx::query(
                            "INSERT INTO notification_contacts (customer_id, email, updated_at) \
                             VALUES ($1, $2, $3) ON CONFLICT (customer_id) DO UPDATE \
                             SET email = excluded.email, updated_at = excluded.updated_at",
                        )
                        .bind(customer_id)
                        .bind(email)
                        .bind(ms(Utc::now()))
                        .execute(&mut *tx)
                        .await
                        .context("failed to remember a contact")?;
                    }
                    for n in notifications {
                        insert(&mut tx, n).await?;
                    }
                    tx.commit().await.context("failed to commit an event's notifications")?;
                    Ok(true)
                }

                async fn contact_email(&self, customer_id: &str) -> anyhow::Result<Option<String>> {
                    let row: Option<(String,)> = sqlx::query_as(
                        "SELECT email FROM notification_contacts WHERE customer_id = $1",
                    )
                    .bind(customer_id)
                    .fetch_optional(&self.pool)
                    .await
                    .context("failed to read a contact")?;
                    Ok(row.map(|(e,)| e))
                }

                async fn preferences(&self, customer_id: &str) -> anyhow::Result<Option<Preferences>> {
                    let row: Option<PreferencesRow> = sqlx::query_as(
                        "SELECT customer_id, email, phone, push_token, email_enabled, sms_enabled, \
                         push_enabled FROM notification_preferences WHERE customer_id = $1",
                    )
                    .bind(customer_id)
                    .fetch_optional(&self.pool)
                    .await
                    .context("failed to read preferences")?;
                    row.map(PreferencesRow::into_domain).transpose()
                }

                async fn put_preferences(
                    &self,
                    p: &Preferences,
                    now: DateTime<Utc>,
                ) -> anyhow::Result<()> {
                    sqlx::query(
                        "INSERT INTO notification_preferences (customer_id, email, phone, push_token, \
                         email_enabled, sms_enabled, push_enabled, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (customer_id) DO UPDATE \
                         SET email = excluded.email, phone = excluded.phone, \
                         push_token = excluded.push_token, email_enabled = excluded.email_enabled, \
                         sms_enabled = excluded.sms_enabled, push_enabled = excluded.push_enabled, \
                         updated_at = excluded.updated_at",
                    )
                    .bind(&p.customer_id)
                    .bind(p.email.as_ref().map(|e| e.as_str()))
                    .bind(p.phone.as_ref().map(|e| e.as_str()))
                    .bind(p.push_token.as_ref().map(|e| e.as_str()))
                    .bind(p.channels.email)
                    .bind(p.channels.sms)
                    .bind(p.channels.push)
                    .bind(ms(now))
                    .execute(&self.pool)
                    .await
                    .context("failed to save preferences")?;
                    Ok(())
                }

                async fn get(&self, id: NotificationId) -> anyhow::Result<Option<Notification>> {
                    let mut conn = self.pool.acquire().await.context("failed to reach the store")?;
                    load(&mut conn, &id.to_string()).await
                }

                async fn attempts(&self, id: NotificationId) -> anyhow::Result<Vec<Attempt>> {
                    let rows: Vec<AttemptRow> = sqlx::query_as(
                        "SELECT number, attempted_at, outcome, error FROM notification_attempts \
                         WHERE notification_id = $1 ORDER BY number",
                    )
                    .bind(id.to_string())
                    .fetch_all(&self.pool)
                    .await
                    .context("failed to read attempts")?;
                    rows.into_iter().map(AttemptRow::into_domain).collect()
                }

                async fn list(&self, f: &ListFilter) -> anyhow::Result<Vec<Notification>> {
                    let rows: Vec<NotificationRow> = sqlx::query_as(&format!(
                        "SELECT {COLUMNS} FROM notifications \
                         WHERE ($1 IS NULL OR customer_id = $1) \
                         AND ($2 IS NULL OR status = $2) \
                         AND ($3 IS NULL OR channel = $3) \
                         AND ($4 IS NULL OR id < $4) \
                         ORDER BY id DESC LIMIT $5"
                    ))
                    .bind(f.customer_id.as_deref())
                    .bind(f.status.map(|s| s.as_str()))
                    .bind(f.channel.map(|c| c.as_str()))
                    .bind(f.before.map(|id| id.to_string()))
                    .bind(i64::from(f.limit))
                    .fetch_all(&self.pool)
                    .await
                    .context("failed to list notifications")?;
                    rows.into_iter().map(NotificationRow::into_domain).collect()
                }

                async fn claim_due(
                    &self,
                    now: DateTime<Utc>,
                    lease: std::time::Duration,
                    limit: u32,
                ) -> anyhow::Result<Vec<Notification>> {
                    // One statement: pick the due rows (locked and skipped by
                    // concurrent claimers on PostgreSQL) and move their next
                    // attempt to the end of the lease.
                    let until = ms(now) + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
                    let mut tx = self.begin().await?;
                    let mut rows: Vec<NotificationRow> = sqlx::query_as(&format!(
                        "UPDATE notifications SET next_attempt_at = $1 WHERE id IN \
                         (SELECT id FROM notifications \
                          WHERE status IN ('pending', 'retrying') AND next_attempt_at <= $2 \
                          ORDER BY next_attempt_at LIMIT $3{}) \
                         RETURNING {COLUMNS}",
                        $lock
                    ))
                    .bind(until)
                    .bind(ms(now))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await
                    .context("failed to claim due notifications")?;
                    tx.commit().await.context("failed to commit a claim")?;
                    rows.sort_by(|a, b| a.id.cmp(&b.id));
                    rows.into_iter().map(NotificationRow::into_domain).collect()
                }

                async fn record_attempts(
                    &self,
                    results: &[(NotificationId, AttemptResult)],
                ) -> anyhow::Result<Vec<bool>> {
                    let mut tx = self.begin().await?;
                    let mut applied = Vec::with_capacity(results.len());
                    for (id, r) in results {
                        applied.push(record_one(&mut tx, *id, r).await?);
                    }
                    tx.commit().await.context("failed to commit attempts")?;
                    Ok(applied)
                }

                async fn retry(
                    &self,
                    id: NotificationId,
                    now: DateTime<Utc>,
                ) -> Result<Notification, RetryError> {
                    let mut tx = self.begin().await?;
                    let key = id.to_string();
                    let done = sqlx::query(
                        "UPDATE notifications SET status = 'pending', round_start = attempts, \
                         next_attempt_at = $1, updated_at = $1 WHERE id = $2 AND status = 'dead'",
                    )
                    .bind(ms(now))
                    .bind(&key)
                    .execute(&mut *tx)
                    .await
                    .context("failed to requeue a notification")?;
                    let n = load(&mut tx, &key).await?.ok_or(RetryError::NotFound)?;
                    if done.rows_affected() != 1 {
                        return Err(RetryError::NotDead(n.status));
                    }
                    tx.commit().await.context("failed to commit a retry")?;
                    Ok(n)
                }

                async fn count_by_status(&self) -> anyhow::Result<Vec<(String, i64)>> {
                    sqlx::query_as(
                        "SELECT status, COUNT(*) FROM notifications GROUP BY status ORDER BY status",
                    )
                    .fetch_all(&self.pool)
                    .await
                    .context("failed to count notifications")
                }
            }
        }
    };
}

sql_store!(
    sqlite,
    sqlx::SqlitePool,
    sqlx::Sqlite,
    "BEGIN IMMEDIATE",
    ""
);
sql_store!(
    postgres,
    sqlx::PgPool,
    sqlx::Postgres,
    "BEGIN",
    " FOR UPDATE SKIP LOCKED"
);
