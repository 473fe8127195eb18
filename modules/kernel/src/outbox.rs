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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::{EventBus, EventEnvelope, PublishError};

/// A claimed outbox row.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub envelope: EventEnvelope,
    /// Delivery attempts so far, including this one.
    pub attempts: u32,
}

/// The outbox-store port the relay drives.
///
/// Rows are handed out *head of line*: a claim returns due rows in outbox
/// order up to the first row that is not due (claimed by another relay, or
/// waiting for a retry), so the events of one module are published in the
/// order they were written even across retries and several relays.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Claim up to `limit` due rows in order, hiding them from other relays for
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

    /// Mark rows published; they are never delivered again.
    ///
    /// # Errors
    /// Store failures.
    async fn mark_published(&self, ids: &[Uuid], now: DateTime<Utc>) -> anyhow::Result<()>;

    /// [`mark_published`](Self::mark_published) then
    /// [`claim`](Self::claim), as one transaction where the store can: a
    /// draining relay writes once per batch instead of twice.
    ///
    /// # Errors
    /// Store failures (then neither happened, in a store that folds them).
    async fn mark_published_and_claim(
        &self,
        ids: &[Uuid],
        limit: u32,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<OutboxMessage>> {
        self.mark_published(ids, now).await?;
        self.claim(limit, lease, now).await
    }

    /// Record a failed delivery of `id` and when to try again; `deferred` are
    /// later rows of the same claim that were not attempted: they wait for the
    /// same time and do not count the claim as an attempt.
    ///
    /// # Errors
    /// Store failures.
    async fn mark_failed(
        &self,
        id: Uuid,
        error: &str,
        retry_at: DateTime<Utc>,
        deferred: &[Uuid],
    ) -> anyhow::Result<()>;

    /// Give up on a row (dead letter): it stays in the table with its error,
    /// is never claimed again and no longer holds later rows back.
    ///
    /// # Errors
    /// Store failures.
    async fn mark_dead(&self, id: Uuid, error: &str, now: DateTime<Utc>) -> anyhow::Result<()>;

    /// How many rows wait to be published (dead ones excluded).
    ///
    /// # Errors
    /// Store failures.
    async fn backlog(&self) -> anyhow::Result<u64>;

    /// Delete rows published before `cutoff`; how many.
    ///
    /// # Errors
    /// Store failures.
    async fn purge_published(&self, cutoff: DateTime<Utc>) -> anyhow::Result<u64>;
}

/// How long a relay drains before it looks at its shutdown and purge
/// schedule again.
const DRAIN_FOR: Duration = Duration::from_secs(1);

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
    /// Published rows are deleted once they are this old.
    pub keep_published: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(30),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(60),
            keep_published: Duration::from_secs(7 * 24 * 3600),
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
    /// When the backlog gauge was last refreshed (it costs a count).
    gauged: Arc<std::sync::Mutex<Option<Instant>>>,
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
        metrics::counter!("agora_outbox_publish_failures_total", "module" => module).increment(0);
        metrics::counter!(crate::events::DEAD_LETTERED, "module" => module, "type" => "")
            .increment(0);
        Self {
            module,
            store,
            bus,
            config,
            wake: Arc::new(Notify::new()),
            gauged: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// A handle to wake the relay right after a commit that wrote events.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Claim and publish one batch, in order; returns how many rows were
    /// published. The first row the bus does not take stops the batch (the
    /// rest wait for its retry, so order holds), unless it is dead-lettered:
    /// an event the bus can never take, or one a subscriber failed
    /// `max_deliver` times.
    ///
    /// # Errors
    /// Store failures (a failed publish is recorded, not returned).
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let batch = self
            .store
            .claim(self.config.batch_size, self.config.lease, Utc::now())
            .await?;
        let (done, mut published) = self.publish(&batch).await?;
        published += done.len();
        self.store.mark_published(&done, Utc::now()).await?;
        self.count_published(published);
        self.refresh_backlog(batch.is_empty()).await;
        Ok(published)
    }

    /// [`run_once`](Self::run_once) until a claim finds nothing due, each
    /// batch's rows marked published in the same transaction as the next
    /// claim. Under a steady stream of events that could go on for ever, so
    /// it also stops after [`DRAIN_FOR`] or once `shutdown` is cancelled
    /// (marking its last batch on its own): true when it stopped with rows
    /// possibly still due.
    ///
    /// # Errors
    /// Store failures.
    async fn drain(&self, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        let (limit, lease) = (self.config.batch_size, self.config.lease);
        let started = Instant::now();
        let mut batch = self.store.claim(limit, lease, Utc::now()).await?;
        let first_empty = batch.is_empty();
        while !batch.is_empty() {
            let (done, published) = self.publish(&batch).await?;
            self.count_published(published + done.len());
            if shutdown.is_cancelled() || started.elapsed() >= DRAIN_FOR {
                self.store.mark_published(&done, Utc::now()).await?;
                self.refresh_backlog(false).await;
                return Ok(true);
            }
            batch = self
                .store
                .mark_published_and_claim(&done, limit, lease, Utc::now())
                .await?;
        }
        // The last claim always finds nothing; only an idle wake zeroes the
        // gauge at once (else it is refreshed at most once a second).
        self.refresh_backlog(first_empty).await;
        Ok(false)
    }

    fn count_published(&self, n: usize) {
        if n > 0 {
            metrics::counter!("agora_outbox_published_total", "module" => self.module)
                .increment(n as u64);
        }
    }

    /// Publish a claimed batch in order, recording failures and dead letters
    /// (and marking what was published before one) as they happen. Returns
    /// the published rows not yet marked, which the caller marks, and how
    /// many were published and already marked.
    async fn publish(&self, batch: &[OutboxMessage]) -> anyhow::Result<(Vec<Uuid>, usize)> {
        let max_deliver = self.bus.delivery_policy().max_deliver;
        let mut done: Vec<Uuid> = Vec::with_capacity(batch.len());
        let mut published = 0;
        for (i, message) in batch.iter().enumerate() {
            let envelope = &message.envelope;
            let error = match self.bus.publish(envelope).await {
                Ok(()) => {
                    done.push(envelope.id);
                    metrics::counter!(crate::events::PUBLISHED, "module" => self.module, "type" => envelope.event_type.clone())
                        .increment(1);
                    continue;
                }
                Err(e) => e,
            };
            published += done.len();
            self.store.mark_published(&done, Utc::now()).await?;
            done.clear();
            let text = format!("{error:#}");
            let dead_for = match &error {
                PublishError::Invalid(_) => Some(self.module.to_owned()),
                PublishError::HandlerFailed { handler, .. } if message.attempts >= max_deliver => {
                    Some(handler.clone())
                }
                _ => None,
            };
            if let Some(module) = dead_for {
                tracing::error!(module = self.module, event_id = %envelope.id, event_type = %envelope.event_type,
                    attempts = message.attempts, error = %text, "outbox event dead-lettered");
                crate::events::count(crate::events::DEAD_LETTERED, &module, &envelope.event_type);
                self.store.mark_dead(envelope.id, &text, Utc::now()).await?;
                continue;
            }
            let delay = backoff(
                message.attempts,
                self.config.backoff_base,
                self.config.backoff_max,
            );
            let retry_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            tracing::warn!(module = self.module, event_id = %envelope.id, event_type = %envelope.event_type,
                attempts = message.attempts, retry_in_ms = delay.as_millis() as u64, error = %text,
                "outbox publish failed; will retry");
            metrics::counter!("agora_outbox_publish_failures_total", "module" => self.module)
                .increment(1);
            let deferred: Vec<Uuid> = batch[i + 1..].iter().map(|m| m.envelope.id).collect();
            self.store
                .mark_failed(envelope.id, &text, retry_at, &deferred)
                .await?;
            break;
        }
        Ok((done, published))
    }

    /// Refresh the backlog gauge at most once a second (and whenever the
    /// outbox looked empty, so the gauge reaches 0).
    async fn refresh_backlog(&self, idle: bool) {
        let due = match self.gauged.lock() {
            Ok(mut last) => {
                let due = idle || last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                if due {
                    *last = Some(Instant::now());
                }
                due
            }
            Err(_) => true,
        };
        if due && let Ok(n) = self.store.backlog().await {
            metrics::gauge!("agora_outbox_backlog", "module" => self.module).set(n as f64);
        }
    }

    /// Delete published rows older than `keep_published`.
    async fn purge(&self) {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(self.config.keep_published).unwrap_or_default();
        match self.store.purge_published(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                module = self.module,
                purged = n,
                "old published outbox rows deleted"
            ),
            Err(e) => {
                tracing::warn!(module = self.module, error = %format!("{e:#}"), "failed to purge the outbox")
            }
        }
    }

    /// Run until `shutdown` is cancelled: drain what is due (one write per
    /// batch: see [`OutboxStore::mark_published_and_claim`]), then sleep until
    /// woken or the poll interval passes ([`crate::periodically`]). Once an
    /// hour, delete rows published more than `keep_published` ago.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::debug!(module = self.module, "outbox relay started");
        let next_purge = std::sync::Mutex::new(Instant::now() + Duration::from_secs(60));
        let (this, next_purge, token) = (&self, &next_purge, &shutdown);
        crate::module::periodically(
            token,
            self.config.poll_interval,
            Some(&self.wake),
            move || async move {
                let more = match this.drain(token).await {
                    Ok(more) => more,
                    Err(e) => {
                        tracing::error!(module = this.module, error = %format!("{e:#}"), "outbox relay failed to read its store");
                        false
                    }
                };
                let purge_due = {
                    let mut at = next_purge
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let due = Instant::now() >= *at;
                    if due {
                        *at = Instant::now() + Duration::from_secs(3600);
                    }
                    due
                };
                if purge_due {
                    this.purge().await;
                }
                if more {
                    crate::module::Round::More
                } else {
                    crate::module::Round::Idle
                }
            },
        )
        .await;
        tracing::debug!(module = self.module, "outbox relay stopped");
    }
}

/// Claim rows head of line (see [`OutboxStore`]): the due rows before the
/// first pending row that is not due.
const CLAIM_SQL: &str = "UPDATE outbox SET available_at = $1, attempts = attempts + 1 \
     WHERE seq IN (SELECT seq FROM outbox \
       WHERE published_at IS NULL AND dead_at IS NULL AND available_at <= $2 \
       AND seq < COALESCE((SELECT MIN(seq) FROM outbox \
            WHERE published_at IS NULL AND dead_at IS NULL AND available_at > $2), 9223372036854775807) \
       ORDER BY seq LIMIT $3) \
     RETURNING envelope, attempts";

/// PostgreSQL: claims are serialised by a transaction-level advisory lock (taken
/// inside `outbox_claim`, migration 0003), so a second relay sees the first
/// one's claim (and waits behind it) instead of skipping its locked rows and
/// publishing later ones first.
const PG_CLAIM_LOCK: i64 = 0x6167_6f72_615f_6f62; // "agora_ob"

/// An error as the outbox keeps it: its first 2,000 characters.
fn kept_error(error: &str) -> String {
    error.chars().take(2000).collect()
}

fn to_messages(rows: Vec<(String, i64)>) -> anyhow::Result<Vec<OutboxMessage>> {
    use anyhow::Context;
    let mut messages = Vec::with_capacity(rows.len());
    for (envelope, attempts) in rows {
        let envelope: EventEnvelope = serde_json::from_str(&envelope)
            .context("an outbox row holds an unreadable envelope")?;
        messages.push(OutboxMessage {
            envelope,
            attempts: attempts.max(0) as u32,
        });
    }
    // RETURNING gives no order guarantee: publish oldest first (ids are UUID v7).
    messages.sort_by_key(|m| m.envelope.id);
    Ok(messages)
}

/// Generates the same store for SQLite and PostgreSQL: the SQL is identical
/// but for how a claim is kept from racing another relay's.
macro_rules! sql_outbox {
    ($db:ident, $database:ty, $pool:ty, $conn:ty, claim = |$p:ident, $until:ident, $now:ident, $limit:ident| $claim:expr) => {
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

            /// Events as the three parallel arrays a single-statement write
            /// unnests into the outbox ([`insert_from`]), so that a state
            /// change, its history and its events are one statement: atomic
            /// without `BEGIN`/`COMMIT`, and one round trip instead of five.
            #[derive(Debug, Default)]
            pub struct Batch {
                pub ids: Vec<String>,
                pub types: Vec<String>,
                pub envelopes: Vec<String>,
            }

            impl Batch {
                /// # Errors
                /// An event that does not serialise.
                pub fn of(events: &[EventEnvelope]) -> anyhow::Result<Self> {
                    let mut b = Batch {
                        ids: Vec::with_capacity(events.len()),
                        types: Vec::with_capacity(events.len()),
                        envelopes: Vec::with_capacity(events.len()),
                    };
                    for e in events {
                        b.ids.push(e.id.to_string());
                        b.types.push(e.event_type.clone());
                        b.envelopes.push(serde_json::to_string(e).context("failed to serialise the event")?);
                    }
                    Ok(b)
                }
            }

            /// The CTE body that writes a [`Batch`] to the outbox once for each
            /// row of `source` (a preceding CTE: zero rows, as when a guarded
            /// update matched nothing, write nothing). `$at` is the write time
            /// (epoch ms), `$arrays`, `$arrays+1` and `$arrays+2` the batch's
            /// ids, types and envelopes; rows keep the batch's order.
            pub fn insert_from(source: &str, at: usize, arrays: usize) -> String {
                let (ids, types, envelopes) = (arrays, arrays + 1, arrays + 2);
                format!(
                    "INSERT INTO outbox (id, event_type, envelope, created_at, available_at, attempts) \
                     SELECT x.id, x.event_type, x.envelope, ${at}, ${at}, 0 FROM {source}, \
                     unnest(${ids}::text[], ${types}::text[], ${envelopes}::text[]) WITH ORDINALITY \
                     AS x(id, event_type, envelope, n) ORDER BY x.n"
                )
            }

            /// The outbox of one module's database.
            pub type Store = crate::db::KernelTables<$pool>;

            /// Run `<set>$1<rest> id IN (…)` with `at` as `$1` and `ids` in the list.
            async fn update_listed(pool: &$pool, set: &str, at: i64, rest: &str, ids: &[Uuid]) -> Result<(), sqlx::Error> {
                let mut q = sqlx::QueryBuilder::<$database>::new(set);
                q.push_bind(at).push(rest).push(" id IN (");
                let mut list = q.separated(", ");
                for id in ids {
                    list.push_bind(id.to_string());
                }
                list.push_unseparated(")");
                q.build().execute(pool).await?;
                Ok(())
            }

            /// Run `sql` (`UPDATE outbox SET <time> = $1, last_error = $2
            /// WHERE id = $3`) for row `id`, failed with `error` at `at`.
            async fn record_error(pool: &$pool, sql: &str, at: DateTime<Utc>, error: &str, id: Uuid) -> Result<(), sqlx::Error> {
                sqlx::query(sql)
                    .bind(epoch_ms(at))
                    .bind(kept_error(error))
                    .bind(id.to_string())
                    .execute(pool)
                    .await?;
                Ok(())
            }

            #[async_trait]
            impl OutboxStore for Store {
                async fn claim(&self, limit: u32, lease: Duration, now: DateTime<Utc>) -> anyhow::Result<Vec<OutboxMessage>> {
                    let $now = epoch_ms(now);
                    let $until = $now + lease.as_millis() as i64;
                    let $limit = i64::from(limit);
                    let $p = &self.db;
                    let rows: Vec<(String, i64)> = $claim.context("failed to claim outbox rows")?;
                    to_messages(rows)
                }

                async fn mark_published(&self, ids: &[Uuid], now: DateTime<Utc>) -> anyhow::Result<()> {
                    if ids.is_empty() {
                        return Ok(());
                    }
                    let (set, rest) = ("UPDATE outbox SET published_at = ", ", last_error = NULL WHERE");
                    update_listed(&self.db, set, epoch_ms(now), rest, ids)
                        .await
                        .context("failed to mark outbox rows published")
                }

                async fn mark_failed(&self, id: Uuid, error: &str, retry_at: DateTime<Utc>, deferred: &[Uuid]) -> anyhow::Result<()> {
                    let sql = "UPDATE outbox SET available_at = $1, last_error = $2 WHERE id = $3";
                    record_error(&self.db, sql, retry_at, error, id)
                        .await
                        .context("failed to record an outbox failure")?;
                    if !deferred.is_empty() {
                        let (set, rest) = ("UPDATE outbox SET available_at = ", ", attempts = attempts - 1 WHERE published_at IS NULL AND");
                        update_listed(&self.db, set, epoch_ms(retry_at), rest, deferred)
                            .await
                            .context("failed to defer outbox rows")?;
                    }
                    Ok(())
                }

                async fn mark_dead(&self, id: Uuid, error: &str, now: DateTime<Utc>) -> anyhow::Result<()> {
                    let sql = "UPDATE outbox SET dead_at = $1, last_error = $2 WHERE id = $3";
                    record_error(&self.db, sql, now, error, id)
                        .await
                        .context("failed to dead-letter an outbox row")
                }

                async fn backlog(&self) -> anyhow::Result<u64> {
                    let (n,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL",
                    )
                    .fetch_one(&self.db)
                    .await
                    .context("failed to count the outbox backlog")?;
                    Ok(n.max(0) as u64)
                }

                async fn purge_published(&self, cutoff: DateTime<Utc>) -> anyhow::Result<u64> {
                    let sql = "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1";
                    self.delete_older(sql, cutoff)
                        .await
                        .context("failed to purge published outbox rows")
                }
            }
        }
    };
}

/// The outbox on SQLite ([`crate::sqlite::Sqlite`]): the same statements as
/// PostgreSQL's, run in place on the writer. SQLite has one writer, so a claim
/// cannot race another relay's.
pub mod sqlite {
    use super::*;
    use crate::db::epoch_ms;
    use crate::sqlite::{Sqlite, placeholders, rusqlite};
    use anyhow::Context;

    /// Write an event to the outbox inside the caller's transaction.
    ///
    /// # Errors
    /// Store failures; the caller's transaction must then roll back.
    pub fn enqueue(tx: &rusqlite::Connection, event: &EventEnvelope) -> anyhow::Result<()> {
        let now = epoch_ms(Utc::now());
        let envelope = serde_json::to_string(event).context("failed to serialise the event")?;
        tx.prepare_cached(
            "INSERT INTO outbox (id, event_type, envelope, created_at, available_at, attempts) \
             VALUES (?1, ?2, ?3, ?4, ?4, 0)",
        )
        .and_then(|mut s| {
            s.execute(rusqlite::params![
                event.id.to_string(),
                event.event_type,
                envelope,
                now
            ])
        })
        .context("failed to write to the outbox")?;
        Ok(())
    }

    /// Every event in `events`, in order, inside the caller's transaction.
    ///
    /// # Errors
    /// See [`enqueue`].
    pub fn enqueue_all(tx: &rusqlite::Connection, events: &[EventEnvelope]) -> anyhow::Result<()> {
        events.iter().try_for_each(|e| enqueue(tx, e))
    }

    /// The outbox of one module's database.
    pub type Store = crate::db::KernelTables<Sqlite>;

    /// Run `s` with `first` as `?1` and `ids` as `?2…`.
    fn execute_with_ids(
        s: &mut rusqlite::Statement<'_>,
        first: i64,
        ids: &[String],
    ) -> rusqlite::Result<usize> {
        s.raw_bind_parameter(1, first)?;
        for (i, id) in ids.iter().enumerate() {
            s.raw_bind_parameter(i + 2, id)?;
        }
        s.raw_execute()
    }

    fn claim_in(
        tx: &rusqlite::Connection,
        until: i64,
        now: i64,
        limit: u32,
    ) -> rusqlite::Result<Vec<(String, i64)>> {
        let mut s = tx.prepare_cached(CLAIM_SQL)?;
        let rows = s.query_map(rusqlite::params![until, now, i64::from(limit)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        rows.collect()
    }

    fn mark_published_in(
        tx: &rusqlite::Connection,
        now: i64,
        list: &[String],
    ) -> rusqlite::Result<usize> {
        let sql = format!(
            "UPDATE outbox SET published_at = ?1, last_error = NULL WHERE id IN ({})",
            placeholders(2, list.len())
        );
        let mut statement = tx.prepare_cached(&sql)?;
        execute_with_ids(&mut statement, now, list)
    }

    fn ids(ids: &[Uuid]) -> Vec<String> {
        ids.iter().map(Uuid::to_string).collect()
    }

    #[async_trait]
    impl OutboxStore for Store {
        async fn claim(
            &self,
            limit: u32,
            lease: Duration,
            now: DateTime<Utc>,
        ) -> anyhow::Result<Vec<OutboxMessage>> {
            // Nothing to mark: the same transaction, the claim alone.
            self.mark_published_and_claim(&[], limit, lease, now).await
        }

        async fn mark_published(&self, ids_: &[Uuid], now: DateTime<Utc>) -> anyhow::Result<()> {
            if ids_.is_empty() {
                return Ok(());
            }
            let now = epoch_ms(now);
            let list = ids(ids_);
            self.db
                .write(move |tx| mark_published_in(tx, now, &list))
                .await
                .context("failed to mark outbox rows published")?;
            Ok(())
        }

        async fn mark_published_and_claim(
            &self,
            ids_: &[Uuid],
            limit: u32,
            lease: Duration,
            now: DateTime<Utc>,
        ) -> anyhow::Result<Vec<OutboxMessage>> {
            let now = epoch_ms(now);
            let until = now + lease.as_millis() as i64;
            let list = ids(ids_);
            let rows = self
                .db
                .write(move |tx| {
                    if !list.is_empty() {
                        mark_published_in(tx, now, &list)?;
                    }
                    claim_in(tx, until, now, limit)
                })
                .await
                .context("failed to claim outbox rows")?;
            to_messages(rows)
        }

        async fn mark_failed(
            &self,
            id: Uuid,
            error: &str,
            retry_at: DateTime<Utc>,
            deferred: &[Uuid],
        ) -> anyhow::Result<()> {
            let error = kept_error(error);
            let retry_at = epoch_ms(retry_at);
            let deferred = ids(deferred);
            self.db
                .write(move |tx| {
                    tx.prepare_cached(
                        "UPDATE outbox SET available_at = ?1, last_error = ?2 WHERE id = ?3",
                    )?
                    .execute(rusqlite::params![
                        retry_at,
                        error,
                        id.to_string()
                    ])?;
                    if !deferred.is_empty() {
                        let sql = format!(
                            "UPDATE outbox SET available_at = ?1, attempts = attempts - 1 \
                             WHERE published_at IS NULL AND id IN ({})",
                            placeholders(2, deferred.len())
                        );
                        execute_with_ids(&mut tx.prepare(&sql)?, retry_at, &deferred)?;
                    }
                    Ok::<_, rusqlite::Error>(())
                })
                .await
                .context("failed to record an outbox failure")?;
            Ok(())
        }

        async fn mark_dead(&self, id: Uuid, error: &str, now: DateTime<Utc>) -> anyhow::Result<()> {
            let error = kept_error(error);
            let now = epoch_ms(now);
            self.db
                .write(move |tx| {
                    tx.prepare_cached(
                        "UPDATE outbox SET dead_at = ?1, last_error = ?2 WHERE id = ?3",
                    )?
                    .execute(rusqlite::params![now, error, id.to_string()])
                })
                .await
                .context("failed to dead-letter an outbox row")?;
            Ok(())
        }

        async fn backlog(&self) -> anyhow::Result<u64> {
            let n: i64 = self
                .db
                .read(|c| {
                    c.prepare_cached("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL")?
                        .query_row([], |r| r.get(0))
                })
                .await
                .context("failed to count the outbox backlog")?;
            Ok(n.max(0) as u64)
        }

        async fn purge_published(&self, cutoff: DateTime<Utc>) -> anyhow::Result<u64> {
            self.db
                .delete_in_batches(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox \
                     WHERE published_at IS NOT NULL AND published_at < ?1 LIMIT ?2)",
                    epoch_ms(cutoff),
                )
                .await
                .context("failed to purge published outbox rows")
        }
    }
}

sql_outbox!(
    postgres,
    sqlx::Postgres,
    sqlx::PgPool,
    sqlx::PgConnection,
    // One round trip: `outbox_claim` (migration 0003) takes the claim lock and
    // claims under it, in the statement's own transaction.
    claim = |pool, until, now, limit| sqlx::query_as(
        "SELECT claimed_envelope, claimed_attempts FROM outbox_claim($1, $2, $3, $4)"
    )
    .bind(PG_CLAIM_LOCK)
    .bind(until)
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
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
