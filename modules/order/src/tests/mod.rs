//! The order module's suite: the store contract on SQLite and PostgreSQL, and
//! the saga against hand-written fakes of the ports it owns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod events;
mod fakes;
mod saga;
mod store_contract;

use std::sync::Arc;

use agora_kernel::db::SqlDatabase;

use crate::domain::ports::OrderStore;

/// A fresh store per test: a new SQLite file, or a new PostgreSQL database.
pub(crate) async fn sqlite_store() -> (Arc<dyn OrderStore>, SqlDatabase, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/order.db", dir.path().display());
    let db = migrated(&url).await;
    let SqlDatabase::Sqlite(sqlite) = &db else {
        unreachable!()
    };
    (
        Arc::new(crate::outbound::sql::sqlite::Store::new(sqlite.clone())),
        db,
        dir,
    )
}

pub(crate) async fn postgres_store() -> Option<(Arc<dyn OrderStore>, SqlDatabase)> {
    let url = agora_kernel::testing::fresh_postgres_url().await?;
    let db = migrated(&url).await;
    let SqlDatabase::Postgres(pool) = &db else {
        unreachable!()
    };
    Some((
        Arc::new(crate::outbound::sql::postgres::Store::new(pool.clone())),
        db,
    ))
}

async fn migrated(url: &str) -> SqlDatabase {
    let db = SqlDatabase::connect(url).await.unwrap();
    crate::outbound::sql::migrate(&db).await.unwrap();
    db
}
