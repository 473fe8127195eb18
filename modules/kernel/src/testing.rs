//! Test support shared by every module's suite (feature `testing`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::events::{EventEnvelope, EventHandler};

/// Records every event a module's outbox relay publishes: subscribe it to
/// the bus the module is built with (`bus.subscribe(recorder.clone())`).
/// It stands in for a consumer too: [`named`](Self::named) gives it a
/// consumer's name and [`failing_first`](Self::failing_first) makes its first
/// deliveries fail, as a consumer that is down would.
pub struct Recorder {
    name: &'static str,
    sources: [&'static str; 1],
    seen: Mutex<Vec<EventEnvelope>>,
    failures_left: AtomicUsize,
}

impl Recorder {
    /// A recorder of the events `module` publishes.
    pub fn of(module: &'static str) -> Self {
        Self {
            name: "test-recorder",
            sources: [module],
            seen: Mutex::new(Vec::new()),
            failures_left: AtomicUsize::new(0),
        }
    }

    /// The same recorder, subscribed as the consumer `name`.
    pub fn named(self, name: &'static str) -> Self {
        Self { name, ..self }
    }

    /// The same recorder, failing its first `times` deliveries (each is
    /// still recorded).
    pub fn failing_first(self, times: usize) -> Self {
        Self {
            failures_left: AtomicUsize::new(times),
            ..self
        }
    }

    /// Every event so far, in the order they were published.
    pub fn events(&self) -> Vec<EventEnvelope> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The ids of every event so far, in the order they were published.
    pub fn ids(&self) -> Vec<Uuid> {
        self.events().iter().map(|e| e.id).collect()
    }

    /// The events of one type so far.
    pub fn of_type(&self, event_type: &str) -> Vec<EventEnvelope> {
        self.events()
            .into_iter()
            .filter(|e| e.event_type == event_type)
            .collect()
    }
}

#[async_trait]
impl EventHandler for Recorder {
    fn name(&self) -> &str {
        self.name
    }
    fn sources(&self) -> &[&str] {
        &self.sources
    }
    /// Every event of its module (`<module>.<name>.v<n>`), as a broker
    /// subscribed to that module delivers them (the in-process bus offers
    /// each subscriber every event and lets it choose).
    fn handles(&self, event_type: &str) -> bool {
        event_type.split('.').next() == Some(self.sources[0])
    }
    async fn handle(&self, event: &EventEnvelope) -> anyhow::Result<()> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event.clone());
        let down = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if down {
            anyhow::bail!("{} is down", self.name);
        }
        Ok(())
    }
}

/// A fresh PostgreSQL database on the test server (`AGORA_TEST_POSTGRES_URL`,
/// default `postgres://postgres@127.0.0.1:5432/postgres`). Outside CI a missing
/// server skips the test with a message (`None`); in CI (`CI` set) it fails.
pub async fn fresh_postgres_url() -> Option<String> {
    let admin_url = std::env::var("AGORA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let conn =
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgPool::connect(&admin_url)).await;
    let pool = match conn {
        Ok(Ok(pool)) => pool,
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            assert!(
                std::env::var("CI").is_err(),
                "PostgreSQL is required in CI but unreachable at {admin_url}: {why}"
            );
            eprintln!(
                "SKIPPED: PostgreSQL unreachable at {admin_url} ({why}); set AGORA_TEST_POSTGRES_URL"
            );
            return None;
        }
    };
    let name = format!("agora_test_{}", uuid::Uuid::new_v4().simple());
    if let Err(e) = sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
    {
        panic!("failed to create a test database: {e}");
    }
    pool.close().await;
    let base = admin_url.rsplit_once('/').map(|(b, _)| b.to_owned())?;
    Some(format!("{base}/{name}"))
}

/// A `nats-server` with JetStream of a test's own, on a free port with its
/// store in a temporary directory, so the test can stop and restart it
/// (`nats-server -a 127.0.0.1 -p P -js -sd DIR`). Killed when dropped.
pub struct NatsServer {
    child: ChildProcess,
    pub port: u16,
    /// The monitoring endpoint (`/jsz`, `/varz`).
    pub monitor_port: u16,
    store: tempfile::TempDir,
    binary: String,
}

/// A process a test started: killed (SIGKILL: nothing flushed) and reaped
/// when replaced or dropped, so a failing test leaves no server behind.
#[derive(Default)]
pub struct ChildProcess(Option<std::process::Child>);

impl ChildProcess {
    /// Kill it, if it runs, and wait for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Own `child` from now on, killing the process owned before.
    pub fn replace(&mut self, child: std::process::Child) {
        self.kill();
        self.0 = Some(child);
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl NatsServer {
    /// Start one. Outside CI a missing `nats-server` skips the test with a
    /// message (`None`); in CI (`CI` set) it fails.
    pub fn start() -> Option<Self> {
        let binary = std::env::var("AGORA_TEST_NATS_SERVER").unwrap_or_else(|_| {
            if std::path::Path::new("/usr/sbin/nats-server").exists() {
                "/usr/sbin/nats-server".into()
            } else {
                "nats-server".into()
            }
        });
        let found = std::process::Command::new(&binary)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var("CI").is_err(),
                "nats-server is required in CI but `{binary}` does not run"
            );
            eprintln!("SKIPPED: nats-server not found (set AGORA_TEST_NATS_SERVER)");
            return None;
        }
        let store = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let mut server = Self {
            child: ChildProcess::default(),
            port: free_port(),
            monitor_port: free_port(),
            store,
            binary,
        };
        server.restart();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kill the server (SIGKILL: nothing flushed beyond what JetStream synced).
    pub fn stop(&mut self) {
        self.child.kill();
    }

    /// Start it again on the same port and store directory; returns once it
    /// accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let child = std::process::Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {}: {e}", self.binary));
        self.child.replace(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen on {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A namespace of a test's own, so runs on one server never meet.
pub fn nats_namespace(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// `AGORA_TEST_MONGODB_URL` with a fresh database name (`<prefix>_<uuid>`).
/// Outside CI an unset variable skips the test with a message (`None`); in
/// CI it fails.
pub fn fresh_mongodb_url(prefix: &str) -> Option<String> {
    match std::env::var("AGORA_TEST_MONGODB_URL") {
        Ok(base) if !base.is_empty() => Some(with_database(
            &base,
            &format!("{prefix}_{}", uuid::Uuid::now_v7().simple()),
        )),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "AGORA_TEST_MONGODB_URL is required in CI: a MongoDB-wire server for the MongoDB tests"
            );
            eprintln!("SKIPPED: AGORA_TEST_MONGODB_URL is not set");
            None
        }
    }
}

/// Replace (or add) the database path of a `mongodb://host[:port][/db][?opts]` URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Stands in for the gateway in a module's HTTP suite (`App::wrap(from_fn(…))`):
/// a request with `x-test-sub` or `x-test-roles` is authenticated as that
/// subject (default `tester`) with those comma-separated roles (default
/// `customer`), and the e-mail claim `<sub>@token.example`; one with neither
/// stays anonymous.
///
/// # Errors
/// Those of the wrapped service.
pub async fn principal_from_test_headers(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use actix_web::HttpMessage as _;
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (sub, roles) = (header("x-test-sub"), header("x-test-roles"));
    if sub.is_some() || roles.is_some() {
        let sub = sub.unwrap_or_else(|| "tester".to_owned());
        let roles: Vec<crate::Role> = roles
            .unwrap_or_else(|| "customer".to_owned())
            .split(',')
            .filter_map(|r| r.trim().parse().ok())
            .collect();
        let mut p = crate::Principal::new(sub.clone(), roles);
        p.email = Some(format!("{sub}@token.example"));
        req.extensions_mut().insert(p);
    }
    next.call(req).await
}

/// The `[section]` of `config/default.toml` with `env` (`AGORA__…`
/// variables) layered over it, the way the host loads its settings: what a
/// module's settings suite reads its `Settings` from.
#[cfg(feature = "testing")]
pub fn default_settings<T: serde::de::DeserializeOwned>(section: &str, env: &[(&str, &str)]) -> T {
    let env: std::collections::HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    config::Config::builder()
        .add_source(config::File::from_str(
            include_str!("../../../config/default.toml"),
            config::FileFormat::Toml,
        ))
        .add_source(
            config::Environment::with_prefix("AGORA")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        )
        .build()
        .and_then(|raw| raw.get::<T>(section))
        .unwrap_or_else(|e| panic!("the [{section}] settings do not load: {e}"))
}

/// A service under test, as `actix_web::test::init_service` builds it: a
/// suite's `app()` returns `impl TestApp<Body = impl MessageBody>` instead of
/// spelling out the `Service` bounds.
pub trait TestApp:
    actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<<Self as TestApp>::Body>,
        Error = actix_web::Error,
    >
{
    type Body: actix_web::body::MessageBody;
}

impl<S, B> TestApp for S
where
    S: actix_web::dev::Service<
            actix_http::Request,
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    B: actix_web::body::MessageBody,
{
    type Body = B;
}

/// Status, headers and body of an answer, read in full.
pub struct Answer {
    pub status: actix_web::http::StatusCode,
    pub headers: actix_web::http::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    /// A header's value, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON; panics when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("the body is not JSON: {e}"))
    }
}

/// Send `req` to `app` and read the whole answer.
pub async fn call(app: &impl TestApp, req: actix_http::Request) -> Answer {
    let res = actix_web::test::call_service(app, req).await;
    let status = res.status();
    let headers = res.headers().clone();
    let body = actix_web::test::read_body(res).await;
    Answer {
        status,
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn a_database_name_replaces_the_one_in_the_url() {
        assert_eq!(
            with_database("mongodb://h:1/x?directConnection=true", "y"),
            "mongodb://h:1/y?directConnection=true"
        );
        assert_eq!(with_database("mongodb://h:1", "y"), "mongodb://h:1/y");
        assert_eq!(
            with_database("mongodb://h:1/?a=b", "y"),
            "mongodb://h:1/y?a=b"
        );
    }
}
