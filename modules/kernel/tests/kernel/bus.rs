//! The event-bus port's contract, run against both adapters — the in-process
//! bus and NATS JetStream (a `nats-server` of the test's own) — with events
//! written to a real SQLite outbox and published by the relay, as in agora:
//! every subscriber gets every event; delivery is at least once and an inbox
//! makes a replay change nothing; a failed delivery is retried; the events of
//! one aggregate are handled in the order they were written; a poison event is
//! dead-lettered instead of blocking the rest; namespaces never meet.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_kernel::events::jetstream::{JetStreamBus, JetStreamConfig};
use agora_kernel::events::{DeliveryPolicy, EventBus, EventEnvelope, EventHandler, InMemoryBus};
use agora_kernel::inbox;
use agora_kernel::outbox::{self, OutboxRelay, RelayConfig};
use agora_kernel::sqlite::{Sqlite, rusqlite};
use agora_kernel::testing::{NatsServer, nats_namespace};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::TestDb;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    JetStream,
}

fn policy() -> DeliveryPolicy {
    DeliveryPolicy {
        max_deliver: 3,
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
    }
}

/// A subscriber with an inbox and one row of effect per event, as agora's
/// consumers are: it records the event id and its effect in one transaction.
/// It can be told to fail an event's first deliveries, before or after its
/// transaction committed (the latter is a consumer that died before acking).
struct Consumer {
    name: &'static str,
    db: TestDb,
    deliveries: Mutex<Vec<Uuid>>,
    fail_before: Mutex<HashMap<Uuid, u32>>,
    fail_after: Mutex<HashMap<Uuid, u32>>,
}

impl Consumer {
    async fn new(name: &'static str) -> Arc<Self> {
        let db = TestDb::new().await;
        db.pool
            .write(move |tx| tx.execute_batch("CREATE TABLE effects (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, aggregate TEXT NOT NULL, n INTEGER NOT NULL)"))
            .await
            .unwrap();
        Arc::new(Self {
            name,
            db,
            deliveries: Mutex::new(Vec::new()),
            fail_before: Mutex::new(HashMap::new()),
            fail_after: Mutex::new(HashMap::new()),
        })
    }

    fn fail(&self, id: Uuid, times: u32, after_commit: bool) {
        let map = if after_commit {
            &self.fail_after
        } else {
            &self.fail_before
        };
        map.lock().unwrap().insert(id, times);
    }

    fn take_failure(map: &Mutex<HashMap<Uuid, u32>>, id: Uuid) -> bool {
        let mut m = map.lock().unwrap();
        match m.get_mut(&id) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    fn deliveries_of(&self, id: Uuid) -> usize {
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .filter(|d| **d == id)
            .count()
    }

    /// The effects in the order they were committed: (aggregate, n).
    async fn effects(&self) -> Vec<(String, i64)> {
        self.db
            .pool
            .read(|c| {
                c.prepare("SELECT aggregate, n FROM effects ORDER BY seq")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .unwrap()
    }

    async fn wait_for_effects(&self, n: usize) -> Vec<(String, i64)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let effects = self.effects().await;
            if effects.len() >= n || tokio::time::Instant::now() > deadline {
                return effects;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[async_trait]
impl EventHandler for Consumer {
    fn name(&self) -> &str {
        self.name
    }

    fn sources(&self) -> &[&str] {
        &["order"]
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type.starts_with("order.")
    }

    async fn handle(&self, event: &EventEnvelope) -> anyhow::Result<()> {
        self.deliveries.lock().unwrap().push(event.id);
        if Self::take_failure(&self.fail_before, event.id) {
            anyhow::bail!("{} is failing", self.name);
        }
        let aggregate = event.payload["aggregate"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let n = event.payload["n"].as_i64().unwrap_or_default();
        let (name, id) = (self.name, event.id);
        self.db
            .pool
            .write(move |tx| {
                if inbox::sqlite::record(tx, name, id)? {
                    tx.execute(
                        "INSERT INTO effects (event_id, aggregate, n) VALUES (?1, ?2, ?3)",
                        rusqlite::params![id.to_string(), aggregate, n],
                    )?;
                }
                anyhow::Ok(())
            })
            .await?;
        if Self::take_failure(&self.fail_after, event.id) {
            anyhow::bail!("{} died before acknowledging", self.name);
        }
        Ok(())
    }
}

fn event(aggregate: &str, n: i64) -> EventEnvelope {
    EventEnvelope::new(
        "order.changed.v1",
        "order",
        "corr",
        &serde_json::json!({"aggregate": aggregate, "n": n}),
    )
    .unwrap()
}

/// One bus with its subscribers running and a relay publishing a real outbox.
struct Harness {
    bus: Arc<dyn EventBus>,
    outbox: TestDb,
    relay: OutboxRelay,
    stop: CancellationToken,
    _nats: Option<Arc<Mutex<NatsServer>>>,
}

impl Harness {
    async fn start(
        kind: Kind,
        nats: Option<Arc<Mutex<NatsServer>>>,
        namespace: &str,
        consumers: &[Arc<Consumer>],
    ) -> Self {
        let bus: Arc<dyn EventBus> = match kind {
            Kind::Memory => Arc::new(InMemoryBus::with_policy(policy())),
            Kind::JetStream => {
                let url = nats.as_ref().unwrap().lock().unwrap().url();
                let config = JetStreamConfig {
                    namespace: namespace.to_owned(),
                    streams: vec!["order".into()],
                    policy: policy(),
                };
                Arc::new(JetStreamBus::connect(&url, config).await.unwrap())
            }
        };
        for c in consumers {
            bus.subscribe(c.clone()).await.unwrap();
        }
        let stop = CancellationToken::new();
        for task in bus.background_tasks() {
            tokio::spawn((task.run)(stop.clone()));
        }
        let outbox = TestDb::new().await;
        let store = Arc::new(outbox::sqlite::Store::new(outbox.pool.clone()));
        let relay = OutboxRelay::new(
            "order",
            store,
            bus.clone(),
            RelayConfig {
                poll_interval: Duration::from_millis(20),
                backoff_base: Duration::from_millis(20),
                backoff_max: Duration::from_millis(100),
                ..RelayConfig::default()
            },
        );
        tokio::spawn(relay.clone().run(stop.clone()));
        Self {
            bus,
            outbox,
            relay,
            stop,
            _nats: nats,
        }
    }

    /// Commit events to the outbox (one transaction) and wake the relay.
    async fn write(&self, events: &[EventEnvelope]) {
        commit(&self.outbox.pool, events).await;
        self.relay.waker().notify_one();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn commit(db: &Sqlite, events: &[EventEnvelope]) {
    let events = events.to_vec();
    db.write(move |tx| outbox::sqlite::enqueue_all(tx, &events))
        .await
        .unwrap();
}

fn nats() -> Option<Arc<Mutex<NatsServer>>> {
    NatsServer::start().map(|s| Arc::new(Mutex::new(s)))
}

/// The harness of `kind`, or `None` when JetStream is wanted but
/// `nats-server` is missing outside CI (skipped with a message).
async fn harness(kind: Kind, consumers: &[Arc<Consumer>]) -> Option<Harness> {
    let nats = match kind {
        Kind::Memory => None,
        Kind::JetStream => Some(nats()?),
    };
    Some(Harness::start(kind, nats, &nats_namespace("contract"), consumers).await)
}

/// One consumer named `name` and its harness of `kind` (see [`harness`]).
async fn harness_of_one(kind: Kind, name: &'static str) -> Option<(Arc<Consumer>, Harness)> {
    let c = Consumer::new(name).await;
    let h = harness(kind, std::slice::from_ref(&c)).await?;
    Some((c, h))
}

async fn every_subscriber_gets_every_event(kind: Kind) {
    let (a, b) = (Consumer::new("alpha").await, Consumer::new("beta").await);
    let Some(h) = harness(kind, &[a.clone(), b.clone()]).await else {
        return;
    };
    let events: Vec<_> = (0..10).map(|n| event("x", n)).collect();
    h.write(&events).await;
    assert_eq!(a.wait_for_effects(10).await.len(), 10, "{kind:?}: alpha");
    assert_eq!(b.wait_for_effects(10).await.len(), 10, "{kind:?}: beta");
}

async fn a_replayed_event_changes_nothing(kind: Kind) {
    let Some((c, h)) = harness_of_one(kind, "replay").await else {
        return;
    };
    let died = event("x", 1);
    c.fail(died.id, 1, true);
    let twice = event("x", 2);
    h.write(std::slice::from_ref(&died)).await;
    c.wait_for_effects(1).await;
    h.write(std::slice::from_ref(&twice)).await;
    let effects = c.wait_for_effects(2).await;
    // The relay crashed after publishing but before marking the row: the
    // same event is published again.
    h.bus.publish(&twice).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        c.deliveries_of(died.id) >= 2,
        "{kind:?}: delivered again after the consumer died before acknowledging"
    );
    assert_eq!(
        c.effects().await,
        effects,
        "{kind:?}: nothing changed afterwards"
    );
    assert_eq!(
        effects,
        vec![("x".to_owned(), 1), ("x".to_owned(), 2)],
        "{kind:?}: each effect happened once"
    );
}

async fn a_failed_delivery_is_delivered_again(kind: Kind) {
    let Some((c, h)) = harness_of_one(kind, "flaky").await else {
        return;
    };
    let e = event("x", 1);
    c.fail(e.id, 2, false);
    h.write(std::slice::from_ref(&e)).await;
    assert_eq!(c.wait_for_effects(1).await.len(), 1, "{kind:?}");
    assert_eq!(
        c.deliveries_of(e.id),
        3,
        "{kind:?}: two failures, then success"
    );
}

async fn events_of_one_aggregate_are_handled_in_the_order_written(kind: Kind) {
    let Some((c, h)) = harness_of_one(kind, "ordered").await else {
        return;
    };
    let mut written = Vec::new();
    for n in 0..15 {
        for aggregate in ["a", "b", "c"] {
            written.push(event(aggregate, n));
        }
    }
    // Some deliveries fail (and are retried) in the middle of the stream.
    for i in [4, 17, 30] {
        c.fail(written[i].id, 1, false);
    }
    for chunk in written.chunks(7) {
        h.write(chunk).await;
    }
    let effects = c.wait_for_effects(written.len()).await;
    assert_eq!(effects.len(), written.len(), "{kind:?}");
    let mut per_aggregate: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (aggregate, n) in effects {
        per_aggregate.entry(aggregate).or_default().push(n);
    }
    for (aggregate, ns) in per_aggregate {
        assert_eq!(
            ns,
            (0..15).collect::<Vec<_>>(),
            "{kind:?}: aggregate {aggregate}"
        );
    }
}

async fn a_poison_event_is_dead_lettered_and_the_rest_flow(kind: Kind) {
    let Some((c, h)) = harness_of_one(kind, "poisoned").await else {
        return;
    };
    let poison = event("x", 1);
    c.fail(poison.id, u32::MAX, false);
    let after = event("x", 2);
    h.write(&[poison.clone(), after]).await;
    let effects = c.wait_for_effects(1).await;
    assert_eq!(effects, vec![("x".to_owned(), 2)], "{kind:?}");
    assert_eq!(
        c.deliveries_of(poison.id),
        policy().max_deliver as usize,
        "{kind:?}: delivered max_deliver times"
    );
    match kind {
        Kind::Memory => {
            let dead: i64 = h
                .outbox
                .pool
                .read(|c| {
                    c.query_row(
                        "SELECT COUNT(*) FROM outbox WHERE dead_at IS NOT NULL AND id = ?1",
                        [poison.id.to_string()],
                        |r| r.get(0),
                    )
                })
                .await
                .unwrap();
            assert_eq!(dead, 1, "the outbox row is marked dead");
        }
        Kind::JetStream => {}
    }
}

async fn namespaces_never_meet(kind: Kind) {
    let (mine, theirs) = (Consumer::new("iso").await, Consumer::new("iso").await);
    let nats = match kind {
        Kind::Memory => None,
        Kind::JetStream => match nats() {
            Some(n) => Some(n),
            None => return,
        },
    };
    let a = Harness::start(
        kind,
        nats.clone(),
        &nats_namespace("one"),
        std::slice::from_ref(&mine),
    )
    .await;
    let _b = Harness::start(
        kind,
        nats,
        &nats_namespace("two"),
        std::slice::from_ref(&theirs),
    )
    .await;
    a.write(&[event("x", 1)]).await;
    assert_eq!(mine.wait_for_effects(1).await.len(), 1, "{kind:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        theirs.effects().await.is_empty(),
        "{kind:?}: the other namespace's consumer of the same name saw nothing"
    );
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Kind::Memory).await;
                }
            )*
        }
        mod jetstream {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Kind::JetStream).await;
                }
            )*
        }
    };
}

contract!(
    every_subscriber_gets_every_event,
    a_replayed_event_changes_nothing,
    a_failed_delivery_is_delivered_again,
    events_of_one_aggregate_are_handled_in_the_order_written,
    a_poison_event_is_dead_lettered_and_the_rest_flow,
    namespaces_never_meet,
);

/// JetStream only: the dead letter is on the dead-letter subject, and the
/// consumer's lag falls back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_parks_a_poison_event_on_the_dead_letter_stream() {
    let Some(server) = nats() else {
        return;
    };
    let url = server.lock().unwrap().url();
    let namespace = nats_namespace("dead");
    let c = Consumer::new("poisoned").await;
    let h = Harness::start(
        Kind::JetStream,
        Some(server),
        &namespace,
        std::slice::from_ref(&c),
    )
    .await;
    let poison = event("x", 1);
    c.fail(poison.id, u32::MAX, false);
    h.write(&[poison, event("x", 2)]).await;
    assert_eq!(c.wait_for_effects(1).await.len(), 1);
    let probe = JetStreamBus::connect(
        &url,
        JetStreamConfig {
            namespace,
            streams: vec!["order".into()],
            policy: policy(),
        },
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while probe.pending("poisoned", "order").await.unwrap() > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(probe.dead_letters().await.unwrap(), 1);
    assert_eq!(probe.pending("poisoned", "order").await.unwrap(), 0);
}

/// JetStream only: events written while the server is down wait in the
/// outbox and arrive once it is back; readiness says so meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_outage_keeps_events_in_the_outbox_until_the_server_returns() {
    let Some(server) = nats() else {
        return;
    };
    let c = Consumer::new("patient").await;
    let h = Harness::start(
        Kind::JetStream,
        Some(server.clone()),
        &nats_namespace("outage"),
        std::slice::from_ref(&c),
    )
    .await;
    h.write(&[event("x", 0)]).await;
    assert_eq!(c.wait_for_effects(1).await.len(), 1);
    let ready = h.bus.ready().await;
    assert!(ready.is_ok(), "{ready:?}");

    server.lock().unwrap().stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.bus.ready().await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness noticed the outage within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let written: Vec<_> = (1..=20).map(|n| event("x", n)).collect();
    h.write(&written).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let store = outbox::sqlite::Store::new(h.outbox.pool.clone());
    use agora_kernel::outbox::OutboxStore as _;
    assert_eq!(store.backlog().await.unwrap(), 20, "the events wait");

    server.lock().unwrap().restart();
    let effects = c.wait_for_effects(21).await;
    assert_eq!(effects.len(), 21);
    assert_eq!(
        effects.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        (0..=20).collect::<Vec<_>>(),
        "in order, each once"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.backlog().await.unwrap() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.backlog().await.unwrap(), 0, "the backlog drained");
    assert!(h.bus.ready().await.is_ok(), "ready again without a restart");
}
