//! What the notification tests share: fresh databases (SQLite file, PostgreSQL
//! database), the module built on them, events as the order and payment
//! modules publish them, a scripted channel, and a real SMTP server (aiosmtpd).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_kernel::db::SqlDatabase;
use agora_kernel::{
    BackgroundTask, CallContext, EventBus, EventEnvelope, InMemoryBus, Module, Principal, Role,
    Wiring,
};
use agora_notification::domain::models::{ListFilter, Notification, Status};
use agora_notification::domain::ports::{
    ChannelSender, DeliveryError, NotificationStore, OutgoingMessage,
};
use agora_notification::{Channels, NotificationModule, Settings};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Which store a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh PostgreSQL database, or `None` (skip, with a message) outside CI
/// (the kernel's).
pub async fn fresh_postgres_database() -> Option<String> {
    agora_kernel::testing::fresh_postgres_url().await
}

/// A database URL for `backend` (kept alive by the returned guard), or `None`
/// when PostgreSQL is unreachable outside CI.
pub async fn database(backend: Backend) -> Option<(String, Option<tempfile::TempDir>)> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/notification.db", dir.path().display());
            Some((url, Some(dir)))
        }
        Backend::Postgres => fresh_postgres_database().await.map(|u| (u, None)),
    }
}

/// A migrated store on a fresh database.
pub struct TestStore {
    pub store: Arc<dyn NotificationStore>,
    pub db: SqlDatabase,
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    pub async fn start(backend: Backend) -> Option<Self> {
        let (url, dir) = database(backend).await?;
        let db = SqlDatabase::connect(&url).await.unwrap();
        agora_notification::testing::migrate(&db).await.unwrap();
        let store = agora_notification::testing::store_for(&db);
        Some(Self {
            store,
            db,
            _dir: dir,
        })
    }
}

/// Every notification, newest first (more than any test makes).
pub fn all() -> ListFilter {
    ListFilter {
        limit: 100,
        ..ListFilter::default()
    }
}

/// Settings that retry fast, for tests.
pub fn fast_settings(url: &str) -> Settings {
    let mut s = Settings::with_url(url);
    s.retry_base_ms = 20;
    s.retry_max_ms = 100;
    s.poll_interval_ms = 20;
    s.max_attempts = 3;
    s
}

/// The module on a fresh database, with its bus.
pub struct TestModule {
    pub module: Arc<NotificationModule>,
    pub bus: Arc<InMemoryBus>,
    worker: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestModule {
    /// Built with `channels` (every channel through one fake) and `settings`.
    pub async fn with_channels(
        backend: Backend,
        channels: Channels,
        tweak: impl FnOnce(&mut Settings),
    ) -> Option<Self> {
        Self::build(backend, Some(channels), tweak).await
    }

    /// On SQLite, every channel through `fake`, with the fast test settings.
    pub async fn with_fake(fake: &Arc<FakeChannel>) -> Self {
        Self::with_channels(Backend::Sqlite, fake.channels(), |_| {})
            .await
            .unwrap()
    }

    /// Built from settings alone, as the host builds it (real SMTP channel).
    pub async fn from_settings(
        backend: Backend,
        tweak: impl FnOnce(&mut Settings),
    ) -> Option<Self> {
        Self::build(backend, None, tweak).await
    }

    /// The module on a fresh `backend` database: with `channels`, or with the
    /// ones its settings name.
    async fn build(
        backend: Backend,
        channels: Option<Channels>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Option<Self> {
        let (url, dir) = database(backend).await?;
        let mut settings = fast_settings(&url);
        tweak(&mut settings);
        let bus = Arc::new(InMemoryBus::new());
        let as_bus = bus.clone() as Arc<dyn EventBus>;
        let module = match channels {
            Some(channels) => {
                NotificationModule::build_with_channels(
                    &settings,
                    Wiring::new(&url, as_bus),
                    channels,
                )
                .await
            }
            None => NotificationModule::build(&settings, Wiring::new(&url, as_bus)).await,
        }
        .unwrap();
        Some(Self {
            module: Arc::new(module),
            bus,
            worker: None,
            _dir: dir,
        })
    }

    pub fn store(&self) -> Arc<dyn NotificationStore> {
        self.module.service().store().clone()
    }

    /// Start the module's delivery worker (its real background task).
    pub fn start_worker(&mut self) {
        let token = CancellationToken::new();
        let task: BackgroundTask = self
            .module
            .background_tasks()
            .into_iter()
            .find(|t| t.name == "notification-delivery")
            .unwrap();
        let handle = tokio::spawn((task.run)(token.clone()));
        self.worker = Some((token, handle));
    }

    pub async fn publish(&self, event: &EventEnvelope) {
        self.bus.publish(event).await.unwrap();
    }

    /// Publish `customer`'s `event_type` event for `order_id`, carrying the
    /// address `{customer}@example.com` as the order module would.
    pub async fn publish_order(&self, event_type: &str, order_id: Uuid, customer: &str) {
        let email = format!("{customer}@example.com");
        self.publish(&order_event_for(
            event_type,
            order_id,
            customer,
            Some(&email),
        ))
        .await;
    }

    /// The newest notification.
    pub async fn newest(&self) -> Notification {
        self.store().list(&all()).await.unwrap().remove(0)
    }

    /// Whether the newest notification reaches `status` within `within`.
    pub async fn newest_reaches(&self, status: Status, within: Duration) -> bool {
        let store = self.store();
        eventually(within, || async {
            store.list(&all()).await.unwrap()[0].status == status
        })
        .await
    }
}

impl Drop for TestModule {
    fn drop(&mut self) {
        if let Some((token, handle)) = self.worker.take() {
            token.cancel();
            handle.abort();
        }
    }
}

/// An `order.*.v1` event as the order module publishes it.
pub fn order_event(event_type: &str, customer: &str, email: Option<&str>) -> EventEnvelope {
    order_event_for(event_type, Uuid::now_v7(), customer, email)
}

pub fn order_event_for(
    event_type: &str,
    order_id: Uuid,
    customer: &str,
    email: Option<&str>,
) -> EventEnvelope {
    EventEnvelope::new(
        event_type,
        "order",
        "req-test",
        &serde_json::json!({
            "order_id": order_id,
            "customer_id": customer,
            "customer_email": email,
            "status": event_type.trim_start_matches("order.").trim_end_matches(".v1"),
            "items": [
                {"sku": "MUG-BLUE", "quantity": 2, "unit_price_minor": 1250, "line_total_minor": 2500},
                {"sku": "TEA-GREEN", "quantity": 1, "unit_price_minor": 499, "line_total_minor": 499}
            ],
            "total_minor": 2999,
            "currency": "EUR",
            "reason": null,
            "version": 3
        }),
    )
    .unwrap()
}

/// A `payment.refunded.v1` event as the payment module publishes it.
pub fn refund_event(customer: &str, order_id: Uuid) -> EventEnvelope {
    EventEnvelope::new(
        "payment.refunded.v1",
        "payment",
        "req-test",
        &serde_json::json!({
            "payment_id": Uuid::now_v7(),
            "order_id": order_id,
            "customer_id": customer,
            "amount_minor": 2999,
            "refunded_minor": 2999,
            "currency": "EUR"
        }),
    )
    .unwrap()
}

pub fn customer(sub: &str) -> CallContext {
    let mut p = Principal::new(sub, [Role::Customer]);
    p.email = Some(format!("{sub}@token.example"));
    CallContext::new(p, "req-test")
}

pub fn staff() -> CallContext {
    CallContext::new(Principal::new("sam-staff", [Role::Staff]), "req-test")
}

/// A channel whose answers the test scripts; it records what it was given.
#[derive(Default)]
pub struct FakeChannel {
    script: Mutex<Vec<Result<(), DeliveryError>>>,
    /// When the script runs out.
    pub otherwise: Mutex<Option<Result<(), DeliveryError>>>,
    pub sent: Mutex<Vec<OutgoingMessage>>,
}

impl FakeChannel {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Answer the next sends with these, in order; then `Ok`.
    pub fn then(self: &Arc<Self>, results: Vec<Result<(), DeliveryError>>) -> Arc<Self> {
        self.script.lock().unwrap().extend(results);
        self.clone()
    }

    pub fn always(self: &Arc<Self>, result: Result<(), DeliveryError>) -> Arc<Self> {
        *self.otherwise.lock().unwrap() = Some(result);
        self.clone()
    }

    pub fn calls(&self) -> Vec<OutgoingMessage> {
        self.sent.lock().unwrap().clone()
    }

    pub fn channels(self: &Arc<Self>) -> Channels {
        Channels::all(self.clone() as Arc<dyn ChannelSender>)
    }
}

#[async_trait]
impl ChannelSender for FakeChannel {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<(), DeliveryError> {
        self.sent.lock().unwrap().push(message.clone());
        let mut script = self.script.lock().unwrap();
        if script.is_empty() {
            self.otherwise.lock().unwrap().clone().unwrap_or(Ok(()))
        } else {
            script.remove(0)
        }
    }
}

/// Poll `check` until it holds or `within` passes; whether it held.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// The real SMTP server.

/// The Python with `aiosmtpd`, or `None` (with a message) outside CI.
pub fn python_with_aiosmtpd() -> Option<PathBuf> {
    let python = std::env::var("AGORA_TEST_PYTHON").map_or_else(
        |_| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../venv/bin/python"
            ))
        },
        PathBuf::from,
    );
    let ok = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    let why = format!(
        "no Python with aiosmtpd at {} (set AGORA_TEST_PYTHON, or: python3 -m venv venv && venv/bin/pip install aiosmtpd)",
        python.display()
    );
    if std::env::var("CI").is_ok() {
        panic!("the SMTP tests need a real SMTP server in CI: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// A running `tests/smtp_server.py`; killed when dropped.
pub struct SmtpServer {
    pub port: u16,
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    /// `mode`: `record`, `flaky` (451 `failures` times, then 250) or `reject` (550).
    pub fn start(mode: &str, failures: u32) -> Option<Self> {
        let python = python_with_aiosmtpd()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("mail.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_server.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--port", &port.to_string(), "--mode", mode])
            .args(["--failures", &failures.to_string()])
            .arg("--out")
            .arg(&out)
            .arg("--watch-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Wait for "READY <port>".
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        assert!(
            line.starts_with("READY"),
            "the SMTP server did not start: {line:?}"
        );
        Some(Self {
            port,
            child,
            out,
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Everything the server wrote: accepted messages and the answers it gave.
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The messages it accepted.
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.records()
            .into_iter()
            .filter(|r| r["event"] == "250")
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Metrics: a process-wide recorder that keeps counters, so tests can read them.

mod counting {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    #[derive(Default)]
    pub struct Counting {
        counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    }

    fn name(key: &Key) -> String {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    impl Recorder for Counting {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let c = self
                .counters
                .lock()
                .unwrap()
                .entry(name(key))
                .or_default()
                .clone();
            Counter::from_arc(c)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    static RECORDER: OnceLock<&'static Counting> = OnceLock::new();

    pub fn recorder() -> &'static Counting {
        RECORDER.get_or_init(|| {
            let r: &'static Counting = Box::leak(Box::default());
            let _ = metrics::set_global_recorder(r);
            r
        })
    }

    impl Counting {
        pub fn get(&self, key: &str) -> u64 {
            self.counters
                .lock()
                .unwrap()
                .get(key)
                .map_or(0, |c| c.load(Ordering::SeqCst))
        }
    }
}

/// The value of a counter such as `agora_notifications_dead_total{channel=email}`
/// (installs the test recorder on first use; counts are process-wide).
pub fn counter(key: &str) -> u64 {
    counting::recorder().get(key)
}
