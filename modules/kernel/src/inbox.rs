//! The inbox: which events a consumer has already handled, so that an
//! at-least-once bus delivering an event twice changes nothing the second time.
//!
//! Record the event id in the *same transaction* as the consumer's own writes:
//! `if !inbox::postgres::record(&mut tx, "notification", id).await? { return Ok(()) }`
//! (on SQLite, inside [`crate::sqlite::Sqlite::write`]: `inbox::sqlite::record(tx, …)?`),
//! or, for a handler that is one PostgreSQL statement, as its first CTE
//! (`inbox::postgres::insert_new`) with the handler's writes `FROM` it.
//! Table: `inbox(consumer, event_id, handled_at)` with primary key
//! `(consumer, event_id)`. A module that consumes runs
//! [`SqlModuleBase::inbox_purge_task`](crate::db::SqlModuleBase::inbox_purge_task),
//! which forgets events handled more than [`RETENTION`] ago.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::events::jetstream::{DEAD_LETTER_MAX_AGE, EVENT_MAX_AGE};

/// How long the inbox remembers a handled event: the longest an event can
/// come back. A stream keeps an event [`EVENT_MAX_AGE`] and the dead letters
/// [`DEAD_LETTER_MAX_AGE`], and a dead letter replayed to its original subject
/// reaches every subscriber again, also those that handled it the first time.
pub const RETENTION: Duration = EVENT_MAX_AGE.saturating_add(DEAD_LETTER_MAX_AGE);

/// The inbox-store port, for consumers that do not need a surrounding transaction.
#[async_trait]
pub trait InboxStore: Send + Sync {
    /// Record that `consumer` handled `event_id`; `false` when it already had.
    ///
    /// # Errors
    /// Store failures.
    async fn record_once(&self, consumer: &str, event_id: Uuid) -> anyhow::Result<bool>;

    /// Forget the events handled before `cutoff`, for every consumer; returns
    /// how many.
    ///
    /// # Errors
    /// Store failures.
    async fn purge_handled_before(&self, cutoff: DateTime<Utc>) -> anyhow::Result<u64>;
}

macro_rules! sql_inbox {
    ($db:ident, $pool:ty, $conn:ty) => {
        pub mod $db {
            use super::*;
            use anyhow::Context;

            /// Record inside the caller's transaction; `false` means a duplicate.
            ///
            /// # Errors
            /// Store failures.
            pub async fn record(
                conn: &mut $conn,
                consumer: &str,
                event_id: Uuid,
            ) -> anyhow::Result<bool> {
                let done = sqlx::query(
                    "INSERT INTO inbox (consumer, event_id, handled_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (consumer, event_id) DO NOTHING",
                )
                .bind(consumer)
                .bind(event_id.to_string())
                .bind(crate::db::epoch_ms(chrono::Utc::now()))
                .execute(conn)
                .await
                .context("failed to write to the inbox")?;
                Ok(done.rows_affected() == 1)
            }

            /// The CTE body that records `$consumer`, `$event_id` (text) at
            /// `$at` (epoch ms) and yields one row only when the event is new:
            /// a single-statement handler writes `FROM` that CTE, so a
            /// duplicate writes nothing (the outbox's twin is
            /// `outbox::postgres::insert_from`).
            pub fn insert_new(consumer: usize, event_id: usize, at: usize) -> String {
                format!(
                    "INSERT INTO inbox (consumer, event_id, handled_at) VALUES (${consumer}, ${event_id}, ${at}) \
                     ON CONFLICT (consumer, event_id) DO NOTHING RETURNING 1 AS new"
                )
            }

            /// The inbox of one module's database.
            pub type Store = crate::db::KernelTables<$pool>;

            #[async_trait]
            impl InboxStore for Store {
                async fn record_once(
                    &self,
                    consumer: &str,
                    event_id: Uuid,
                ) -> anyhow::Result<bool> {
                    let mut conn = self
                        .db
                        .acquire()
                        .await
                        .context("failed to reach the inbox store")?;
                    record(&mut conn, consumer, event_id).await
                }

                async fn purge_handled_before(&self, cutoff: DateTime<Utc>) -> anyhow::Result<u64> {
                    self.delete_older("DELETE FROM inbox WHERE handled_at < $1", cutoff)
                        .await
                        .context("failed to purge the inbox")
                }
            }
        }
    };
}

/// The inbox on SQLite ([`crate::sqlite::Sqlite`]).
pub mod sqlite {
    use super::*;
    use crate::sqlite::{Sqlite, rusqlite};
    use anyhow::Context;

    /// Record inside the caller's transaction; `false` means a duplicate.
    ///
    /// # Errors
    /// Store failures.
    pub fn record(
        tx: &rusqlite::Connection,
        consumer: &str,
        event_id: Uuid,
    ) -> anyhow::Result<bool> {
        let n = tx
            .prepare_cached(
                "INSERT INTO inbox (consumer, event_id, handled_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (consumer, event_id) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(rusqlite::params![
                    consumer,
                    event_id.to_string(),
                    crate::db::epoch_ms(chrono::Utc::now())
                ])
            })
            .context("failed to write to the inbox")?;
        Ok(n == 1)
    }

    /// The inbox of one module's database.
    pub type Store = crate::db::KernelTables<Sqlite>;

    #[async_trait]
    impl InboxStore for Store {
        async fn record_once(&self, consumer: &str, event_id: Uuid) -> anyhow::Result<bool> {
            let consumer = consumer.to_owned();
            self.db
                .write(move |tx| record(tx, &consumer, event_id))
                .await
        }

        async fn purge_handled_before(&self, cutoff: DateTime<Utc>) -> anyhow::Result<u64> {
            let cutoff = crate::db::epoch_ms(cutoff);
            self.db
                .write(move |tx| {
                    let n = tx
                        .prepare_cached("DELETE FROM inbox WHERE handled_at < ?1")?
                        .execute([cutoff])
                        .context("failed to purge the inbox")?;
                    Ok(n as u64)
                })
                .await
        }
    }
}

sql_inbox!(postgres, sqlx::PgPool, sqlx::PgConnection);
