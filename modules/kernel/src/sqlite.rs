//! SQLite, the embedded default, used in place: no thread hand-off per statement.
//!
//! sqlx runs each SQLite connection on a worker thread and passes every
//! statement to it, and every row back, through channels: two context switches
//! per statement, which at ~40 statements per order cost far more than the
//! database work itself (see docs/performance.md). Here a module's database is a
//! few [`rusqlite`] connections used directly by the task that needs them:
//!
//! - **one writer** with a queue (`sqlite/writer.rs`).
//!   [`Sqlite::write`] queues the caller's closure; whoever finds the
//!   connection free runs everything queued in one `BEGIN IMMEDIATE`
//!   transaction, each closure in a savepoint of its own (its `Err` or panic
//!   undoes only its writes), commits once, and answers each caller. Alone,
//!   a write runs at once on the caller's own thread; under load, writes queue
//!   while a holder runs a batch and go in the next one: the connection is
//!   never idle while a write waits, and SQLite's busy handler (which sleeps)
//!   is never involved inside the process; its 5 s timeout is left for other
//!   processes. A queued write runs even if its caller stops waiting (a
//!   cancelled request): as after a crash, the stores' writes are idempotent
//!   or recovered.
//!   The writer opens its database through a VFS of its own
//!   (`sqlite/wal_vfs.rs`): SQLite's `unix` VFS, except that a commit's WAL
//!   frames go to the file in one `pwrite` instead of two per page.
//! - **read-only connections** ([`SQLITE_READERS`]) that [`Sqlite::read`] uses in
//!   place; WAL readers never block the writer nor wait for it.
//! - **a checkpointer thread**: the writer does not checkpoint on commit
//!   (`wal_autocheckpoint=0`); every 100 ms a passive checkpoint copies committed
//!   WAL pages into the database file, so that copy and its `fsync` stay off the
//!   request path. Under steady writes a passive checkpoint never catches up
//!   with the log (it copies the log as it was when it began), and SQLite
//!   starts the log over only once everything is copied: the WAL would grow
//!   without end (1.5 GB in 10 s at 600 orders/s, each new page zeroed by the
//!   file system). So once the log holds [`RESTART_AFTER`] bytes, the
//!   checkpointer finishes a passive checkpoint by taking the writer's mutex
//!   for a `RESTART` checkpoint, which copies only the frames written
//!   meanwhile: the next write starts the log from its beginning, and the WAL
//!   file stays about that size. Writers wait for that tail, never for the
//!   whole copy — but the tail includes two `fsync`s, which on a disk busy
//!   with writeback take tens of milliseconds: restarting after every passive
//!   checkpoint (every 100 ms) held each writer ~20 % of the time on such a
//!   disk, so the log starts over only every [`RESTART_AFTER`] bytes, and
//!   only after back-to-back passive copies have caught up with the log, so
//!   that the restart copies a sliver (`agora_sqlite_log_restart_duration_seconds`
//!   records how long each held the writer).
//!
//! Statements are compiled once per connection (`prepare_cached`). Work inside a
//! closure is synchronous and short (microseconds at `synchronous=NORMAL`), and
//! it may run on another caller's thread: it owns what it needs (`'static`)
//! and never calls out of the process.
//!
//! Durability: `synchronous=NORMAL` (default) in WAL mode never corrupts the
//! database, but a power cut (not a process crash) can lose the transactions
//! committed since the last checkpoint's `fsync` (≤ ~100 ms of commits).
//! `?synchronous=full` on the URL (or `AGORA__SQLITE__SYNCHRONOUS=full`) makes
//! every commit `fsync` the WAL before it returns, on the committing thread.
//!
//! Migrations stay sqlx's files and bookkeeping table (`_sqlx_migrations`), so
//! databases created by earlier versions open unchanged: [`Sqlite::migrate`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;
pub use rusqlite;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

mod wal_vfs;
mod writer;
use writer::Writer;

/// Read-only connections beside the writer.
pub const SQLITE_READERS: usize = 4;

/// Rows one purge transaction deletes ([`Sqlite::delete_in_batches`]).
pub const DELETE_BATCH: usize = 2000;

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 128;

const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Passive copies at most run back to back before a restart, and the frames
/// written during one below which the restart may follow (see
/// `spawn_checkpointer`).
const CATCH_UP_ROUNDS: usize = 3;
const CATCH_UP_FRAMES: i64 = 256;

/// Bytes a WAL file is cut back to when the log starts over.
const WAL_SIZE_LIMIT: i64 = 128 * 1024 * 1024;

/// Page size of new databases. Every commit appends each page it changed to
/// the WAL whole, and agora's rows are small (an order or an event is about
/// 0.5 KiB): at SQLite's default 4 KiB, place-order wrote ~140 MB/s of log
/// and checkpoints at 400 orders/s on a 2-core VM, and writers waited on a
/// disk busy with writeback; at 2 KiB a row still fits a page several times
/// over and the disk sees about a third less (docs/performance.md).
pub const PAGE_SIZE: i64 = 2048;

/// Bytes of log after which the checkpointer makes the log start over (see
/// the module docs): a restart holds writers for two `fsync`s, so it is
/// worth it every tens of megabytes, not every checkpoint.
pub const RESTART_AFTER: i64 = 64 * 1024 * 1024;

/// How commits reach the disk (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// WAL is synced at checkpoints: a power cut can lose the last commits.
    #[default]
    Normal,
    /// Every commit syncs the WAL before it returns.
    Full,
}

impl Synchronous {
    /// `normal` or `full` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "normal" => Some(Self::Normal),
            "full" => Some(Self::Full),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

/// Where an `sqlite:` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// `None`: a private in-memory database.
    path: Option<PathBuf>,
    synchronous: Synchronous,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("sqlite:")
        .with_context(|| format!("not an SQLite URL: {url}"))?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut memory = path.is_empty() || path == ":memory:";
    let mut synchronous = Synchronous::Normal;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "mode" => match v {
                "memory" => memory = true,
                // Files are always created when missing.
                "rwc" | "rw" => {}
                _ => anyhow::bail!(
                    "a module's SQLite database must be writable: mode={v} is not supported"
                ),
            },
            "synchronous" => {
                synchronous = Synchronous::parse(v).with_context(|| {
                    format!("synchronous must be normal or full in the SQLite URL, not {v:?}")
                })?;
            }
            // Shared cache changes nothing here: every connection is our own.
            "cache" => {}
            _ => anyhow::bail!("unknown SQLite URL parameter {k:?}"),
        }
    }
    Ok(Target {
        path: (!memory).then(|| PathBuf::from(percent_decoded(path))),
        synchronous,
    })
}

/// `%20` and friends in a URL's path, as sqlx decoded them.
fn percent_decoded(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Inner {
    /// Shared with the checkpointer, which holds it only weakly.
    writer: Arc<Writer>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    path: Option<PathBuf>,
    synchronous: Synchronous,
    /// Dropping it stops the checkpointer.
    _checkpointer: Option<mpsc::Sender<()>>,
}

/// A module's SQLite database: one writer, read-only connections, a checkpointer.
#[derive(Clone)]
pub struct Sqlite {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite")
            .field("path", &self.inner.path)
            .field("synchronous", &self.inner.synchronous)
            .finish_non_exhaustive()
    }
}

/// Every statement a connection starts, BEGIN and COMMIT included, at `debug`
/// under `agora_kernel::sqlite::statement` (`bench/statements` counts them:
/// `RUST_LOG=warn,agora_kernel::sqlite::statement=debug`).
fn log_statement(sql: &str) {
    tracing::debug!(target: "agora_kernel::sqlite::statement", statement = sql, "sqlite statement");
}

fn configure(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Decided when the connection opens, so that it costs nothing otherwise.
    if tracing::enabled!(target: "agora_kernel::sqlite::statement", tracing::Level::DEBUG) {
        conn.trace(Some(log_statement));
    }
    Ok(())
}

impl Sqlite {
    /// Open (creating it and its directory when missing) the database an
    /// `sqlite:` URL names: `sqlite://path/to/file.db`, `sqlite::memory:`,
    /// optionally `?synchronous=full`.
    ///
    /// # Errors
    /// A bad URL, a directory or file that cannot be created or opened.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let target = parse_url(url)?;
        // Opening touches the disk: keep it off the async threads.
        tokio::task::spawn_blocking(move || Self::open_blocking(target))
            .await
            .context("the SQLite opener panicked")?
    }

    fn open_blocking(target: Target) -> anyhow::Result<Self> {
        Self::open_restarting_after(target, RESTART_AFTER)
    }

    /// [`Self::open`] with the log starting over after `restart_after` bytes.
    fn open_restarting_after(target: Target, restart_after: i64) -> anyhow::Result<Self> {
        let Some(path) = target.path.clone() else {
            let mut writer = Connection::open_in_memory()
                .context("failed to open an in-memory SQLite database")?;
            configure(&mut writer)?;
            writer.pragma_update(None, "foreign_keys", true)?;
            return Ok(Self {
                inner: Arc::new(Inner {
                    writer: Writer::new(writer),
                    readers: Vec::new(),
                    next_reader: AtomicUsize::new(0),
                    path: None,
                    synchronous: target.synchronous,
                    _checkpointer: None,
                }),
            });
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("failed to create the data directory {}", dir.display())
            })?;
        }
        // The writer's WAL appends go out one system call per commit (`wal_vfs`).
        wal_vfs::register()?;
        let mut writer =
            Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), wal_vfs::NAME)
                .with_context(|| {
                    format!("failed to open the SQLite database {}", path.display())
                })?;
        configure(&mut writer)?;
        // Only a new, empty database takes it; an existing one keeps its own.
        writer.pragma_update(None, "page_size", PAGE_SIZE)?;
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "{} cannot use WAL mode (journal_mode is {mode})",
            path.display()
        );
        writer.pragma_update(None, "synchronous", target.synchronous.as_str())?;
        writer.pragma_update(None, "foreign_keys", true)?;
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        // A WAL that once grew (a long reader held a restart back) is cut
        // back to this when the log next starts over.
        writer.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        let readers = (0..SQLITE_READERS)
            .map(|_| {
                let mut c = Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                configure(&mut c)?;
                Ok(Mutex::new(c))
            })
            .collect::<rusqlite::Result<Vec<_>>>()
            .with_context(|| format!("failed to open {} for reading", path.display()))?;
        let page_size: i64 = writer.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let writer = Writer::new(writer);
        let restart_frames = (restart_after / page_size.max(512)).max(1);
        let checkpointer = spawn_checkpointer(&path, Arc::downgrade(&writer), restart_frames)?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer,
                readers,
                next_reader: AtomicUsize::new(0),
                path: Some(path),
                synchronous: target.synchronous,
                _checkpointer: Some(checkpointer),
            }),
        })
    }

    /// The database file (`None` in memory).
    pub fn path(&self) -> Option<&std::path::Path> {
        self.inner.path.as_deref()
    }

    pub fn synchronous(&self) -> Synchronous {
        self.inner.synchronous
    }

    /// Run `f` as one atomic write on the writer: kept when it returns `Ok`,
    /// undone when it returns `Err` (or panics, which then resumes in the
    /// caller). It returns once its transaction committed (so any reader sees
    /// it); writes queued meanwhile by other tasks share that transaction, each
    /// in a savepoint of its own (see the module docs).
    ///
    /// # Errors
    /// `f`'s own error, or the database's on begin or commit.
    pub async fn write<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
    {
        self.inner.writer.write(f).await
    }

    /// Run `f` on a read-only connection. Each statement sees the latest
    /// commit; for several statements that must agree, open a transaction in
    /// `f` (`conn.unchecked_transaction()`).
    ///
    /// # Errors
    /// `f`'s own error.
    pub async fn read<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send,
    {
        let readers = &self.inner.readers;
        if readers.is_empty() {
            // In memory: only the writer's connection sees the data.
            return self.inner.writer.exclusive(|conn| f(conn));
        }
        let start = self.inner.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..readers.len() {
            if let Ok(conn) = readers[(start + i) % readers.len()].try_lock() {
                return f(&conn);
            }
        }
        // Every reader is in use on another thread, each for microseconds.
        let conn = readers[start % readers.len()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&conn)
    }

    /// Delete in batches of [`DELETE_BATCH`] rows, one write transaction per
    /// batch, so that a large purge never holds the writer (nor the thread it
    /// runs on) for long. `sql` deletes at most one batch, binding `param` as
    /// `?1` and the batch size as `?2`, e.g.
    /// `DELETE FROM t WHERE rowid IN (SELECT rowid FROM t WHERE at < ?1 LIMIT ?2)`.
    ///
    /// # Errors
    /// A failing batch; the batches before it stay deleted.
    pub async fn delete_in_batches(&self, sql: &'static str, param: i64) -> rusqlite::Result<u64> {
        let mut total = 0u64;
        loop {
            let n = self
                .write(move |tx| {
                    tx.prepare_cached(sql)?
                        .execute(rusqlite::params![param, DELETE_BATCH])
                })
                .await?;
            total += n as u64;
            if n < DELETE_BATCH {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// One statement's round trip, for readiness.
    ///
    /// # Errors
    /// The database cannot be read.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.read(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
            .await
            .context("the SQLite database cannot be read")?;
        Ok(())
    }

    /// Apply sqlx migrations that have not run yet, recording them in sqlx's
    /// `_sqlx_migrations` table exactly as sqlx does. Versions recorded by other
    /// migrators on the same database (the kernel's and the module's share it)
    /// are left alone; a changed migration that already ran is refused.
    ///
    /// # Errors
    /// A failing migration (rolled back) or a checksum mismatch.
    pub async fn migrate(&self, migrator: &sqlx::migrate::Migrator) -> anyhow::Result<()> {
        self.inner.writer.exclusive(|conn| migrate(conn, migrator))
    }
}

fn migrate(conn: &mut Connection, migrator: &sqlx::migrate::Migrator) -> anyhow::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            success BOOLEAN NOT NULL,
            checksum BLOB NOT NULL,
            execution_time BIGINT NOT NULL
        );",
    )
    .context("failed to create the migrations table")?;
    // As sqlx does: a migration that failed earlier (any migrator's) stops all.
    let dirty: Option<i64> = conn
        .query_row(
            "SELECT version FROM _sqlx_migrations WHERE success = 0 LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(v) = dirty {
        anyhow::bail!("migration {v} failed earlier and left the database dirty");
    }
    for m in migrator.iter() {
        if m.migration_type.is_down_migration() {
            continue;
        }
        let applied: Option<(Vec<u8>, bool)> = conn
            .query_row(
                "SELECT checksum, success FROM _sqlx_migrations WHERE version = ?1",
                [m.version],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match applied {
            Some((checksum, true)) if checksum == *m.checksum => continue,
            Some((_, true)) => anyhow::bail!(
                "migration {} ({}) was changed after it ran",
                m.version,
                m.description
            ),
            Some((_, false)) => anyhow::bail!(
                "migration {} ({}) failed earlier and left the database dirty",
                m.version,
                m.description
            ),
            None => {}
        }
        let started = Instant::now();
        if m.no_tx {
            conn.execute_batch(&m.sql)
                .with_context(|| format!("migration {} ({}) failed", m.version, m.description))?;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !m.no_tx {
            tx.execute_batch(&m.sql)
                .with_context(|| format!("migration {} ({}) failed", m.version, m.description))?;
        }
        tx.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (?1, ?2, TRUE, ?3, ?4)",
            rusqlite::params![
                m.version,
                m.description.as_ref(),
                m.checksum.as_ref(),
                i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX)
            ],
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// Passive checkpoints every [`CHECKPOINT_EVERY`] on a connection of their own;
/// once the log holds `restart_frames` frames, one is finished under the
/// writer's mutex so that the log starts over (see the module docs). Until
/// the returned sender is dropped.
fn spawn_checkpointer(
    path: &std::path::Path,
    writer: Weak<Writer>,
    restart_frames: i64,
) -> anyhow::Result<mpsc::Sender<()>> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("failed to open {} for checkpoints", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let (stop, stopped) = mpsc::channel::<()>();
    let database = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("db")
        .to_owned();
    let name = format!("sqlite-checkpoint-{database}");
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            // The log as the last restart left it: no write since, nothing to do.
            let mut settled = None;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                let mut progress = match checkpoint(&conn, Checkpoint::Passive) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "SQLite checkpoint failed");
                        continue;
                    }
                };
                // Below the mark (a log that the passive copy caught up with
                // starts over by itself at the next write) or nothing new.
                if progress.log < restart_frames || Some(progress) == settled {
                    continue;
                }
                // Catch up first, writers free: what the restart has left to
                // copy (and sync) with writers held is what was written
                // during the last passive copy, so copy again while that is
                // more than a sliver.
                for _ in 0..CATCH_UP_ROUNDS {
                    match checkpoint(&conn, Checkpoint::Passive) {
                        Ok(next) => {
                            let written = next.log - progress.log;
                            progress = next;
                            if written <= CATCH_UP_FRAMES {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "SQLite checkpoint failed");
                            break;
                        }
                    }
                }
                // Writes may have gone on during the copy (a passive
                // checkpoint copies the log as it was when it began), so the
                // log cannot start over by itself: finish with writers held.
                let Some(writer) = writer.upgrade() else {
                    break;
                };
                // A plain thread, not a runtime's: blocking here is fine.
                let held = Instant::now();
                let restarted = writer.exclusive(|writer| checkpoint(writer, Checkpoint::Restart));
                metrics::histogram!("agora_sqlite_log_restart_duration_seconds", "database" => database.clone())
                    .record(held.elapsed().as_secs_f64());
                match restarted {
                    Ok(p) if !p.busy => settled = Some(p),
                    Ok(_) => settled = None,
                    Err(e) => tracing::warn!(error = %e, "SQLite checkpoint failed"),
                }
            }
        })
        .context("failed to start the SQLite checkpointer")?;
    Ok(stop)
}

#[derive(Debug, Clone, Copy)]
enum Checkpoint {
    Passive,
    Restart,
}

/// What a checkpoint saw: frames in the log when it began, and frames copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    /// The other side held a lock the checkpoint needed.
    busy: bool,
    log: i64,
    copied: i64,
}

fn checkpoint(conn: &Connection, mode: Checkpoint) -> rusqlite::Result<Progress> {
    let sql = match mode {
        Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        Checkpoint::Restart => "PRAGMA wal_checkpoint(RESTART)",
    };
    conn.query_row(sql, [], |r| {
        Ok(Progress {
            busy: r.get::<_, i64>(0)? != 0,
            log: r.get(1)?,
            copied: r.get(2)?,
        })
    })
}

/// Whether `e` is a unique or primary-key violation.
pub fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// `?1, ?2, …` for an `IN (…)` list of `n` values starting at parameter `from`.
pub fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one number `sql` answers on `db`.
    async fn number(db: &Sqlite, sql: &'static str) -> i64 {
        db.read(move |c| c.query_row(sql, [], |r| r.get::<_, i64>(0)))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn page_size(db: &Sqlite) -> i64 {
        number(db, "PRAGMA page_size").await
    }

    async fn count(db: &Sqlite) -> i64 {
        number(db, "SELECT COUNT(*) FROM t").await
    }

    #[test]
    fn urls_name_a_file_or_memory_and_a_sync_level() {
        let t = parse_url("sqlite://./data/order.db").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.path, Some(PathBuf::from("./data/order.db")));
        assert_eq!(t.synchronous, Synchronous::Normal);
        let t = parse_url("sqlite:///tmp/x.db?synchronous=FULL&mode=rwc")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.path, Some(PathBuf::from("/tmp/x.db")));
        assert_eq!(t.synchronous, Synchronous::Full);
        assert_eq!(
            parse_url("sqlite::memory:").ok().map(|t| t.path),
            Some(None)
        );
        assert!(parse_url("sqlite://x.db?synchronous=off").is_err());
        assert!(parse_url("sqlite://x.db?journal=delete").is_err());
        assert!(parse_url("sqlite://x.db?mode=ro").is_err());
        let t = parse_url("sqlite:///srv/my%20data/order.db").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.path, Some(PathBuf::from("/srv/my data/order.db")));
    }

    #[tokio::test]
    async fn new_databases_use_small_pages_and_existing_ones_keep_theirs() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let fresh = Sqlite::open(&format!("sqlite://{}/new.db", dir.path().display()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        fresh
            .write(|tx| tx.execute_batch("CREATE TABLE t (v TEXT)"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page_size(&fresh).await, PAGE_SIZE);

        // A database an earlier version made, with SQLite's default pages.
        let old = dir.path().join("old.db");
        {
            let c = Connection::open(&old).unwrap_or_else(|e| panic!("{e}"));
            c.execute_batch(
                "PRAGMA page_size = 4096; CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('kept');",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let reopened = Sqlite::open(&format!("sqlite://{}", old.display()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page_size(&reopened).await, 4096);
        let v: String = reopened
            .read(|c| c.query_row("SELECT v FROM t", [], |r| r.get(0)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v, "kept");
    }

    #[tokio::test]
    async fn a_failed_write_changes_nothing_and_readers_see_commits() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let db = Sqlite::open(&url).await.unwrap_or_else(|e| panic!("{e}"));
        db.write(|tx| tx.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY)"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        db.write(|tx| tx.execute("INSERT INTO t (v) VALUES (1)", []))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let failed: Result<(), rusqlite::Error> = db
            .write(move |tx| {
                tx.execute("INSERT INTO t (v) VALUES (2)", [])?;
                tx.execute("INSERT INTO t (v) VALUES (1)", []).map(|_| ())
            })
            .await;
        assert!(
            failed.as_ref().is_err_and(is_unique_violation),
            "{failed:?}"
        );
        let n: i64 = db
            .read(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            n, 1,
            "the failed transaction's first insert was rolled back"
        );
    }

    #[tokio::test]
    async fn a_purge_deletes_every_matching_row_in_batches() {
        let db = Sqlite::open("sqlite::memory:")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let rows = 2 * DELETE_BATCH + 7;
        db.write(move |tx| {
            tx.execute_batch("CREATE TABLE t (at INTEGER NOT NULL)")?;
            for i in 0..rows {
                tx.execute("INSERT INTO t (at) VALUES (?1)", [i as i64 % 2])?;
            }
            Ok::<_, rusqlite::Error>(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let deleted = db
            .delete_in_batches(
                "DELETE FROM t WHERE rowid IN (SELECT rowid FROM t WHERE at < ?1 LIMIT ?2)",
                1,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(deleted as usize, rows.div_ceil(2));
        let left: i64 = db
            .read(|c| c.query_row("SELECT COUNT(*) FROM t WHERE at = 0", [], |r| r.get(0)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(left, 0);
    }

    /// Under writes that never pause, the log still starts over: the WAL file
    /// stays a fraction of what was written, instead of holding all of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_steady_writes_the_wal_starts_over_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let target = parse_url(&url).unwrap_or_else(|e| panic!("{e}"));
        // A mark this test's writes pass many times over in two seconds.
        let restart_after = 256 * 1024;
        let db = tokio::task::spawn_blocking(move || {
            Sqlite::open_restarting_after(target, restart_after)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
        db.write(|tx| tx.execute_batch("CREATE TABLE t (v BLOB NOT NULL)"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Each commit appends at least one page (the table's last) to the log.
        let started = Instant::now();
        let mut commits = 0u64;
        while started.elapsed() < Duration::from_secs(2) {
            db.write(|tx| tx.execute("INSERT INTO t (v) VALUES (zeroblob(100))", []))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            commits += 1;
        }
        let written = commits * PAGE_SIZE as u64;
        let wal = std::fs::metadata(dir.path().join("t.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
        // Restarting keeps the file at the largest extent reached between
        // two restarts, which on a loaded machine (the whole suite on two
        // cores: once 28 % of the log written) can be several marks; a log
        // that never starts over would hold all of it.
        assert!(
            commits > 200 && wal < written / 2,
            "{commits} commits wrote {written} bytes of log; the WAL file holds {wal}"
        );
    }

    /// The writer's WAL appends reach the file in one `pwrite` per commit
    /// (`wal_vfs`), and what they write is SQLite's log as ever: readers see
    /// every commit at once, a transaction that spilled pages to the log and
    /// was rolled back leaves nothing behind, the log starts over, and the
    /// database reopens with every committed row (at both sync levels).
    #[tokio::test]
    async fn the_writers_log_takes_one_write_per_commit_and_stays_sound() {
        for sync in ["normal", "full"] {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let url = format!("sqlite://{}/t.db?synchronous={sync}", dir.path().display());
            let target = parse_url(&url).unwrap_or_else(|e| panic!("{e}"));
            // Small enough for the log to start over several times below.
            let db =
                Sqlite::open_restarting_after(target, 128 * 1024).unwrap_or_else(|e| panic!("{e}"));
            db.write(|tx| {
                tx.execute_batch(
                    "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB NOT NULL);
                     CREATE INDEX t_k ON t (k);",
                )
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            let (mut rows, mut counted) = (0i64, 0u64);
            for i in 0..300i64 {
                if i == 150 {
                    // Pages spill to the log before the commit, then the write
                    // fails and its savepoint is rolled back.
                    let failed: Result<(), rusqlite::Error> = db
                        .write(|tx| {
                            tx.pragma_update(None, "cache_size", 4)?;
                            for j in 0..400 {
                                tx.execute(
                                    "INSERT INTO t (k, v) VALUES (?1, zeroblob(3000))",
                                    [format!("spill-{j}")],
                                )?;
                            }
                            Err(rusqlite::Error::InvalidQuery)
                        })
                        .await;
                    assert!(failed.is_err());
                    db.write(|tx| tx.pragma_update(None, "cache_size", -2000))
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                }
                if i == 200 {
                    // A commit of ~1 MB, written in pieces `unix` takes whole.
                    db.write(|tx| {
                        for j in 0..300 {
                            tx.execute(
                                "INSERT INTO t (k, v) VALUES (?1, zeroblob(3000))",
                                [format!("big-{j}")],
                            )?;
                        }
                        Ok::<_, rusqlite::Error>(())
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{sync}: a large commit failed: {e}"));
                    rows += 300;
                }
                let before = wal_vfs::writes();
                // A row over an overflow page, in a table and an index: each
                // commit appends several frames.
                db.write(move |tx| {
                    tx.execute(
                        "INSERT INTO t (k, v) VALUES (?1, zeroblob(3000))",
                        [format!("k-{i}")],
                    )
                })
                .await
                .unwrap_or_else(|e| panic!("{e}"));
                rows += 1;
                // Counted on this thread: a commit the checkpointer's thread
                // ran (queued behind its restart) counts 0 here.
                let writes = wal_vfs::writes() - before;
                assert!(writes <= 2, "{sync}: commit {i} took {writes} writes");
                counted += writes;
                assert_eq!(count(&db).await, rows, "{sync}: a reader missed commit {i}");
            }
            assert!(counted >= 200, "{sync}: only {counted} writes counted");
            let check: String = db
                .read(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get(0)))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(check, "ok");
            drop(db);
            let reopened = Sqlite::open(&url).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                count(&reopened).await,
                rows,
                "{sync}: rows lost on reopening"
            );
        }
    }
}
