//! The one writer of a database: queued writes, run in batches by whoever
//! holds the connection.
//!
//! A write is a closure queued with a reply channel. The task that queued it
//! then tries to take the connection; if it gets it, it runs every queued
//! write (its own and those that arrived meanwhile) in one `BEGIN IMMEDIATE`
//! transaction, each in a savepoint of its own, commits once and tells each
//! caller how its write went. If another thread holds the connection, that
//! holder runs the new write in its next batch, and the caller only waits for
//! its reply.
//!
//! Why not a mutex each caller takes in turn: a fair async mutex hands the
//! lock to the next waiting task, which then sits in its worker's run queue
//! behind other requests before it runs; on the place-order load the order
//! database's writer was busy 38 % of the time while writers waited 5 ms on
//! average for it (docs/performance.md). Here the connection is never idle
//! while a write is queued, and a batch pays one `BEGIN`/`COMMIT` and one WAL
//! append (each changed page once) for all its writes.
//!
//! A holder stops after [`DRAIN_BUDGET`] and leaves what is still queued to a
//! task of its own, so that one request's thread does not serve everyone
//! else's writes for long.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

/// Writes one transaction holds at most.
const BATCH: usize = 64;

/// How long one holder runs queued writes before handing the rest to a task.
const DRAIN_BUDGET: Duration = Duration::from_millis(2);

/// A queued write, type-erased.
trait Job: Send {
    /// Run the caller's closure on the open transaction; whether its writes
    /// are to be kept (it returned `Ok`).
    fn run(&mut self, conn: &Connection) -> bool;

    /// Reply to the caller: `commit` is how the batch's transaction ended
    /// (only a write that ran and returned `Ok` depends on it).
    fn finish(self: Box<Self>, commit: Result<(), &rusqlite::Error>);
}

type Reply<R, E> = std::thread::Result<Result<R, E>>;

struct Queued<F, R, E> {
    f: Option<F>,
    outcome: Option<Reply<R, E>>,
    reply: oneshot::Sender<Reply<R, E>>,
}

impl<F, R, E> Job for Queued<F, R, E>
where
    F: FnOnce(&Connection) -> Result<R, E> + Send,
    R: Send,
    E: From<rusqlite::Error> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        // A panic is carried back to the caller, whose write is undone.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)));
        let keep = matches!(outcome, Ok(Ok(_)));
        self.outcome = Some(outcome);
        keep
    }

    fn finish(self: Box<Self>, commit: Result<(), &rusqlite::Error>) {
        let reply = match (self.outcome, commit) {
            (Some(Ok(Ok(r))), Ok(())) => Ok(Ok(r)),
            // It ran, but its transaction did not commit.
            (Some(Ok(Ok(_))) | None, Err(e)) => Ok(Err(E::from(copy_error(e)))),
            // Its own error or panic: undone whatever the batch did.
            (Some(outcome), _) => outcome,
            (None, Ok(())) => Ok(Err(E::from(not_run()))),
        };
        // The caller may have gone (a cancelled request): nothing to tell.
        let _ = self.reply.send(reply);
    }
}

/// The writer connection and the writes waiting for it.
pub(super) struct Writer {
    conn: Mutex<Connection>,
    queue: Mutex<Vec<Box<dyn Job>>>,
    /// Where a holder out of budget outside any runtime (the checkpointer's
    /// thread) hands the rest: the runtime that opened the database. Inside
    /// a runtime, the holder's own takes it.
    runtime: Option<tokio::runtime::Handle>,
}

impl Writer {
    pub(super) fn new(conn: Connection) -> Arc<Self> {
        Arc::new(Self {
            conn: Mutex::new(conn),
            queue: Mutex::new(Vec::new()),
            runtime: tokio::runtime::Handle::try_current().ok(),
        })
    }

    /// Queue `f`, run the queue if the connection is free, and wait for `f`'s
    /// reply.
    pub(super) async fn write<R, E, F>(self: &Arc<Self>, f: F) -> Result<R, E>
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
    {
        let (reply, replied) = oneshot::channel();
        let job = Box::new(Queued {
            f: Some(f),
            outcome: None,
            reply,
        });
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(job);
        self.drain();
        match replied.await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // Dropped unanswered: only if the writer itself went away.
            Err(_) => Err(E::from(not_run())),
        }
    }

    /// Use the connection alone (migrations, the checkpointer's restart,
    /// reads of an in-memory database), waiting for the current batch; then
    /// run what was queued meanwhile.
    pub(super) fn exclusive<T>(self: &Arc<Self>, f: impl FnOnce(&mut Connection) -> T) -> T {
        let out = {
            let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        };
        self.drain();
        out
    }

    fn queued(&self) -> bool {
        !self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Run queued writes while this thread can have the connection, for at
    /// most [`DRAIN_BUDGET`]; past it, leave the rest to a task.
    fn drain(self: &Arc<Self>) {
        let until = Instant::now() + DRAIN_BUDGET;
        loop {
            {
                let mut conn = match self.conn.try_lock() {
                    Ok(conn) => conn,
                    Err(TryLockError::Poisoned(p)) => p.into_inner(),
                    // Its holder looks at the queue again before it lets go.
                    Err(TryLockError::WouldBlock) => return,
                };
                loop {
                    let batch: Vec<Box<dyn Job>> = {
                        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                        let n = queue.len().min(BATCH);
                        queue.drain(..n).collect()
                    };
                    if batch.is_empty() {
                        break;
                    }
                    run_batch(&mut conn, batch);
                    if Instant::now() >= until
                        && self.queued()
                        && let Some(runtime) = tokio::runtime::Handle::try_current()
                            .ok()
                            .or_else(|| self.runtime.clone())
                    {
                        drop(conn);
                        let writer = Arc::clone(self);
                        runtime.spawn(async move { writer.drain() });
                        return;
                    }
                }
            }
            // A write queued after the last look found the connection taken:
            // take it again for that write.
            if !self.queued() {
                return;
            }
        }
    }
}

/// One transaction for `jobs`: each in a savepoint when there are several,
/// so that one's `Err` undoes only its own writes.
fn run_batch(conn: &mut Connection, mut jobs: Vec<Box<dyn Job>>) {
    if !conn.is_autocommit() {
        // Left open by a panic outside any job: nothing of it was confirmed.
        let _ = exec(conn, "ROLLBACK");
    }
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        for job in jobs {
            job.finish(Err(&e));
        }
        return;
    }
    let commit = if let [job] = jobs.as_mut_slice() {
        if job.run(conn) {
            exec(conn, "COMMIT")
        } else {
            exec(conn, "ROLLBACK")
                .map_err(|e| tracing::warn!(error = %e, "SQLite rollback failed"))
                .ok();
            Ok(())
        }
    } else {
        let mut broken = None;
        for job in &mut jobs {
            if let Err(e) = exec(conn, "SAVEPOINT agora_write") {
                broken = Some(e);
                break;
            }
            let end = if job.run(conn) {
                exec(conn, "RELEASE agora_write")
            } else {
                exec(conn, "ROLLBACK TO agora_write")
                    .and_then(|()| exec(conn, "RELEASE agora_write"))
            };
            if let Err(e) = end {
                broken = Some(e);
                break;
            }
        }
        match broken {
            Some(e) => Err(e),
            None => exec(conn, "COMMIT"),
        }
    };
    if commit.is_err() && !conn.is_autocommit() {
        let _ = exec(conn, "ROLLBACK");
    }
    for job in jobs {
        job.finish(commit.as_ref().map(|_| ()));
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// The same failure for another caller (`rusqlite::Error` is not `Clone`).
fn copy_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

fn not_run() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
        Some("the write was not run: the database writer went away".to_owned()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> Arc<Writer> {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY)")
            .unwrap();
        Writer::new(conn)
    }

    fn rows(w: &Arc<Writer>) -> Vec<i64> {
        w.exclusive(|c| {
            c.prepare("SELECT v FROM t ORDER BY v")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        })
    }

    #[derive(Debug)]
    enum Refused {
        Db(rusqlite::Error),
        No,
    }

    impl From<rusqlite::Error> for Refused {
        fn from(e: rusqlite::Error) -> Self {
            Self::Db(e)
        }
    }

    /// Writes queued while the connection is taken run together once it is
    /// free; each keeps its own outcome: an `Err` or a panic undoes only that
    /// write's rows, a duplicate key fails only its own write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_queued_behind_a_holder_share_a_batch_and_keep_their_own_outcomes() {
        let w = writer();
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let (taken, is_taken) = std::sync::mpsc::channel::<()>();
        let holder = {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                w.exclusive(|_| {
                    taken.send(()).unwrap();
                    held.recv().unwrap();
                });
            })
        };
        is_taken.recv().unwrap();
        let mut tasks = Vec::new();
        for i in 0..40_i64 {
            let w = Arc::clone(&w);
            tasks.push(tokio::spawn(async move {
                w.write(move |c| {
                    // 40 repeats 1: its insert fails on the key, the first keeps its row.
                    let v = if i == 39 { 1 } else { i };
                    c.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                    assert!(i != 5, "write 5 panics after its insert");
                    if i % 3 == 0 {
                        return Err(Refused::No);
                    }
                    Ok(v)
                })
                .await
            }));
        }
        // Every write is queued behind the holder before it lets go.
        while w.queue.lock().unwrap().len() < 40 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        hold.send(()).unwrap();
        holder.join().unwrap();
        let mut kept = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            let i = i as i64;
            match task.await {
                Err(e) => assert!(e.is_panic() && i == 5, "write {i}: {e}"),
                Ok(Ok(v)) => {
                    assert!(i % 3 != 0 && i != 39, "write {i} should have failed");
                    kept.push(v);
                }
                Ok(Err(Refused::No)) => assert_eq!(i % 3, 0, "write {i}"),
                Ok(Err(Refused::Db(e))) => {
                    assert_eq!(i, 39, "write {i}: {e}");
                    assert!(crate::sqlite::is_unique_violation(&e), "{e}");
                }
            }
        }
        let expected: Vec<i64> = (0..39).filter(|i| i % 3 != 0 && *i != 5).collect();
        assert_eq!(kept, expected);
        assert_eq!(rows(&w), expected);
    }

    /// More queued work than one holder's budget: the rest is handed to a
    /// task, and every write still completes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_queue_is_handed_on_and_every_write_completes() {
        let w = writer();
        let mut tasks = Vec::new();
        for i in 0..600_i64 {
            let w = Arc::clone(&w);
            tasks.push(tokio::spawn(async move {
                w.write(move |c| {
                    std::thread::sleep(Duration::from_micros(50));
                    c.execute("INSERT INTO t (v) VALUES (?1)", [i])
                })
                .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 1);
        }
        assert_eq!(rows(&w), (0..600).collect::<Vec<_>>());
        assert!(w.queue.lock().unwrap().is_empty());
    }
}
