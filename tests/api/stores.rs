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
