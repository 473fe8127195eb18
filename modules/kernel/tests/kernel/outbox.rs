//! The outbox relay against a real SQLite outbox: events written in a committed
//! transaction reach every subscriber, at least once, and an inbox makes the
//! second delivery harmless.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agora_kernel::events::{EventEnvelope, EventHandler, InMemoryBus};
use agora_kernel::inbox;
use agora_kernel::outbox::{self, OutboxRelay, OutboxStore, RelayConfig};
use agora_kernel::sqlite::Sqlite;
use agora_kernel::testing::Recorder;
use async_trait::async_trait;
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{TestDb, eventually};

/// A subscriber to the `order` events that records what it was given.
fn recorder(name: &'static str) -> Arc<Recorder> {
    failing(name, 0)
}

/// A recorder that fails its first `times` deliveries.
fn failing(name: &'static str, times: usize) -> Arc<Recorder> {
    Arc::new(Recorder::of("order").named(name).failing_first(times))
}

/// A consumer that records the event in its inbox and writes its own row in the
/// same transaction, as the inbox module documentation prescribes.
struct Shipping {
    pool: Sqlite,
    deliveries: AtomicUsize,
}

impl Shipping {
    async fn new(pool: Sqlite) -> Arc<Self> {
        pool.write(move |tx| tx.execute_batch("CREATE TABLE shipments (event_id TEXT NOT NULL)"))
            .await
            .unwrap();
        Arc::new(Self {
            pool,
            deliveries: AtomicUsize::new(0),
        })
    }

    async fn shipments(&self) -> i64 {
        self.pool
            .read(|c| c.query_row("SELECT COUNT(*) FROM shipments", [], |r| r.get(0)))
            .await
            .unwrap()
    }
}

#[async_trait]
impl EventHandler for Shipping {
    fn name(&self) -> &str {
        "shipping"
    }

    fn sources(&self) -> &[&str] {
        &["order"]
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type == "order.confirmed.v1"
    }

    async fn handle(&self, event: &EventEnvelope) -> anyhow::Result<()> {
        self.deliveries.fetch_add(1, Ordering::SeqCst);
        let (name, id) = (self.name().to_owned(), event.id);
        self.pool
            .write(move |tx| {
                if inbox::sqlite::record(tx, &name, id)? {
                    tx.execute(
                        "INSERT INTO shipments (event_id) VALUES (?1)",
                        [id.to_string()],
                    )?;
                }
                anyhow::Ok(())
            })
            .await
    }
}

fn order_confirmed(n: u32) -> EventEnvelope {
    EventEnvelope::new(
        "order.confirmed.v1",
        "order",
        "req-test",
        &serde_json::json!({ "order": n }),
    )
    .unwrap()
}

/// Enqueue `events` in one committed transaction.
async fn enqueue_committed(pool: &Sqlite, events: &[EventEnvelope]) {
    let events = events.to_vec();
    pool.write(move |tx| outbox::sqlite::enqueue_all(tx, &events))
        .await
        .unwrap();
}

/// The relay-visible state of one outbox row.
#[derive(Debug)]
struct Row {
    attempts: i64,
    available_at: i64,
    published_at: Option<i64>,
    last_error: Option<String>,
}

async fn row(pool: &Sqlite, id: Uuid) -> Row {
    let (attempts, available_at, published_at, last_error): (
        i64,
        i64,
        Option<i64>,
        Option<String>,
    ) = pool
        .read(|c| {
            c.query_row(
                "SELECT attempts, available_at, published_at, last_error FROM outbox WHERE id = ?1",
                [id.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
        })
        .await
        .unwrap();
    Row {
        attempts,
        available_at,
        published_at,
        last_error,
    }
}

async fn outbox_rows(pool: &Sqlite) -> i64 {
    pool.read(|c| c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0)))
        .await
        .unwrap()
}

fn relay(
    pool: &Sqlite,
    bus: Arc<InMemoryBus>,
    config: RelayConfig,
) -> (OutboxRelay, Arc<outbox::sqlite::Store>) {
    let store = Arc::new(outbox::sqlite::Store::new(pool.clone()));
    (OutboxRelay::new("test", store.clone(), bus, config), store)
}

/// A fresh outbox, a relay with `config` publishing it, and the in-process
/// bus it publishes to, with `subscribers` on it.
struct Relayed {
    db: TestDb,
    bus: Arc<InMemoryBus>,
    relay: OutboxRelay,
    store: Arc<outbox::sqlite::Store>,
}

async fn relayed(subscribers: &[&Arc<Recorder>], config: RelayConfig) -> Relayed {
    let db = TestDb::new().await;
    let bus = Arc::new(InMemoryBus::new());
    for subscriber in subscribers {
        bus.subscribe((*subscriber).clone());
    }
    let (relay, store) = relay(&db.pool, bus.clone(), config);
    Relayed {
        db,
        bus,
        relay,
        store,
    }
}

fn batches_of(batch_size: u32) -> RelayConfig {
    RelayConfig {
        batch_size,
        ..RelayConfig::default()
    }
}

fn quick_retries() -> RelayConfig {
    RelayConfig {
        backoff_base: Duration::from_millis(10),
        ..RelayConfig::default()
    }
}

#[tokio::test]
async fn events_of_a_committed_transaction_reach_every_subscriber_once_in_order() {
    let (a, b) = (recorder("a"), recorder("b"));
    let Relayed {
        db, relay, store, ..
    } = relayed(&[&a, &b], RelayConfig::default()).await;
    let events: Vec<_> = (1..=3).map(order_confirmed).collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();

    enqueue_committed(&db.pool, &events).await;
    assert_eq!(store.backlog().await.unwrap(), 3);

    assert_eq!(relay.run_once().await.unwrap(), 3);
    assert_eq!(a.ids(), ids);
    assert_eq!(b.ids(), ids);
    for id in &ids {
        let row = row(&db.pool, *id).await;
        assert!(row.published_at.is_some(), "{id} is marked published");
        assert_eq!(row.attempts, 1);
        assert_eq!(row.last_error, None);
    }
    assert_eq!(store.backlog().await.unwrap(), 0);

    assert_eq!(relay.run_once().await.unwrap(), 0);
    assert_eq!(a.ids(), ids, "a published row is never delivered again");
}

#[tokio::test]
async fn an_event_of_a_rolled_back_transaction_is_never_written_nor_published() {
    let a = recorder("a");
    let Relayed {
        db, relay, store, ..
    } = relayed(&[&a], RelayConfig::default()).await;

    let rolled_back: anyhow::Result<()> = db
        .pool
        .write(move |tx| {
            outbox::sqlite::enqueue(tx, &order_confirmed(1))?;
            anyhow::bail!("the caller's own write failed")
        })
        .await;
    assert!(rolled_back.is_err());
    let kept = order_confirmed(2);
    enqueue_committed(&db.pool, std::slice::from_ref(&kept)).await;

    assert_eq!(outbox_rows(&db.pool).await, 1);
    assert_eq!(store.backlog().await.unwrap(), 1);
    assert_eq!(relay.run_once().await.unwrap(), 1);
    assert_eq!(a.ids(), vec![kept.id]);
}

#[tokio::test]
async fn a_failed_delivery_is_retried_after_its_back_off_and_the_inbox_makes_the_redelivery_harmless()
 {
    let flaky = failing("flaky", 1);
    let Relayed {
        db,
        bus,
        relay,
        store,
    } = relayed(&[&flaky], quick_retries()).await;
    let shipping = Shipping::new(db.pool.clone()).await;
    bus.subscribe(shipping.clone());
    let event = order_confirmed(1);
    enqueue_committed(&db.pool, std::slice::from_ref(&event)).await;

    let before = Utc::now().timestamp_millis();
    assert_eq!(
        relay.run_once().await.unwrap(),
        0,
        "a failed delivery publishes nothing"
    );
    let failed = row(&db.pool, event.id).await;
    assert_eq!(failed.published_at, None);
    assert_eq!(failed.attempts, 1);
    let error = failed.last_error.unwrap_or_default();
    assert!(
        error.contains("flaky"),
        "the error names the failing subscriber: {error}"
    );
    assert!(
        failed.available_at >= before + 10,
        "the retry waits at least the back-off base"
    );
    assert_eq!(store.backlog().await.unwrap(), 1);
    assert_eq!(
        shipping.deliveries.load(Ordering::SeqCst),
        1,
        "the other subscriber still got it"
    );

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(relay.run_once().await.unwrap(), 1);
    let published = row(&db.pool, event.id).await;
    assert!(published.published_at.is_some());
    assert_eq!(published.attempts, 2);
    assert_eq!(published.last_error, None);
    assert_eq!(store.backlog().await.unwrap(), 0);

    assert_eq!(flaky.ids(), vec![event.id, event.id]);
    assert_eq!(
        shipping.deliveries.load(Ordering::SeqCst),
        2,
        "delivery is at least once"
    );
    assert_eq!(
        shipping.shipments().await,
        1,
        "but the consumer's effect happens once"
    );
}

#[tokio::test]
async fn a_failed_delivery_is_not_retried_before_its_back_off_has_passed() {
    let flaky = failing("flaky", 1);
    let config = RelayConfig {
        backoff_base: Duration::from_secs(60),
        ..RelayConfig::default()
    };
    let Relayed { db, relay, .. } = relayed(&[&flaky], config).await;
    enqueue_committed(&db.pool, &[order_confirmed(1)]).await;

    assert_eq!(relay.run_once().await.unwrap(), 0);
    assert_eq!(relay.run_once().await.unwrap(), 0);
    assert_eq!(flaky.ids().len(), 1);
}

#[tokio::test]
async fn a_claimed_row_stays_hidden_from_other_relays_until_its_lease_runs_out() {
    let db = TestDb::new().await;
    let store = outbox::sqlite::Store::new(db.pool.clone());
    let event = order_confirmed(1);
    enqueue_committed(&db.pool, std::slice::from_ref(&event)).await;
    let lease = Duration::from_secs(30);
    let now = Utc::now();

    let first = store.claim(10, lease, now).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].envelope, event,
        "the envelope survives the round trip"
    );
    assert_eq!(first[0].attempts, 1);

    assert!(store.claim(10, lease, now).await.unwrap().is_empty());

    let after_lease = now + chrono::Duration::seconds(31);
    let again = store.claim(10, lease, after_lease).await.unwrap();
    assert_eq!(again.len(), 1, "a crashed relay's row comes back");
    assert_eq!(again[0].attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_sharing_one_outbox_never_publish_the_same_event_twice() {
    let a = recorder("a");
    let config = batches_of(5);
    let Relayed {
        db,
        bus,
        relay: first,
        store,
    } = relayed(&[&a], config.clone()).await;
    let (second, _) = relay(&db.pool, bus, config);
    let events: Vec<_> = (1..=60).map(order_confirmed).collect();
    enqueue_committed(&db.pool, &events).await;

    let drain = |relay: OutboxRelay, store: Arc<outbox::sqlite::Store>| async move {
        let mut published = 0;
        while store.backlog().await.unwrap() > 0 {
            published += relay.run_once().await.unwrap();
            tokio::task::yield_now().await;
        }
        published
    };
    let (x, y) = tokio::join!(
        tokio::spawn(drain(first, store.clone())),
        tokio::spawn(drain(second, store.clone()))
    );

    assert_eq!(x.unwrap() + y.unwrap(), 60);
    let mut seen = a.ids();
    assert_eq!(seen.len(), 60);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 60, "no event was delivered twice");
}

#[tokio::test]
async fn a_running_relay_stops_promptly_when_cancelled() {
    let config = RelayConfig {
        poll_interval: Duration::from_secs(60),
        ..RelayConfig::default()
    };
    let Relayed { relay, .. } = relayed(&[], config).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !running.is_finished(),
        "the relay keeps running until cancelled"
    );

    shutdown.cancel();

    let stopped = tokio::time::timeout(Duration::from_secs(2), running).await;
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "the relay stopped within 2 s"
    );
}

#[tokio::test]
async fn waking_the_relay_publishes_at_once_instead_of_at_the_next_poll() {
    let a = recorder("a");
    let config = RelayConfig {
        poll_interval: Duration::from_secs(60),
        ..RelayConfig::default()
    };
    let Relayed { db, relay, .. } = relayed(&[&a], config).await;
    let waker = relay.waker();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    // Let the relay find the outbox empty and go to sleep.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let event = order_confirmed(1);
    enqueue_committed(&db.pool, std::slice::from_ref(&event)).await;
    let delivered = || a.ids() == [event.id];
    assert!(
        !eventually(Duration::from_millis(300), delivered).await,
        "without a wake-up the relay waits for its 60 s poll"
    );

    waker.notify_one();
    assert!(
        eventually(Duration::from_secs(2), delivered).await,
        "woken, the relay delivers {:?}; delivered: {:?}",
        event.id,
        a.ids()
    );

    shutdown.cancel();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), running)
            .await
            .is_ok()
    );
    assert!(eventually(Duration::from_secs(1), || a.ids().len() == 1).await);
}

/// A running relay drains a backlog larger than a batch: every batch after the
/// first is claimed in the write that marks the one before it published, and
/// in the end every row is published, once, in order.
#[tokio::test]
async fn a_running_relay_drains_batch_after_batch_marking_each_as_it_claims_the_next() {
    let a = recorder("a");
    let config = RelayConfig {
        batch_size: 3,
        poll_interval: Duration::from_secs(60),
        ..RelayConfig::default()
    };
    let Relayed {
        db, relay, store, ..
    } = relayed(&[&a], config).await;
    let events: Vec<_> = (1..=10).map(order_confirmed).collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    enqueue_committed(&db.pool, &events).await;

    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    assert!(eventually(Duration::from_secs(5), || a.ids().len() == 10).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.backlog().await.unwrap() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        store.backlog().await.unwrap(),
        0,
        "every row is marked published"
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), running).await;
    assert_eq!(a.ids(), ids);
    for id in &ids {
        let row = row(&db.pool, *id).await;
        assert!(row.published_at.is_some(), "{id} is marked published");
        assert_eq!(row.attempts, 1, "{id} was claimed once");
    }

    // The store's fold on its own: marks the given rows, claims the next due.
    let more: Vec<_> = (11..=12).map(order_confirmed).collect();
    enqueue_committed(&db.pool, &more).await;
    let first = store
        .claim(1, Duration::from_secs(30), Utc::now())
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let next = store
        .mark_published_and_claim(
            &[first[0].envelope.id],
            10,
            Duration::from_secs(30),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|m| m.envelope.id).collect::<Vec<_>>(),
        [more[1].id]
    );
    assert!(row(&db.pool, more[0].id).await.published_at.is_some());
    assert_eq!(row(&db.pool, more[1].id).await.published_at, None);
}

/// Events that never stop coming do not keep a draining relay from its
/// shutdown: it stops within a second or two of being cancelled, with every
/// event it delivered marked published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_under_a_steady_stream_of_events_still_stops_when_cancelled() {
    let a = recorder("a");
    let config = batches_of(2);
    let Relayed { db, relay, .. } = relayed(&[&a], config).await;
    let waker = relay.waker();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let producing = CancellationToken::new();
    let producer = {
        let (pool, producing) = (db.pool.clone(), producing.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !producing.is_cancelled() {
                n += 1;
                enqueue_committed(&pool, &[order_confirmed(n)]).await;
                waker.notify_one();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    assert!(eventually(Duration::from_secs(5), || a.ids().len() >= 20).await);

    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(3), running).await;
    producing.cancel();
    let _ = producer.await;
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "the relay stopped within 3 s while events kept coming"
    );
    for id in a.ids() {
        assert!(
            row(&db.pool, id).await.published_at.is_some(),
            "{id} was delivered, so it is marked published"
        );
    }
}

/// The store's side of failures on `store`, whose outbox holds just `events`
/// (three, unclaimed): a failed row and the rows deferred behind it wait for
/// the retry time, a dead row is never claimed again, and published rows are
/// purged once older than the cutoff.
async fn failed_dead_and_published_rows(store: &dyn OutboxStore, events: &[EventEnvelope]) {
    let lease = Duration::from_secs(30);
    let now = Utc::now();
    assert_eq!(store.claim(10, lease, now).await.unwrap().len(), 3);

    let retry_at = now + chrono::Duration::minutes(1);
    let error = "x".repeat(3000);
    store
        .mark_failed(events[0].id, &error, retry_at, &[events[1].id])
        .await
        .unwrap();
    store.mark_dead(events[2].id, "poison", now).await.unwrap();
    assert_eq!(
        store.backlog().await.unwrap(),
        2,
        "a dead row is no backlog"
    );
    let after_lease = now + chrono::Duration::seconds(31);
    assert!(
        store
            .claim(10, lease, after_lease)
            .await
            .unwrap()
            .is_empty(),
        "the failed row and the one deferred behind it wait for the retry"
    );

    let after_retry = now + chrono::Duration::minutes(2);
    let retried = store.claim(10, lease, after_retry).await.unwrap();
    assert_eq!(
        retried
            .iter()
            .map(|m| (m.envelope.id, m.attempts))
            .collect::<Vec<_>>(),
        [(events[0].id, 2), (events[1].id, 1)],
        "a deferred row's claim did not count as an attempt"
    );

    let published_at = after_retry;
    store
        .mark_published(&[events[0].id, events[1].id], published_at)
        .await
        .unwrap();
    assert_eq!(store.backlog().await.unwrap(), 0);
    let second = chrono::Duration::seconds(1);
    assert_eq!(
        store.purge_published(published_at - second).await.unwrap(),
        0
    );
    assert_eq!(
        store.purge_published(published_at + second).await.unwrap(),
        2
    );
}

#[tokio::test]
async fn failed_dead_and_published_rows_on_sqlite() {
    let db = TestDb::new().await;
    let events: Vec<_> = (1..=3).map(order_confirmed).collect();
    enqueue_committed(&db.pool, &events).await;
    failed_dead_and_published_rows(&outbox::sqlite::Store::new(db.pool.clone()), &events).await;
}

#[tokio::test]
async fn failed_dead_and_published_rows_on_postgres() {
    let Some(url) = agora_kernel::testing::fresh_postgres_url().await else {
        return;
    };
    let db = agora_kernel::db::SqlDatabase::connect(&url).await.unwrap();
    let agora_kernel::db::SqlDatabase::Postgres(pool) = &db else {
        unreachable!("a postgres:// URL opens PostgreSQL")
    };
    let events: Vec<_> = (1..=3).map(order_confirmed).collect();
    let mut conn = pool.acquire().await.unwrap();
    for event in &events {
        outbox::postgres::enqueue(&mut conn, event).await.unwrap();
    }
    drop(conn);
    failed_dead_and_published_rows(&*db.outbox(), &events).await;
    db.close().await;
}
