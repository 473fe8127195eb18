//! The kernel's PostgreSQL stores (outbox, inbox, idempotency keys) against
//! the real server; the SQLite ones are covered by the kernel's own suite.

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::db::{SqlDatabase, epoch_ms};
use agora_kernel::idempotency::{Begin, IdempotencyScope, StoredResponse};
use agora_kernel::outbox::{OutboxRelay, RelayConfig};
use agora_kernel::{EventBus, EventEnvelope, EventHandler, InMemoryBus};
use async_trait::async_trait;

use crate::helpers::fresh_postgres_database;

struct Counter(std::sync::atomic::AtomicUsize);

#[async_trait]
impl EventHandler for Counter {
    fn name(&self) -> &str {
        "counter"
    }
    fn sources(&self) -> &[&str] {
        &["order", "inventory", "payment"]
    }
    fn handles(&self, _: &str) -> bool {
        true
    }
    async fn handle(&self, _: &EventEnvelope) -> anyhow::Result<()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn the_postgres_outbox_publishes_each_committed_event_once() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let db = SqlDatabase::connect(&url).await.unwrap();
    let SqlDatabase::Postgres(pool) = &db else {
        panic!("expected postgres")
    };
    let mut tx = pool.begin().await.unwrap();
    for i in 0..5 {
        let e = EventEnvelope::new("test.happened.v1", "test", "corr", &i).unwrap();
        agora_kernel::outbox::postgres::enqueue(&mut tx, &e)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let e = EventEnvelope::new("test.happened.v1", "test", "corr", &99).unwrap();
    agora_kernel::outbox::postgres::enqueue(&mut tx, &e)
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let bus = Arc::new(InMemoryBus::new());
    let counter = Arc::new(Counter(Default::default()));
    bus.subscribe(counter.clone());
    let bus: Arc<dyn EventBus> = bus;
    // Two relays racing over the same table never deliver a row twice.
    let a = OutboxRelay::new(
        "test",
        db.outbox(),
        bus.clone(),
        RelayConfig {
            batch_size: 2,
            ..RelayConfig::default()
        },
    );
    let b = OutboxRelay::new(
        "test",
        db.outbox(),
        bus,
        RelayConfig {
            batch_size: 2,
            ..RelayConfig::default()
        },
    );
    let mut total = 0;
    for _ in 0..5 {
        let (x, y) = tokio::join!(a.run_once(), b.run_once());
        total += x.unwrap() + y.unwrap();
    }
    assert_eq!(total, 5);
    assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 5);
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

/// Records the order events arrive in.
struct InOrder(std::sync::Mutex<Vec<uuid::Uuid>>);

#[async_trait]
impl EventHandler for InOrder {
    fn name(&self) -> &str {
        "in_order"
    }
    fn sources(&self) -> &[&str] {
        &["test"]
    }
    fn handles(&self, _: &str) -> bool {
        true
    }
    async fn handle(&self, e: &EventEnvelope) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(e.id);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_postgres_outbox_publish_each_event_once_and_in_order() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let db = SqlDatabase::connect(&url).await.unwrap();
    let SqlDatabase::Postgres(pool) = &db else {
        panic!("expected postgres")
    };
    let mut written = Vec::new();
    for chunk in 0..20 {
        let mut tx = pool.begin().await.unwrap();
        for i in 0..10 {
            let e =
                EventEnvelope::new("test.happened.v1", "test", "corr", &(chunk * 10 + i)).unwrap();
            written.push(e.id);
            agora_kernel::outbox::postgres::enqueue(&mut tx, &e)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let bus = Arc::new(InMemoryBus::new());
    let seen = Arc::new(InOrder(Default::default()));
    bus.subscribe(seen.clone());
    let bus: Arc<dyn EventBus> = bus;
    // Two instances of a module, each with its relay, racing over one table.
    let relay = || {
        OutboxRelay::new(
            "test",
            db.outbox(),
            bus.clone(),
            RelayConfig {
                batch_size: 7,
                ..RelayConfig::default()
            },
        )
    };
    let drain = |r: OutboxRelay, store: Arc<dyn agora_kernel::outbox::OutboxStore>| async move {
        while store.backlog().await.unwrap() > 0 {
            r.run_once().await.unwrap();
        }
    };
    let (x, y) = tokio::join!(
        tokio::spawn(drain(relay(), db.outbox())),
        tokio::spawn(drain(relay(), db.outbox()))
    );
    x.unwrap();
    y.unwrap();
    assert_eq!(*seen.0.lock().unwrap(), written, "each once, in order");
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
    let a = InventoryModule::build(&settings, &url, bus())
        .await
        .unwrap();
    let b = InventoryModule::build(&settings, &url, bus())
        .await
        .unwrap();
    let staff = agora_kernel::CallContext::new(
        agora_kernel::Principal::new("sam", [agora_kernel::Role::Staff]),
        "t",
    );
    let api = a.api();
    api.create_warehouse(
        &staff,
        inv::NewWarehouse {
            code: inv::WarehouseCode::parse("BER").unwrap(),
            name: inv::ProductName::parse("Berlin").unwrap(),
        },
    )
    .await
    .unwrap();
    api.create_product(
        &staff,
        inv::NewProduct {
            sku: inv::Sku::parse("MUG").unwrap(),
            name: inv::ProductName::parse("Mug").unwrap(),
            description: None,
            price: agora_kernel::Money::new(850, agora_kernel::Currency::parse("EUR").unwrap()),
            low_stock_threshold: inv::Threshold::new(1).unwrap(),
        },
    )
    .await
    .unwrap();
    api.receive(
        &staff,
        inv::Receipt {
            sku: inv::Sku::parse("MUG").unwrap(),
            warehouse: inv::WarehouseCode::parse("BER").unwrap(),
            quantity: inv::Quantity::new(5).unwrap(),
            reference: None,
        },
    )
    .await
    .unwrap();
    let service = agora_kernel::CallContext::service("order", "t");
    for n in 0..4 {
        api.reserve(
            &service,
            inv::NewReservation {
                id: inv::ReservationId(uuid::Uuid::now_v7()),
                order_id: inv::OrderRef::parse(&format!("o{n}")).unwrap(),
                lines: vec![inv::LineRequest {
                    sku: inv::Sku::parse("MUG").unwrap(),
                    quantity: inv::Quantity::new(1).unwrap(),
                }],
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
