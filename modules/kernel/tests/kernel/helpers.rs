//! What every kernel test needs: a fresh SQLite database with the kernel tables,
//! a way to wait for something that happens in the background, and the
//! media type of an HTTP answer.

use std::time::{Duration, Instant};

use actix_web::dev::ServiceResponse;
use actix_web::http::header;
use agora_kernel::sqlite::Sqlite;
use tempfile::TempDir;

/// A new SQLite file in its own temporary directory, deleted when dropped.
pub struct TestDb {
    pub pool: Sqlite,
    _dir: TempDir,
}

impl TestDb {
    /// A database with the kernel tables (outbox, inbox, idempotency keys).
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}/k.db", dir.path().display());
        let pool = Sqlite::open(&url).await.expect("the SQLite file opens");
        agora_kernel::db::migrate_kernel_sqlite(&pool)
            .await
            .expect("the kernel tables are created");
        Self { pool, _dir: dir }
    }
}

/// Poll `check` until it holds or `within` has passed; whether it held.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `Content-Type` of an answer, when it has a readable one.
pub fn content_type<B>(res: &ServiceResponse<B>) -> Option<String> {
    res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
