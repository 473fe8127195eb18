//! Connecting a module to its own database: SQLite (embedded default) or
//! PostgreSQL, with the pragmas and pool sizes agora relies on.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::sqlite::Sqlite;

/// Which kind of store a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mongo,
}

impl Backend {
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else if url.starts_with("mongodb://") || url.starts_with("mongodb+srv://") {
            Some(Backend::Mongo)
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mongo => "mongodb",
        }
    }
}

/// A pooled PostgreSQL connection idle for at least this long is pinged
/// before it is handed out, so a restarted server's dead connections are
/// dropped instead of failing a request. One busy within the last second
/// is not: pinging every checkout (sqlx's `test_before_acquire`) added a
/// round trip to each statement, and on PostgreSQL `bench/run postgres`
/// placed 20-30 % more orders/s without it (docs/performance.md).
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Connect to PostgreSQL. The pool connects lazily so that start-up and
/// readiness can report an unreachable server instead of hanging.
pub async fn connect_postgres(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url).context("invalid PostgreSQL URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IDLE_AFTER {
                    // An error drops the connection; the pool takes another.
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .context("failed to connect to PostgreSQL")?;
    Ok(pool)
}

/// Whether `e` comes from a connection pool that had no connection free
/// within its acquire timeout: the database is overloaded, not broken.
pub fn is_pool_exhausted(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::PoolTimedOut)
        )
    })
}

/// Epoch milliseconds: how kernel tables (outbox, inbox, idempotency keys) store
/// time, so the same SQL runs on SQLite and PostgreSQL and compares correctly.
pub fn epoch_ms(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_epoch_ms(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The kernel tables (outbox, inbox, idempotency keys) for SQLite. Run before a
/// module's own migrations; both share sqlx's bookkeeping table.
///
/// # Errors
/// Migration failures.
pub async fn migrate_kernel_sqlite(db: &Sqlite) -> anyhow::Result<()> {
    db.migrate(&sqlx::migrate!("../../migrations/kernel/sqlite"))
        .await
        .context("failed to create the kernel tables")
}

/// The kernel tables for PostgreSQL.
///
/// # Errors
/// Migration failures.
pub async fn migrate_kernel_postgres(pool: &PgPool) -> anyhow::Result<()> {
    let mut migrator = sqlx::migrate!("../../migrations/kernel/postgres");
    migrator.set_ignore_missing(true);
    migrator
        .run(pool)
        .await
        .context("failed to create the kernel tables")
}

/// The kernel's tables (outbox, inbox, idempotency keys) in one module's
/// database, reached through `H`: a [`Sqlite`] or a `PgPool`. It is the
/// store behind each of their ports (`outbox::sqlite::Store`,
/// `inbox::postgres::Store`, …), which differ only in the SQL they run.
#[derive(Clone)]
pub struct KernelTables<H> {
    pub(crate) db: H,
}

impl<H> KernelTables<H> {
    pub fn new(db: H) -> Self {
        Self { db }
    }
}

impl KernelTables<PgPool> {
    /// Run `sql`, a `DELETE` of the rows older than `$1` (epoch ms), with
    /// `cutoff`; how many it deleted.
    pub(crate) async fn delete_older(
        &self,
        sql: &str,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(sql)
            .bind(epoch_ms(cutoff))
            .execute(&self.db)
            .await?;
        Ok(done.rows_affected())
    }
}

/// A module's relational database: SQLite or PostgreSQL, with the kernel
/// tables in place.
#[derive(Clone)]
pub enum SqlDatabase {
    Sqlite(Sqlite),
    Postgres(PgPool),
}

impl SqlDatabase {
    /// Connect and create the kernel tables. `sqlite:` and `postgres://` URLs.
    ///
    /// # Errors
    /// Unreachable server, bad URL, failed migration.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        match Backend::of_url(url) {
            Some(Backend::Sqlite) => {
                let db = Sqlite::open(url).await?;
                migrate_kernel_sqlite(&db).await?;
                Ok(Self::Sqlite(db))
            }
            Some(Backend::Postgres) => {
                let pool = connect_postgres(url, 16).await?;
                migrate_kernel_postgres(&pool).await?;
                Ok(Self::Postgres(pool))
            }
            _ => anyhow::bail!("not an SQLite or PostgreSQL URL"),
        }
    }

    /// Run a module's own migrations (versions ≥ 100) after the kernel's,
    /// which share sqlx's bookkeeping table: both migrators pass over the
    /// kernel's rows there.
    ///
    /// # Errors
    /// Failed migration.
    pub async fn migrate(
        &self,
        mut sqlite: sqlx::migrate::Migrator,
        mut postgres: sqlx::migrate::Migrator,
    ) -> anyhow::Result<()> {
        sqlite.set_ignore_missing(true);
        postgres.set_ignore_missing(true);
        match self {
            Self::Sqlite(db) => db.migrate(&sqlite).await,
            Self::Postgres(pool) => postgres.run(pool).await.map_err(anyhow::Error::from),
        }
        .context("failed to migrate the module's database")
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }

    /// A round trip to the database, bounded by `timeout`.
    ///
    /// # Errors
    /// The store did not answer in time or answered an error.
    pub async fn ping(&self, timeout: Duration) -> anyhow::Result<()> {
        let fut = async {
            match self {
                Self::Sqlite(db) => db.ping().await,
                Self::Postgres(pool) => sqlx::query("SELECT 1")
                    .execute(pool)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from),
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .context("the database did not answer in time")?
            .context("the database refused a query")
    }

    pub fn outbox(&self) -> std::sync::Arc<dyn crate::outbox::OutboxStore> {
        match self {
            Self::Sqlite(db) => std::sync::Arc::new(crate::outbox::sqlite::Store::new(db.clone())),
            Self::Postgres(pool) => {
                std::sync::Arc::new(crate::outbox::postgres::Store::new(pool.clone()))
            }
        }
    }

    pub fn idempotency(&self) -> std::sync::Arc<dyn crate::idempotency::IdempotencyStore> {
        match self {
            Self::Sqlite(db) => {
                std::sync::Arc::new(crate::idempotency::sqlite::Store::new(db.clone()))
            }
            Self::Postgres(pool) => {
                std::sync::Arc::new(crate::idempotency::postgres::Store::new(pool.clone()))
            }
        }
    }

    pub fn inbox(&self) -> std::sync::Arc<dyn crate::inbox::InboxStore> {
        match self {
            Self::Sqlite(db) => std::sync::Arc::new(crate::inbox::sqlite::Store::new(db.clone())),
            Self::Postgres(pool) => {
                std::sync::Arc::new(crate::inbox::postgres::Store::new(pool.clone()))
            }
        }
    }

    pub async fn close(&self) {
        match self {
            // Its connections close when the last handle drops.
            Self::Sqlite(_) => {}
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

/// A module backed by one [`SqlDatabase`] and its outbox relay: the shape every
/// module starts from. Modules embed it and add their own routes and tasks.
pub struct SqlModuleBase {
    pub name: &'static str,
    pub db: SqlDatabase,
    pub relay: crate::outbox::OutboxRelay,
}

impl SqlModuleBase {
    /// Connect the module's database and set up its outbox relay on the bus.
    ///
    /// # Errors
    /// See [`SqlDatabase::connect`].
    pub async fn connect(
        name: &'static str,
        wiring: &crate::module::Wiring,
    ) -> anyhow::Result<Self> {
        let db = SqlDatabase::connect(&wiring.database_url).await?;
        let relay = crate::outbox::OutboxRelay::new(
            name,
            db.outbox(),
            wiring.bus.clone(),
            crate::outbox::RelayConfig::default(),
        );
        Ok(Self { name, db, relay })
    }

    /// The module as the host sees it: its name, this database's backend and
    /// the `/api/v1` prefixes it serves.
    pub fn info(&self, routes: &[&str]) -> crate::module::ModuleInfo {
        crate::module::ModuleInfo::new(self.name, self.db.backend().as_str(), routes)
    }

    /// The relay as a background task.
    pub fn relay_task(&self) -> crate::module::BackgroundTask {
        let relay = self.relay.clone();
        crate::module::BackgroundTask::new(format!("{}-outbox-relay", self.name), move |token| {
            relay.run(token)
        })
    }

    /// Deletes idempotency keys past their 24 h (checked hourly), so the
    /// table holds one day of keys at most.
    pub fn idempotency_purge_task(&self) -> crate::module::BackgroundTask {
        let ttl = crate::idempotency::IdempotencyConfig::default().ttl;
        self.hourly_purge(
            "idempotency-purge",
            "expired idempotency keys",
            ttl,
            self.db.idempotency(),
            |store, cutoff| async move { store.purge_older_than(cutoff).await },
        )
    }

    /// Forgets events handled more than [`crate::inbox::RETENTION`] ago
    /// (checked hourly), for a module that consumes events: without it the
    /// inbox grows by a row per event for ever.
    pub fn inbox_purge_task(&self) -> crate::module::BackgroundTask {
        self.hourly_purge(
            "inbox-purge",
            "handled events in the inbox",
            crate::inbox::RETENTION,
            self.db.inbox(),
            |store, cutoff| async move { store.purge_handled_before(cutoff).await },
        )
    }

    /// A task that deletes what is older than `keep` from `store` with
    /// `purge`, at start and then hourly, logging what it deleted (`what`) and
    /// warning when it fails.
    fn hourly_purge<S, F, Fut>(
        &self,
        task: &str,
        what: &'static str,
        keep: Duration,
        store: std::sync::Arc<S>,
        purge: F,
    ) -> crate::module::BackgroundTask
    where
        S: ?Sized + Send + Sync + 'static,
        F: Fn(std::sync::Arc<S>, chrono::DateTime<chrono::Utc>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
    {
        let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::TimeDelta::MAX);
        crate::module::BackgroundTask::new(
            format!("{}-{task}", self.name),
            move |token| async move {
                let hourly = Duration::from_secs(3600);
                crate::module::periodically(&token, hourly, None, move || {
                    let cutoff = chrono::Utc::now()
                        .checked_sub_signed(keep)
                        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
                    // Started here, so that the round's future does not borrow `purge`.
                    let purged = purge(store.clone(), cutoff);
                    async move {
                    match purged.await {
                        Ok(n) if n > 0 => tracing::info!(purged = n, what, "old rows deleted"),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), what, "failed to purge old rows")
                        }
                    }
                    crate::module::Round::Idle
                    }
                })
                .await;
            },
        )
    }

    /// Readiness: the database answers within two seconds.
    ///
    /// # Errors
    /// See [`SqlDatabase::ping`].
    pub async fn ready(&self) -> anyhow::Result<()> {
        self.db.ping(Duration::from_secs(2)).await
    }
}
