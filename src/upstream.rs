//! Calls to modules hosted by other processes, one pool per remote module
//! (`AGORA__REMOTE__<MODULE>__URLS`), used by every call this process makes
//! to that module: module-to-module calls through [`ModuleTransport`] (the
//! kernel's [`Transport`] port that the modules' HTTP clients speak) and
//! forwarded `/api/v1` requests ([`Upstreams::forward`]).
//!
//! Every call carries this process's `service` token, the correlation id, and
//! a time-out; a connection failure of an idempotent call (a GET, or one with
//! an `Idempotency-Key`) is retried once on another instance; module-to-module
//! calls go through one circuit breaker per remote module
//! (`agora_circuit_breaker_state{breaker="<module>_service"}`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
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

/// One instance of a remote module.
#[derive(Debug)]
pub struct Instance {
    /// The base URL as configured (no trailing `/`).
    pub url: String,
}

/// The instances of one remote module, used round robin.
pub struct Pool {
    pub module: &'static str,
    instances: Vec<Arc<Instance>>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(module: &'static str, urls: &[String]) -> Self {
        Self {
            module,
            instances: urls
                .iter()
                .map(|u| Arc::new(Instance { url: u.clone() }))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn instances(&self) -> &[Arc<Instance>] {
        &self.instances
    }

    /// The instances in the order to try them: the next in the rotation first.
    fn attempt_order(&self) -> Vec<Arc<Instance>> {
        let n = self.instances.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..self.instances.len())
            .map(|i| self.instances[(start + i) % n].clone())
            .collect()
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

/// Every remote module's pool and breaker, the HTTP client, the service tokens.
pub struct Upstreams {
    client: reqwest::Client,
    /// Only when this process calls another one.
    tokens: Option<ServiceTokens>,
    timeout: Duration,
    body_limit: usize,
    pools: BTreeMap<&'static str, Arc<Pool>>,
    breakers: BTreeMap<&'static str, Arc<CircuitBreaker>>,
}

impl Upstreams {
    /// Pools for the modules this process does not host.
    ///
    /// # Errors
    /// Service-token keys that do not parse; an HTTP client that cannot be built.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Arc<Self>> {
        let timeout = Duration::from_millis(settings.upstream.timeout_ms);
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("failed to build the upstream HTTP client")?;
        let mut pools = BTreeMap::new();
        let mut breakers = BTreeMap::new();
        for module in crate::settings::MODULES {
            let urls = settings.remote_urls(module);
            if settings.hosts(module) || urls.is_empty() {
                continue;
            }
            pools.insert(module, Arc::new(Pool::new(module, &urls)));
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
        let tokens = if pools.is_empty() {
            None
        } else {
            Some(ServiceTokens::from_settings(&settings.auth)?)
        };
        Ok(Arc::new(Self {
            client,
            tokens,
            timeout,
            body_limit: settings.http.body_limit_bytes,
            pools,
            breakers,
        }))
    }

    pub fn pool(&self, module: &str) -> Option<&Arc<Pool>> {
        self.pools.get(module)
    }

    /// The remote modules and their pools.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
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

    /// Whether an instance answers `/health/live` within a second (for readiness).
    pub async fn reachable(&self, instance: &Instance) -> Result<(), String> {
        let res = self
            .client
            .get(format!("{}/health/live", instance.url))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("answered {}", r.status().as_u16())),
            Err(e) => Err(transport_reason(&e, Duration::from_secs(1))),
        }
    }

    fn token(&self, subject: &str) -> anyhow::Result<String> {
        self.tokens
            .as_ref()
            .context("this process calls no other process")?
            .token(subject)
    }

    /// One module-to-module call, on one instance or (idempotent, connection
    /// failed) two.
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
        let pool = self
            .pools
            .get(module)
            .ok_or_else(|| unavailable("no instances are configured".into()))?;
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
        let tries = if request.is_idempotent() { 2 } else { 1 };
        let mut last = String::new();
        for instance in pool.attempt_order().into_iter().take(tries) {
            let method = reqwest::Method::from_bytes(request.method.as_str().as_bytes())
                .unwrap_or(reqwest::Method::GET);
            let mut rb = self
                .client
                .request(method, format!("{}/api/v1{}", instance.url, request.path))
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
            match rb.send().await {
                Ok(res) => {
                    let status = res.status().as_u16();
                    let retry_after = res
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let body = res.bytes().await.map_err(|e| {
                        unavailable(format!(
                            "{} broke off its answer: {}",
                            instance.url,
                            transport_reason(&e, self.timeout)
                        ))
                    })?;
                    return Ok(RemoteResponse {
                        status,
                        body,
                        retry_after,
                    });
                }
                Err(e) => {
                    last = format!("{}: {}", instance.url, transport_reason(&e, self.timeout));
                    tracing::warn!(module, url = %instance.url, error = %last, "call to a remote module failed");
                    if !e.is_connect() {
                        break;
                    }
                }
            }
        }
        Err(unavailable(last))
    }

    /// Forward a `/api/v1` request to an instance of `module`, streaming the
    /// body both ways; the caller's `Authorization`, `X-Request-Id`,
    /// `traceparent`, `Idempotency-Key` and other end-to-end headers pass on,
    /// hop-by-hop ones do not, and this process's service token goes in
    /// `X-Agora-Forwarded-By`. No answer within the time-out: 503.
    pub async fn forward(
        &self,
        module: &'static str,
        req: HttpRequest,
        mut payload: web::Payload,
    ) -> HttpResponse {
        let unavailable = |detail: String| {
            tracing::warn!(module, error = %detail, "forwarding failed");
            Problem::unavailable(detail, 1).to_response()
        };
        let Some(pool) = self.pools.get(module) else {
            return unavailable(format!("the {module} module has no instances configured"));
        };
        let token = match self.token("service:gateway") {
            Ok(t) => t,
            Err(e) => return unavailable(format!("{e:#}")),
        };
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

        // Pump the body into the first attempt as it arrives, keeping a copy
        // (up to the body limit) in case an idempotent request must be sent
        // again to another instance.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<web::Bytes, std::io::Error>>(16);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Option<Vec<web::Bytes>>>();
        let limit = self.body_limit;
        actix_web::rt::spawn(async move {
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
        });
        let first_body =
            reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }));

        let order = pool.attempt_order();
        let tries = if idempotent { order.len().min(2) } else { 1 };
        let mut body = Some(first_body);
        let mut done_rx = Some(done_rx);
        let mut last = String::new();
        for (attempt, instance) in order.into_iter().take(tries).enumerate() {
            let this_body = match body.take() {
                Some(b) => b,
                None => {
                    // A retry: send the copy, once the whole body has arrived.
                    let copy = match done_rx.take() {
                        Some(rx) => rx.await.ok().flatten(),
                        None => None,
                    };
                    match copy {
                        Some(chunks) => reqwest::Body::from(chunks.concat()),
                        None => break,
                    }
                }
            };
            let rb = self
                .client
                .request(method.clone(), format!("{}{target}", instance.url))
                .headers(headers.clone())
                .body(this_body);
            match tokio::time::timeout(self.timeout, rb.send()).await {
                Ok(Ok(res)) => return into_response(res),
                Ok(Err(e)) => {
                    last = format!("{}: {}", instance.url, transport_reason(&e, self.timeout));
                    if !e.is_connect() || attempt + 1 >= tries {
                        break;
                    }
                }
                Err(_) => {
                    last = format!(
                        "{}: no answer within {} ms",
                        instance.url,
                        self.timeout.as_millis()
                    );
                    break;
                }
            }
        }
        unavailable(format!("the {module} module is unavailable ({last})"))
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
