//! Calls to modules hosted by other processes. Each module has a
//! [`rollout::Route`]: its stable target (a health-checked [`pool::Pool`] of
//! remote instances, or this process when it hosts the module) and, during a
//! canary or blue-green rollout, a second pool with a weight. The route carries
//! every call this process makes to the module: module-to-module calls through
//! [`ModuleTransport`] (the kernel's [`Transport`] port that the modules' HTTP
//! clients speak) and forwarded `/api/v1` requests ([`Upstreams::forward`]).
//!
//! Every call carries this process's `service` token, the correlation id, and
//! a time-out; a connection failure of an idempotent call (a GET, or one with
//! an `Idempotency-Key`) is retried once on another instance; module-to-module
//! calls go through one circuit breaker per remote module
//! (`agora_circuit_breaker_state{breaker="<module>_service"}`), which sees the
//! final outcome, while the rollout analysis sees each side's calls.

pub mod admin;
pub mod pool;
pub mod progressive;
pub mod rollout;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use agora_kernel::breaker::{BreakerConfig, CircuitBreaker, SystemClock};
use agora_kernel::remote::{RemoteError, RemoteRequest, RemoteResponse, Transport};
use agora_kernel::{CallContext, Problem, RequestId, Role};
use anyhow::Context;
use async_trait::async_trait;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::ExposeSecret;

use crate::gateway::auth::Claims;
use crate::settings::{AuthSettings, Settings};
use pool::{Instance, Outcome, Pool};
use rollout::{Route, Side, Target};

/// The header a forwarding process authenticates itself with.
pub const FORWARDED_BY: &str = "x-agora-forwarded-by";
/// The `kid` of service tokens signed with the service key pair.
pub const SERVICE_KID: &str = "agora-service";
/// How long a minted service token lives; it is re-minted a minute early.
const TOKEN_TTL: Duration = Duration::from_secs(300);

/// Mints (and caches) this process's `service` tokens: HS256 with the shared
/// secret, or, when user tokens are RS256/ES256/EdDSA, signed with
/// `AGORA__AUTH__SERVICE_PRIVATE_KEY_PEM` (verified by the others with
/// `AGORA__AUTH__SERVICE_PUBLIC_KEY_PEM`).
pub struct ServiceTokens {
    key: EncodingKey,
    header: Header,
    issuer: String,
    audience: String,
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

impl ServiceTokens {
    /// # Errors
    /// A service private key that does not parse, or none with an asymmetric algorithm.
    pub fn from_settings(s: &AuthSettings) -> anyhow::Result<Self> {
        let (key, header) = if s.algorithm == "HS256" {
            (
                EncodingKey::from_secret(s.hs256_secret.expose_secret().as_bytes()),
                Header::new(Algorithm::HS256),
            )
        } else {
            let pem = s
                .service_private_key_pem
                .expose_secret()
                .replace("\\n", "\n");
            anyhow::ensure!(
                !pem.trim().is_empty(),
                "invalid setting AGORA__AUTH__SERVICE_PRIVATE_KEY_PEM (auth.service_private_key_pem): with {} user tokens, calls to other processes are signed with this key",
                s.algorithm
            );
            let (key, alg) = match s.algorithm.as_str() {
                "RS256" => (EncodingKey::from_rsa_pem(pem.as_bytes()), Algorithm::RS256),
                "ES256" => (EncodingKey::from_ec_pem(pem.as_bytes()), Algorithm::ES256),
                _ => (EncodingKey::from_ed_pem(pem.as_bytes()), Algorithm::EdDSA),
            };
            let key = key.map_err(|e| {
                anyhow::anyhow!(
                    "invalid setting AGORA__AUTH__SERVICE_PRIVATE_KEY_PEM (auth.service_private_key_pem): not a {} private key in PEM form ({e})",
                    s.algorithm
                )
            })?;
            let mut header = Header::new(alg);
            header.kid = Some(SERVICE_KID.to_owned());
            (key, header)
        };
        Ok(Self {
            key,
            header,
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// A `service` token for `subject` (cached while it has a minute left).
    ///
    /// # Errors
    /// Signing failed.
    pub fn token(&self, subject: &str) -> anyhow::Result<String> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, fresh_until)) = cache.get(subject)
            && Instant::now() < *fresh_until
        {
            return Ok(token.clone());
        }
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            sub: subject.to_owned(),
            roles: vec![Role::Service.as_str().to_owned()],
            email: None,
            iss: self.issuer.clone(),
            aud: serde_json::Value::String(self.audience.clone()),
            exp: now + TOKEN_TTL.as_secs(),
            nbf: Some(now),
            iat: Some(now),
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.key)
            .context("failed to sign a service token")?;
        cache.insert(
            subject.to_owned(),
            (
                token.clone(),
                Instant::now() + TOKEN_TTL - Duration::from_secs(60),
            ),
        );
        Ok(token)
    }
}

/// The name of a remote module's circuit breaker (the gauge's `breaker` label).
pub fn breaker_name(module: &str) -> &'static str {
    match module {
        "order" => "order_service",
        "inventory" => "inventory_service",
        "payment" => "payment_service",
        _ => "notification_service",
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the forwarding process sets
/// itself: never passed on.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | FORWARDED_BY
    )
}

fn transport_reason(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {} ms", timeout.as_millis())
    } else if e.is_connect() {
        "connection refused or unreachable".to_owned()
    } else {
        format!("the call failed: {e}")
    }
}

/// HTTP clients, one per thread: a pooled connection's task runs on the
/// runtime that opened it, so a client shared by the actix workers (each a
/// runtime of its own) would pass most calls to another thread and back. Per
/// thread, a call and its connection stay on one thread.
struct Clients {
    connect_timeout: Duration,
}

impl Clients {
    fn get(&self) -> reqwest::Client {
        thread_local! {
            static CLIENT: std::cell::RefCell<Option<(Duration, reqwest::Client)>> =
                const { std::cell::RefCell::new(None) };
        }
        CLIENT.with(|c| {
            let mut c = c.borrow_mut();
            match c.as_ref() {
                Some((t, client)) if *t == self.connect_timeout => client.clone(),
                _ => {
                    // Building only fails as it would have at start-up, where it
                    // was checked; a default client then beats failing the call.
                    let client = build_client(self.connect_timeout).unwrap_or_default();
                    *c = Some((self.connect_timeout, client.clone()));
                    client
                }
            }
        })
    }
}

fn build_client(connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        // Below the 5 s an agora process keeps an idle connection open
        // (actix's keep-alive): a connection the other side is closing is
        // never picked for a call, which would fail it after it was sent.
        .pool_idle_timeout(Duration::from_secs(4))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// Every module's route and breaker, the HTTP clients, the service tokens.
pub struct Upstreams {
    clients: Clients,
    /// Service tokens; an error (a missing key pair) surfaces when this
    /// process first calls another one.
    tokens: Result<ServiceTokens, String>,
    timeout: Duration,
    body_limit: usize,
    health_interval: Duration,
    routes: BTreeMap<&'static str, Arc<Route>>,
    breakers: BTreeMap<&'static str, Arc<CircuitBreaker>>,
}

/// How a call's attempts ended, for retries.
enum Attempt<T> {
    Answer(T),
    /// No answer head came back (refused, or the connection broke while the
    /// request was sent): an idempotent call may try another instance.
    Unreached(String),
    Failed(String),
}

/// Whether an idempotent call that failed this way may go to another
/// instance: the connection failed or broke before any answer. A time-out is
/// not retried (the first instance may still be working on it).
fn retryable<T>(e: &reqwest::Error, why: String) -> Attempt<T> {
    if (e.is_connect() || e.is_request()) && !e.is_timeout() {
        Attempt::Unreached(why)
    } else {
        Attempt::Failed(why)
    }
}

impl Upstreams {
    /// A route per module: the remote pool for the modules this process does
    /// not host, this process for the ones it does.
    ///
    /// # Errors
    /// An HTTP client that cannot be built; service-token keys that do not
    /// parse when this process calls others.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Arc<Self>> {
        let timeout = Duration::from_millis(settings.upstream.timeout_ms);
        let connect_timeout = timeout.min(Duration::from_secs(2));
        build_client(connect_timeout).context("failed to build the upstream HTTP client")?;
        let clients = Clients { connect_timeout };
        let mut routes = BTreeMap::new();
        let mut breakers = BTreeMap::new();
        let mut calls_others = false;
        for module in crate::settings::MODULES {
            let urls = settings.remote_urls(module);
            let target = if settings.hosts(module) || urls.is_empty() {
                Target::Local
            } else {
                calls_others = true;
                Target::Remote(Arc::new(Pool::new(module, &urls)))
            };
            routes.insert(module, Arc::new(Route::new(module, target)));
            breakers.insert(
                module,
                Arc::new(CircuitBreaker::new(
                    breaker_name(module),
                    BreakerConfig {
                        failure_threshold: settings.upstream.breaker_failures,
                        recovery_timeout: Duration::from_secs(settings.upstream.breaker_open_secs),
                    },
                    Arc::new(SystemClock),
                )),
            );
        }
        let tokens = ServiceTokens::from_settings(&settings.auth).map_err(|e| format!("{e:#}"));
        if calls_others && let Err(e) = &tokens {
            anyhow::bail!("{e}");
        }
        Ok(Arc::new(Self {
            clients,
            tokens,
            timeout,
            body_limit: settings.http.body_limit_bytes,
            health_interval: Duration::from_millis(settings.upstream.health_interval_ms),
            routes,
            breakers,
        }))
    }

    /// Every module's route.
    pub fn routes(&self) -> &BTreeMap<&'static str, Arc<Route>> {
        &self.routes
    }

    pub fn route(&self, module: &str) -> Option<&Arc<Route>> {
        self.routes.get(module)
    }

    /// The modules served by other processes at start-up, with their pools.
    pub fn pools(&self) -> impl Iterator<Item = Arc<Pool>> + '_ {
        self.routes
            .values()
            .filter_map(|r| r.stable().pool().cloned())
    }

    /// The transport the module's HTTP client sends through.
    pub fn transport(self: &Arc<Self>, module: &'static str) -> Option<Arc<dyn Transport>> {
        let breaker = self.breakers.get(module)?.clone();
        Some(Arc::new(ModuleTransport {
            module,
            upstreams: self.clone(),
            breaker,
        }))
    }

    fn token(&self, subject: &str) -> anyhow::Result<String> {
        match &self.tokens {
            Ok(t) => t.token(subject),
            Err(e) => anyhow::bail!("{e}"),
        }
    }

    /// Check every instance's `/health/ready` every `health_interval` until
    /// cancelled (stable, canary and green pools alike).
    pub async fn check_health(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let timeout = self.health_interval.min(Duration::from_secs(2));
        loop {
            let instances: Vec<Arc<Instance>> = self
                .routes
                .values()
                .flat_map(|r| r.pools())
                .flat_map(|p| p.instances().to_vec())
                .collect();
            let checks = instances.iter().map(|i| {
                let request = self
                    .clients
                    .get()
                    .get(format!("{}/health/ready", i.base()))
                    .timeout(timeout)
                    .send();
                async move {
                    let passed = matches!(request.await, Ok(r) if r.status().is_success());
                    i.record_check(passed);
                }
            });
            futures_util::future::join_all(checks).await;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.health_interval) => {}
            }
        }
    }

    /// Try instances of the side a key falls on: the chosen one, and on a
    /// connection failure of an idempotent call one more (in the same pool,
    /// else in the stable pool). Each attempt is recorded on its instance and
    /// on the route's analysis.
    async fn attempt<T, F, Fut>(
        &self,
        module: &'static str,
        key: Option<&str>,
        idempotent: bool,
        mut send: F,
    ) -> Result<T, String>
    where
        F: FnMut(Arc<Instance>, bool) -> Fut,
        Fut: std::future::Future<Output = (Attempt<T>, Outcome)>,
    {
        let route = self
            .routes
            .get(module)
            .ok_or_else(|| format!("no route to the {module} module"))?;
        let (mut side, target) = route.pick(key);
        let mut pool = match target {
            Target::Remote(p) => p,
            // A module hosted here is only called remotely during a canary
            // to remote instances: that pool.
            Target::Local => match route.pools().into_iter().next() {
                Some(p) => {
                    side = Side::Canary;
                    p
                }
                None => return Err(format!("the {module} module is not remote")),
            },
        };
        let mut tried: Vec<Arc<Instance>> = Vec::new();
        let mut last = String::new();
        for retry in [false, true] {
            let instance = match pool.choose(&tried) {
                Some(i) => i,
                None => match (side, route.stable()) {
                    (Side::Canary, Target::Remote(stable)) => {
                        side = Side::Stable;
                        pool = stable;
                        tried.clear();
                        match pool.choose(&tried) {
                            Some(i) => i,
                            None => break,
                        }
                    }
                    _ => break,
                },
            };
            tried.push(instance.clone());
            let call = instance.begin();
            let (result, outcome) = send(instance.clone(), retry).await;
            route.record(side, outcome, call.elapsed());
            pool.record(call, outcome);
            match result {
                Attempt::Answer(t) => return Ok(t),
                Attempt::Unreached(why) if idempotent && !retry => last = why,
                Attempt::Unreached(why) | Attempt::Failed(why) => return Err(why),
            }
        }
        Err(if last.is_empty() {
            format!("the {module} module has no instance to call")
        } else {
            last
        })
    }

    /// One module-to-module call.
    async fn call(
        &self,
        module: &'static str,
        ctx: &CallContext,
        request: &RemoteRequest,
    ) -> Result<RemoteResponse, RemoteError> {
        let unavailable = |reason: String| RemoteError {
            module: module.to_owned(),
            reason,
            retry_after: None,
        };
        // The caller acts as a service (the saga's `service:order`); anything
        // else is still authenticated as this process, never as the customer.
        let subject = if ctx.principal.roles.contains(&Role::Service) {
            ctx.principal.subject.clone()
        } else {
            "service:agora".to_owned()
        };
        let token = self
            .token(&subject)
            .map_err(|e| unavailable(format!("{e:#}")))?;
        let body = match &request.body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| unavailable(e.to_string()))?),
            None => None,
        };
        let method = reqwest::Method::from_bytes(request.method.as_str().as_bytes())
            .unwrap_or(reqwest::Method::GET);
        let send = |instance: Arc<Instance>, _retry: bool| {
            let mut rb = self
                .clients
                .get()
                .request(
                    method.clone(),
                    format!("{}/api/v1{}", instance.base(), request.path),
                )
                .bearer_auth(&token)
                .header("x-request-id", &ctx.correlation_id)
                .timeout(self.timeout);
            if let Some(key) = &request.idempotency_key {
                rb = rb.header("idempotency-key", key);
            }
            if let Some(body) = &body {
                rb = rb
                    .header("content-type", "application/json")
                    .body(body.clone());
            }
            async move {
                match rb.send().await {
                    Ok(res) => {
                        let status = res.status().as_u16();
                        let retry_after = res
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(Duration::from_secs);
                        match res.bytes().await {
                            Ok(body) => (
                                Attempt::Answer(RemoteResponse {
                                    status,
                                    body,
                                    retry_after,
                                }),
                                Outcome::of_status(status),
                            ),
                            Err(e) => (
                                Attempt::Failed(format!(
                                    "{} broke off its answer: {}",
                                    instance.url,
                                    transport_reason(&e, self.timeout)
                                )),
                                Outcome::Transport,
                            ),
                        }
                    }
                    Err(e) => {
                        let why =
                            format!("{}: {}", instance.url, transport_reason(&e, self.timeout));
                        tracing::warn!(module, error = %why, "call to a remote module failed");
                        (retryable(&e, why), Outcome::Transport)
                    }
                }
            }
        };
        self.attempt(
            module,
            request.affinity.as_deref(),
            request.is_idempotent(),
            send,
        )
        .await
        .map_err(unavailable)
    }

    /// Forward a `/api/v1` request to an instance of `module` (the side the
    /// caller's `sub`, or address, falls on), streaming the body both ways;
    /// the caller's `Authorization`, `X-Request-Id`, `traceparent`,
    /// `Idempotency-Key` and other end-to-end headers pass on, hop-by-hop ones
    /// do not, and this process's service token goes in `X-Agora-Forwarded-By`.
    /// No answer within the time-out: 503.
    pub async fn forward(
        &self,
        module: &'static str,
        req: HttpRequest,
        mut payload: actix_web::dev::Payload,
    ) -> HttpResponse {
        let unavailable = |detail: String| {
            tracing::warn!(module, error = %detail, "forwarding failed");
            Problem::unavailable(detail, 1).to_response()
        };
        let token = match self.token("service:gateway") {
            Ok(t) => t,
            Err(e) => return unavailable(format!("{e:#}")),
        };
        let key = sticky_key(&req);
        let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in req.headers() {
            if hop_by_hop(name.as_str()) || name.as_str() == "x-request-id" {
                continue;
            }
            if let (Ok(n), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()),
                reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
            ) {
                headers.append(n, v);
            }
        }
        if let Some(id) = request_id
            .as_deref()
            .and_then(|id| reqwest::header::HeaderValue::from_str(id).ok())
        {
            headers.insert("x-request-id", id);
        }
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
            headers.insert(FORWARDED_BY, v);
        }
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
            .unwrap_or(reqwest::Method::GET);
        let idempotent = matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS")
            || req.headers().contains_key("idempotency-key");
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.path().to_owned(), |pq| pq.as_str().to_owned());

        // A request without a body (most GETs) goes on without one: no pump
        // task, and no chunked body the client never sent.
        let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0);
        // Otherwise pump the body into the first attempt as it arrives, keeping
        // a copy (up to the body limit) in case an idempotent request must be
        // sent again to another instance.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<web::Bytes, std::io::Error>>(16);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Option<Vec<web::Bytes>>>();
        let limit = self.body_limit;
        let pump = async move {
            let mut copy = Some(Vec::new());
            let mut kept = 0usize;
            while let Some(chunk) = payload.next().await {
                match chunk {
                    Ok(bytes) => {
                        kept += bytes.len();
                        match copy.as_mut() {
                            Some(c) if kept <= limit => c.push(bytes.clone()),
                            _ => copy = None,
                        }
                        let _ = tx.send(Ok(bytes)).await;
                    }
                    Err(e) => {
                        copy = None;
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        break;
                    }
                }
            }
            let _ = done_tx.send(copy);
        };
        if has_body {
            actix_web::rt::spawn(pump);
        } else {
            drop(pump);
        }
        let first =
            reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }));
        let first = std::cell::RefCell::new(Some(first));
        let done_rx = std::cell::RefCell::new(Some(done_rx));
        let send = |instance: Arc<Instance>, retry: bool| {
            let body = if retry {
                None
            } else {
                first.borrow_mut().take()
            };
            let copy = if retry {
                done_rx.borrow_mut().take()
            } else {
                None
            };
            let rb = self
                .clients
                .get()
                .request(method.clone(), format!("{}{target}", instance.base()))
                .headers(headers.clone());
            async move {
                let body = match (body, copy) {
                    _ if !has_body => reqwest::Body::from(Vec::new()),
                    (Some(b), _) => b,
                    // A retry: the copy, once the whole body has arrived.
                    (None, Some(rx)) => match rx.await.ok().flatten() {
                        Some(chunks) => reqwest::Body::from(chunks.concat()),
                        None => {
                            return (
                                Attempt::Failed("the body could not be sent again".into()),
                                Outcome::Transport,
                            );
                        }
                    },
                    (None, None) => {
                        return (
                            Attempt::Failed("the body was sent already".into()),
                            Outcome::Transport,
                        );
                    }
                };
                match tokio::time::timeout(self.timeout, rb.body(body).send()).await {
                    Ok(Ok(res)) => {
                        let outcome = Outcome::of_status(res.status().as_u16());
                        (Attempt::Answer(res), outcome)
                    }
                    Ok(Err(e)) => {
                        let why =
                            format!("{}: {}", instance.url, transport_reason(&e, self.timeout));
                        (retryable(&e, why), Outcome::Transport)
                    }
                    Err(_) => (
                        Attempt::Failed(format!(
                            "{}: no answer within {} ms",
                            instance.url,
                            self.timeout.as_millis()
                        )),
                        Outcome::Transport,
                    ),
                }
            }
        };
        match self.attempt(module, Some(&key), idempotent, send).await {
            Ok(res) => into_response(res),
            Err(why) => unavailable(format!("the {module} module is unavailable ({why})")),
        }
    }
}

/// A read through a module's API that a smoke test makes.
fn smoke_read(module: &str) -> &'static str {
    match module {
        "order" => "/orders?limit=1",
        "inventory" => "/products?limit=1",
        "payment" => "/payments?limit=1",
        _ => "/notifications?limit=1",
    }
}

/// The blue-green smoke test: every instance answers `/health/ready` with
/// 200, and a read through the module's API (with a service token) with 200.
pub struct HttpSmoke(pub Arc<Upstreams>);

#[async_trait]
impl rollout::SmokeTest for HttpSmoke {
    async fn check(&self, module: &'static str, pool: &Pool) -> Result<(), String> {
        let up = &self.0;
        let token = up.token("service:gateway").map_err(|e| format!("{e:#}"))?;
        for i in pool.instances() {
            let ready = up
                .clients
                .get()
                .get(format!("{}/health/ready", i.base()))
                .timeout(up.timeout)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "{} /health/ready: {}",
                        i.url,
                        transport_reason(&e, up.timeout)
                    )
                })?;
            if !ready.status().is_success() {
                return Err(format!(
                    "{} is not ready ({})",
                    i.url,
                    ready.status().as_u16()
                ));
            }
            let read = up
                .clients
                .get()
                .get(format!("{}/api/v1{}", i.base(), smoke_read(module)))
                .bearer_auth(&token)
                .timeout(up.timeout)
                .send()
                .await
                .map_err(|e| format!("{}: {}", i.url, transport_reason(&e, up.timeout)))?;
            if !read.status().is_success() {
                return Err(format!(
                    "{} answered {} to GET /api/v1{}",
                    i.url,
                    read.status().as_u16(),
                    smoke_read(module)
                ));
            }
        }
        Ok(())
    }
}

/// The key a forwarded request sticks to one side of a split by: the caller's
/// token `sub`, else its address.
pub fn sticky_key(req: &HttpRequest) -> String {
    match req.extensions().get::<agora_kernel::Principal>() {
        Some(p) => format!("sub:{}", p.subject),
        None => format!(
            "ip:{}",
            req.peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default()
        ),
    }
}

/// The upstream's answer as this process's, streamed.
fn into_response(res: reqwest::Response) -> HttpResponse {
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HttpResponse::build(status);
    for (name, value) in res.headers() {
        if hop_by_hop(name.as_str()) || name.as_str() == "date" {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append_header((n, v));
        }
    }
    let len = res.content_length();
    let stream = res
        .bytes_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    match len {
        Some(n) => out.body(SizedStream::new(n, stream)),
        None => out.streaming(stream),
    }
}

/// The kernel's [`Transport`] to one remote module, behind its breaker.
pub struct ModuleTransport {
    module: &'static str,
    upstreams: Arc<Upstreams>,
    breaker: Arc<CircuitBreaker>,
}

#[async_trait]
impl Transport for ModuleTransport {
    async fn send(
        &self,
        ctx: &CallContext,
        request: RemoteRequest,
    ) -> Result<RemoteResponse, RemoteError> {
        let permit = self.breaker.acquire().map_err(|r| RemoteError {
            module: self.module.to_owned(),
            reason: "its circuit breaker is open".into(),
            retry_after: Some(r.retry_after),
        })?;
        let result = self.upstreams.call(self.module, ctx, &request).await;
        match &result {
            Ok(r) if r.status >= 500 => permit.fault(),
            Ok(_) => permit.success(),
            Err(_) => permit.fault(),
        }
        result
    }
}
