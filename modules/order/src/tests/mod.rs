//! The order module's suite: the store contract on SQLite and PostgreSQL, and
//! the saga against hand-written fakes of the ports it owns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod events;
mod fakes;
mod saga;
mod store_contract;

use std::sync::Arc;

use agora_kernel::db::SqlDatabase;
use agora_kernel::{CallContext, Principal, Role};

use crate::domain::models::{OrderRequest, Quantity, RequestedLine, ShippingAddress, Sku};
use crate::domain::ports::OrderStore;

/// A customer's call, with the e-mail claim `{sub}@example.com`.
pub(crate) fn customer(sub: &str) -> CallContext {
    let mut p = Principal::new(sub, [Role::Customer]);
    p.email = Some(format!("{sub}@example.com"));
    CallContext::new(p, format!("req-{sub}"))
}

/// What a customer sends to order `lines` (sku, quantity), shipped to Alice.
pub(crate) fn request(lines: &[(&str, i64)]) -> OrderRequest {
    OrderRequest {
        lines: lines
            .iter()
            .map(|(s, q)| RequestedLine {
                sku: Sku::parse(s).unwrap(),
                quantity: Quantity::parse(*q).unwrap(),
            })
            .collect(),
        shipping_address: ShippingAddress {
            name: "Alice".into(),
            line1: "1 Main St".into(),
            line2: None,
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        },
        payment_method: "tok_visa".into(),
        idempotency_key: None,
    }
}

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
