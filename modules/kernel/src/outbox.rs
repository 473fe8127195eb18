//! The transactional outbox and its relay.
//!
//! A module writes its integration events to its own `outbox` table in the same
//! transaction as the state change ([`sqlite::enqueue`], [`postgres::enqueue`]).
//! The [`OutboxRelay`] claims unpublished rows, publishes them on the bus, and
//! marks a row done only after the bus accepted it (every subscriber handled it,
//! or the broker acknowledged it). Failures are retried with exponential
//! back-off; the backlog is exported as `agora_outbox_backlog{module}`.
//!
//! Table (created by each module's migrations, identical on both backends but
//! for the sequence type):
//! `outbox(seq, id, event_type, envelope, created_at, available_at, attempts,
//! published_at, last_error)`, times in epoch milliseconds.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::{EventBus, EventEnvelope};

/// A claimed outbox row.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub envelope: EventEnvelope,
    /// Delivery attempts so far, including this one.
    pub attempts: u32,
}

/// The outbox-store port the relay drives.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Claim up to `limit` rows that are due, hiding them from other relays for
    /// `lease` (a crashed relay's rows come back after it).
    ///
    /// # Errors
    /// Store failures.
    async fn claim(
        &self,
        limit: u32,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<OutboxMessage>>;

    /// Mark a row published; it is never delivered again.
    ///
    /// # Errors
    /// Store failures.
    async fn mark_published(&self, id: Uuid, now: DateTime<Utc>) -> anyhow::Result<()>;

    /// Record a failed delivery and when to try again.
    ///
    /// # Errors
    /// Store failures.
    async fn mark_failed(
        &self,
        id: Uuid,
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> anyhow::Result<()>;

    /// How many rows are not yet published.
    ///
    /// # Errors
    /// Store failures.
    async fn backlog(&self) -> anyhow::Result<u64>;
}

/// Relay tuning.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub batch_size: u32,
    /// How often to look for due rows when nobody pokes the relay.
    pub poll_interval: Duration,
    /// How long a claimed row stays hidden from other relays.
    pub lease: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(30),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Publishes a module's outbox rows.
#[derive(Clone)]
pub struct OutboxRelay {
    module: &'static str,
    store: Arc<dyn OutboxStore>,
    bus: Arc<dyn EventBus>,
    config: RelayConfig,
    wake: Arc<Notify>,
}

/// Back-off before attempt `attempts + 1`: base × 2^(attempts−1), capped, with
/// up to 20 % jitter so failing rows do not retry in lock-step.
pub fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    let raw = base.saturating_mul(1u32 << exp).min(max);
    let jitter = raw.mul_f64(fastrand::f64() * 0.2);
    raw.saturating_add(jitter).min(max)
}

impl OutboxRelay {
    pub fn new(
        module: &'static str,
        store: Arc<dyn OutboxStore>,
        bus: Arc<dyn EventBus>,
        config: RelayConfig,
    ) -> Self {
        Self {
            module,
            store,
            bus,
            config,
            wake: Arc::new(Notify::new()),
        }
    }

    /// A handle to wake the relay right after a commit that wrote events.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Claim and publish one batch; returns how many rows were published.
    ///
    /// # Errors
    /// Store failures (a failed publish is recorded, not returned).
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let now = Utc::now();
        let batch = self
            .store
            .claim(self.config.batch_size, self.config.lease, now)
            .await?;
        let mut published = 0;
        for message in batch {
            let id = message.envelope.id;
            match self.bus.publish(&message.envelope).await {
                Ok(()) => {
                    self.store.mark_published(id, Utc::now()).await?;
                    metrics::counter!("agora_outbox_published_total", "module" => self.module)
                        .increment(1);
                    published += 1;
                }
                Err(e) => {
                    let delay = backoff(
                        message.attempts,
                        self.config.backoff_base,
                        self.config.backoff_max,
                    );
                    let retry_at =
                        Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                    let error = format!("{e:#}");
                    tracing::warn!(module = self.module, event_id = %id, event_type = %message.envelope.event_type,
                        attempts = message.attempts, retry_in_ms = delay.as_millis() as u64, error = %error,
                        "outbox publish failed; will retry");
                    metrics::counter!("agora_outbox_publish_failures_total", "module" => self.module).increment(1);
                    self.store.mark_failed(id, &error, retry_at).await?;
                }
            }
        }
        if let Ok(n) = self.store.backlog().await {
            metrics::gauge!("agora_outbox_backlog", "module" => self.module).set(n as f64);
        }
        Ok(published)
    }

    /// Run until `shutdown` is cancelled: drain what is due, then sleep until
    /// woken or the poll interval passes.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::debug!(module = self.module, "outbox relay started");
        loop {
            let full_batch = match self.run_once().await {
                Ok(n) => n as u32 >= self.config.batch_size,
                Err(e) => {
                    tracing::error!(module = self.module, error = %format!("{e:#}"), "outbox relay failed to read its store");
                    false
                }
            };
            if full_batch {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        tracing::debug!(module = self.module, "outbox relay stopped");
    }
}

/// Generates the same store for SQLite and PostgreSQL: the SQL is identical but
/// for the row lock on claim, which only PostgreSQL needs (SQLite has a single
/// writer).
macro_rules! sql_outbox {
    ($db:ident, $pool:ty, $conn:ty, $lock:literal) => {
        pub mod $db {
            use super::*;
            use crate::db::{epoch_ms};
            use anyhow::Context;

            /// Write an event to the outbox inside the caller's transaction.
            ///
            /// # Errors
            /// Store failures; the caller's transaction must then roll back.
            pub async fn enqueue(conn: &mut $conn, event: &EventEnvelope) -> anyhow::Result<()> {
                let now = epoch_ms(Utc::now());
                sqlx::query(
                    "INSERT INTO outbox (id, event_type, envelope, created_at, available_at, attempts) \
                     VALUES ($1, $2, $3, $4, $4, 0)",
                )
                .bind(event.id.to_string())
                .bind(&event.event_type)
                .bind(serde_json::to_string(event).context("failed to serialise the event")?)
                .bind(now)
                .execute(conn)
                .await
                .context("failed to write to the outbox")?;
                Ok(())
            }

            /// The outbox of one module's database.
            #[derive(Clone)]
            pub struct Store {
                pool: $pool,
            }

            impl Store {
                pub fn new(pool: $pool) -> Self {
                    Self { pool }
                }
            }

            #[async_trait]
            impl OutboxStore for Store {
                async fn claim(&self, limit: u32, lease: Duration, now: DateTime<Utc>) -> anyhow::Result<Vec<OutboxMessage>> {
                    let now_ms = epoch_ms(now);
                    let until = now_ms + lease.as_millis() as i64;
                    let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
                        "UPDATE outbox SET available_at = $1, attempts = attempts + 1 \
                         WHERE seq IN (SELECT seq FROM outbox WHERE published_at IS NULL AND available_at <= $2 \
                         ORDER BY seq LIMIT $3 ", $lock, ") RETURNING envelope, attempts"))
                    .bind(until)
                    .bind(now_ms)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .context("failed to claim outbox rows")?;
                    let mut messages = Vec::with_capacity(rows.len());
                    for (envelope, attempts) in rows {
                        let envelope: EventEnvelope =
                            serde_json::from_str(&envelope).context("an outbox row holds an unreadable envelope")?;
                        messages.push(OutboxMessage { envelope, attempts: attempts.max(0) as u32 });
                    }
                    // RETURNING gives no order guarantee: publish oldest first.
                    messages.sort_by_key(|m| m.envelope.id);
                    Ok(messages)
                }

                async fn mark_published(&self, id: Uuid, now: DateTime<Utc>) -> anyhow::Result<()> {
                    sqlx::query("UPDATE outbox SET published_at = $1, last_error = NULL WHERE id = $2")
                        .bind(epoch_ms(now))
                        .bind(id.to_string())
                        .execute(&self.pool)
                        .await
                        .context("failed to mark an outbox row published")?;
                    Ok(())
                }

                async fn mark_failed(&self, id: Uuid, error: &str, retry_at: DateTime<Utc>) -> anyhow::Result<()> {
                    let error: String = error.chars().take(2000).collect();
                    sqlx::query("UPDATE outbox SET available_at = $1, last_error = $2 WHERE id = $3")
                        .bind(epoch_ms(retry_at))
                        .bind(error)
                        .bind(id.to_string())
                        .execute(&self.pool)
                        .await
                        .context("failed to record an outbox failure")?;
                    Ok(())
                }

                async fn backlog(&self) -> anyhow::Result<u64> {
                    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                        .fetch_one(&self.pool)
                        .await
                        .context("failed to count the outbox backlog")?;
                    Ok(n.max(0) as u64)
                }
            }
        }
    };
}

sql_outbox!(sqlite, sqlx::SqlitePool, sqlx::SqliteConnection, "");
sql_outbox!(
    postgres,
    sqlx::PgPool,
    sqlx::PgConnection,
    "FOR UPDATE SKIP LOCKED"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let first = backoff(1, base, max);
        assert!(first >= base && first <= base.mul_f64(1.2));
        let fourth = backoff(4, base, max);
        assert!(fourth >= Duration::from_millis(800) && fourth <= Duration::from_millis(960));
        assert_eq!(backoff(40, base, max), max);
    }
}
