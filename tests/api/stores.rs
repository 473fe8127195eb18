//! The kernel's PostgreSQL stores (outbox, inbox, idempotency keys) against
//! the real server; the SQLite ones are covered by the kernel's own suite.

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::db::{SqlDatabase, epoch_ms};
use agora_kernel::idempotency::{Begin, IdempotencyScope, StoredResponse};
use agora_kernel::outbox::{OutboxRelay, RelayConfig};
use agora_kernel::testing::Recorder;
use agora_kernel::{EventBus, EventEnvelope, EventHandler, InMemoryBus};

use crate::api_contracts::{Catalogue, ServiceCatalogue};
use crate::helpers::fresh_postgres_database;

/// A fresh PostgreSQL database and its pool; `None` (skip) outside CI.
async fn postgres() -> Option<(SqlDatabase, sqlx::PgPool)> {
    let url = fresh_postgres_database().await?;
    let db = SqlDatabase::connect(&url).await.unwrap();
    let SqlDatabase::Postgres(pool) = &db else {
        panic!("expected postgres")
    };
    let pool = pool.clone();
    Some((db, pool))
}

/// Write a `test.happened.v1` event carrying `n` to the outbox in `tx`.
async fn enqueue(tx: &mut sqlx::PgConnection, n: i32) -> EventEnvelope {
    let e = EventEnvelope::new("test.happened.v1", "test", "corr", &n).unwrap();
    agora_kernel::outbox::postgres::enqueue(tx, &e)
        .await
        .unwrap();
    e
}

/// An in-memory bus that delivers to `handler`.
fn bus_to(handler: Arc<dyn EventHandler>) -> Arc<dyn EventBus> {
    let bus = Arc::new(InMemoryBus::new());
    bus.subscribe(handler);
    bus
}

/// A relay of `db`'s outbox to `bus`, `batch_size` events a run.
fn relay(db: &SqlDatabase, bus: Arc<dyn EventBus>, batch_size: u32) -> OutboxRelay {
    let config = RelayConfig {
        batch_size,
        ..RelayConfig::default()
    };
    OutboxRelay::new("test", db.outbox(), bus, config)
}

#[tokio::test]
async fn the_postgres_outbox_publishes_each_committed_event_once() {
    let Some((db, pool)) = postgres().await else {
        return;
    };
    let mut tx = pool.begin().await.unwrap();
    for i in 0..5 {
        enqueue(&mut tx, i).await;
    }
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    enqueue(&mut tx, 99).await;
    tx.rollback().await.unwrap();

    let recorder = Arc::new(Recorder::of("test"));
    let bus = bus_to(recorder.clone());
    // Two relays racing over the same table never deliver a row twice.
    let a = relay(&db, bus.clone(), 2);
    let b = relay(&db, bus, 2);
    let mut total = 0;
    for _ in 0..5 {
        let (x, y) = tokio::join!(a.run_once(), b.run_once());
        total += x.unwrap() + y.unwrap();
    }
    assert_eq!(total, 5);
    assert_eq!(recorder.events().len(), 5);
    assert_eq!(db.outbox().backlog().await.unwrap(), 0);
}

/// The pool pings a connection only after it sat idle (`PING_IDLE_AFTER`):
/// one the server dropped meanwhile is replaced, not failed into a request.
#[tokio::test]
async fn a_pooled_connection_the_server_dropped_is_replaced_once_it_sat_idle() {
    use sqlx::Connection as _;
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let pool = agora_kernel::db::connect_postgres(&url, 1).await.unwrap();
    let backend = "SELECT pg_backend_pid()";
    let first: i32 = sqlx::query_scalar(backend).fetch_one(&pool).await.unwrap();
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(ended);
    tokio::time::sleep(agora_kernel::db::PING_IDLE_AFTER + Duration::from_millis(200)).await;
    let second: i32 = sqlx::query_scalar(backend).fetch_one(&pool).await.unwrap();
    assert_ne!(second, first, "a new connection, on a new backend");
}

#[tokio::test]
async fn the_postgres_inbox_and_idempotency_stores_keep_their_promises() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let db = SqlDatabase::connect(&url).await.unwrap();
    let id = uuid::Uuid::now_v7();
    assert!(db.inbox().record_once("notification", id).await.unwrap());
    assert!(!db.inbox().record_once("notification", id).await.unwrap());
    assert!(db.inbox().record_once("order", id).await.unwrap());

    let store = db.idempotency();
    let scope = IdempotencyScope {
        principal: "alice".into(),
        method: "POST".into(),
        route: "/api/v1/orders".into(),
        key: "k1".into(),
    };
    let now = chrono::Utc::now();
    let (ttl, lock) = (Duration::from_secs(86400), Duration::from_secs(300));
    assert_eq!(
        store.begin(&scope, "h1", now, ttl, lock).await.unwrap(),
        Begin::Started
    );
    assert_eq!(
        store.begin(&scope, "h1", now, ttl, lock).await.unwrap(),
        Begin::InFlight
    );
    assert_eq!(
        store.begin(&scope, "h2", now, ttl, lock).await.unwrap(),
        Begin::Mismatch
    );
    let stored = StoredResponse {
        status: 201,
        content_type: Some("application/json".into()),
        location: None,
        body: "{\"id\":1}".into(),
    };
    store.complete(&scope, &stored, now).await.unwrap();
    assert_eq!(
        store.begin(&scope, "h1", now, ttl, lock).await.unwrap(),
        Begin::Replay(stored)
    );
    // After the TTL the key is forgotten.
    let later = now + chrono::Duration::seconds(86401);
    assert_eq!(
        store.begin(&scope, "h1", later, ttl, lock).await.unwrap(),
        Begin::Started
    );
    assert_eq!(
        store
            .purge_older_than(later + chrono::Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    let _ = epoch_ms(now);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_postgres_outbox_publish_each_event_once_and_in_order() {
    let Some((db, pool)) = postgres().await else {
        return;
    };
    let mut written = Vec::new();
    for chunk in 0..20 {
        let mut tx = pool.begin().await.unwrap();
        for i in 0..10 {
            written.push(enqueue(&mut tx, chunk * 10 + i).await.id);
        }
        tx.commit().await.unwrap();
    }
    let seen = Arc::new(Recorder::of("test"));
    let bus = bus_to(seen.clone());
    // Two instances of a module, each with its relay, racing over one table.
    let drain = |r: OutboxRelay, store: Arc<dyn agora_kernel::outbox::OutboxStore>| async move {
        while store.backlog().await.unwrap() > 0 {
            r.run_once().await.unwrap();
        }
    };
    let (x, y) = tokio::join!(
        tokio::spawn(drain(relay(&db, bus.clone(), 7), db.outbox())),
        tokio::spawn(drain(relay(&db, bus, 7), db.outbox()))
    );
    x.unwrap();
    y.unwrap();
    assert_eq!(seen.ids(), written, "each once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_inventory_instances_on_one_mongodb_release_an_expired_reservation_once() {
    use agora_inventory::InventoryModule;
    use agora_inventory::domain::models as inv;
    let Some(url) = agora_kernel::testing::fresh_mongodb_url("sweep") else {
        return;
    };
    let settings = agora_inventory::Settings::with_url(&url);
    let bus = || -> Arc<dyn EventBus> { Arc::new(InMemoryBus::new()) };
    let a = InventoryModule::build(&settings, agora_kernel::Wiring::new(&url, bus()))
        .await
        .unwrap();
    let b = InventoryModule::build(&settings, agora_kernel::Wiring::new(&url, bus()))
        .await
        .unwrap();
    let staff = agora_kernel::CallContext::new(
        agora_kernel::Principal::new("sam", [agora_kernel::Role::Staff]),
        "t",
    );
    let api = a.api();
    ServiceCatalogue(api.clone()).product("MUG", 850, 5).await;
    let service = agora_kernel::CallContext::service("order", "t");
    for n in 0..4 {
        api.reserve(
            &service,
            inv::NewReservation {
                id: inv::ReservationId(uuid::Uuid::now_v7()),
                order_id: inv::OrderRef::parse(&format!("o{n}")).unwrap(),
                lines: vec![inv::LineRequest::parse("MUG", 1).unwrap()],
                ttl: Some(inv::Ttl::from_secs(1).unwrap()),
            },
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (x, y) = tokio::join!(a.sweep_expired(), b.sweep_expired());
    assert_eq!(
        x.unwrap() + y.unwrap(),
        4,
        "each released once, by one of them"
    );
    let stock = api
        .stock(&staff, &inv::Sku::parse("MUG").unwrap())
        .await
        .unwrap();
    assert_eq!((stock.reserved(), stock.available()), (0, 5));
}
