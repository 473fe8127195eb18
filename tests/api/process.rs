//! Real `agora` processes for tests that kill, restart or split them: the
//! built binary started with a clean `AGORA__*` environment, its own ports
//! (fixed at first start, so a restart keeps its address) and data directory,
//! its output appended to `<dir>/<name>.log`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use agora_kernel::Role;
use agora_kernel::testing::ChildProcess;
use serde_json::{Value, json};

/// A port that is free now, below Linux's ephemeral range (32768–60999 by
/// default): a port the kernel handed out (`bind` to port 0) may meanwhile
/// be taken as the local end of some outgoing connection (a PostgreSQL or
/// NATS client of another test) before the process meant to listen on it
/// starts. Each call in this test process takes the next port of its own.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = (std::process::id() * 7919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + (offset + n) % SPAN).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct Agora {
    pub name: String,
    pub base: String,
    pub admin: String,
    child: ChildProcess,
    env: Vec<(String, String)>,
    dir: PathBuf,
}

impl Agora {
    /// Start `agora serve` with test defaults (generous rate limits, quick
    /// saga retries) overridden by `env`; returns once it listens.
    pub fn start(name: &str, dir: &Path, env: &[(&str, String)]) -> Self {
        let mut agora = Self::prepare(name, dir);
        for (k, v) in env {
            agora.set(k, v);
        }
        agora.restart();
        agora
    }

    /// Override a setting (takes effect at the next start).
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Its ports and defaults, not started yet (so others can be told its URL).
    pub fn prepare(name: &str, dir: &Path) -> Self {
        let (port, admin) = (free_port(), free_port());
        let all: Vec<(String, String)> = vec![
            ("AGORA__HTTP__ADDR".into(), format!("127.0.0.1:{port}")),
            ("AGORA__ADMIN__ADDR".into(), format!("127.0.0.1:{admin}")),
            (
                "AGORA__DATA_DIR".into(),
                dir.join(name).join("data").display().to_string(),
            ),
            ("AGORA__HTTP__WORKERS".into(), "2".into()),
            ("AGORA__RATE_LIMIT__PER_SECOND".into(), "100000".into()),
            ("AGORA__RATE_LIMIT__BURST".into(), "100000".into()),
            ("AGORA__ORDER__RECOVERY_EVERY_MS".into(), "100".into()),
            ("AGORA__ORDER__RETRY_BASE_MS".into(), "100".into()),
            ("AGORA__ORDER__RETRY_MAX_SECS".into(), "1".into()),
            ("AGORA__NOTIFICATION__POLL_INTERVAL_MS".into(), "50".into()),
            ("RUST_LOG".into(), "info,sqlx=warn".into()),
        ];
        Self {
            name: name.to_owned(),
            base: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin}"),
            child: ChildProcess::default(),
            env: all,
            dir: dir.to_path_buf(),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    /// The process's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, nothing flushed.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Start it (again) on the same ports, data and settings.
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = crate::helpers::agora_command(&self.dir);
        cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let (tx, rx) = mpsc::channel();
        for (stream, tx) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                None,
            ),
            (Box::new(child.stderr.take().unwrap()), Some(tx)),
        ] {
            let mut log = log.try_clone().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = writeln!(log, "{line}");
                    if let Some(tx) = &tx
                        && line.contains("agora listening on")
                    {
                        let _ = tx.send(());
                    }
                }
            });
        }
        self.child.replace(child);
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let tail: String = self
                .log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "{} did not start listening; last lines (newest first):\n{tail}",
                self.name
            );
        }
    }

    /// Its Prometheus text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The sum of a metric's samples whose labels contain every `labels` pair
/// (`key="value"`), from Prometheus text.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|p| l.contains(p))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A client of one agora (any process that answers the whole `/api/v1`).
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub staff: String,
}

pub fn token(sub: &str, roles: &[Role]) -> String {
    let dir = std::env::temp_dir();
    let settings = crate::helpers::test_settings(&dir);
    agora::gateway::auth::mint(
        &settings.auth,
        sub,
        roles,
        Some(&format!("{sub}@example.com")),
        Duration::from_secs(3600),
    )
    .unwrap()
}

pub fn address() -> Value {
    json!({"name": "C", "line1": "1 St", "city": "Berlin", "postal_code": "10115", "country": "DE"})
}

impl Api {
    pub fn new(base: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                // Below actix's 5 s keep-alive: a connection the server is
                // closing is never picked for a request (`IncompleteMessage`).
                .pool_idle_timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
            base: base.to_owned(),
            staff: token("sam", &[Role::Staff]),
        }
    }

    /// Send `req` as `token`; the status and the JSON body (`Null` if none).
    async fn call(&self, req: reqwest::RequestBuilder, token: &str) -> (u16, Value) {
        let res = req.bearer_auth(token).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let req = self.client.post(format!("{}{path}", self.base)).json(&body);
        self.call(req, token).await
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        self.call(self.client.get(format!("{}{path}", self.base)), token)
            .await
    }

    /// Receive `units` of `sku` into the BER warehouse.
    pub async fn receive(&self, sku: &str, units: i64) {
        let receipt = json!({"sku": sku, "warehouse": "BER", "quantity": units});
        let (s, body) = self
            .post(&self.staff, "/api/v1/stock/receipts", receipt)
            .await;
        assert_eq!(s, 201, "{body}");
    }

    /// A warehouse, and each sku at 850 EUR with `units` in stock (if any).
    pub async fn seed(&self, skus: &[&str], units: i64) {
        let (s, body) = self
            .post(
                &self.staff,
                "/api/v1/warehouses",
                json!({"code": "BER", "name": "Berlin"}),
            )
            .await;
        assert!(s == 201 || s == 409, "{s} {body}");
        for sku in skus {
            let (s, body) = self
                .post(
                    &self.staff,
                    "/api/v1/products",
                    json!({"sku": sku, "name": sku, "price_minor": 850, "currency": "EUR"}),
                )
                .await;
            assert!(s == 201 || s == 409, "{s} {body}");
            if units > 0 {
                self.receive(sku, units).await;
            }
        }
    }

    /// Place an order of one line as `customer`; the status and the body.
    pub async fn order(
        &self,
        customer: &str,
        sku: &str,
        quantity: u32,
        payment_method: &str,
        key: &str,
    ) -> (u16, Value) {
        let req = self
            .client
            .post(format!("{}/api/v1/orders", self.base))
            .header("idempotency-key", key)
            .json(&json!({
                "items": [{"sku": sku, "quantity": quantity}],
                "shipping_address": address(),
                "payment_method": payment_method,
            }));
        self.call(req, customer).await
    }

    /// A new customer `name` orders one MUG by card, keyed by the name.
    pub async fn one_mug_for(&self, name: &str) -> (u16, Value) {
        let customer = token(name, &[Role::Customer]);
        self.order(&customer, "MUG", 1, "tok_visa", name).await
    }

    /// Every item of a collection, following cursors (as staff).
    pub async fn all(&self, path: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let page_path = match &cursor {
                Some(c) => format!("{path}{sep}limit=100&cursor={c}"),
                None => format!("{path}{sep}limit=100"),
            };
            let (s, page) = self.get(&self.staff, &page_path).await;
            assert_eq!(s, 200, "{page_path}: {page}");
            out.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }

    /// Poll every 100 ms until `done` holds for the orders, or `within` passed.
    pub async fn orders_until(
        &self,
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let orders = self.all("/api/v1/orders").await;
            if done(&orders) || tokio::time::Instant::now() > deadline {
                return orders;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Poll `f` every 100 ms until it returns `Some`, or panic after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn in_flight(order: &Value) -> bool {
    matches!(
        order["status"].as_str(),
        Some("pending" | "awaiting_payment")
    )
}

/// The notification template an order in this status causes, if any.
pub fn template_of(status: &str) -> Option<&'static str> {
    match status {
        "confirmed" => Some("order_confirmed"),
        "payment_failed" => Some("order_payment_failed"),
        "rejected" => Some("order_rejected"),
        "cancelled" => Some("order_cancelled"),
        _ => None,
    }
}
