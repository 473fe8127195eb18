//! `Idempotency-Key` for POSTs that create orders or move money.
//!
//! Wrap a resource with [`Idempotency`]: the first request with a key runs and
//! its response (status < 500) is stored; the same key with the same body
//! replays it (`Idempotent-Replayed: true`); the same key with a different body
//! or on another resource (`/orders/2/pay` after `/orders/1/pay`) → 422; the
//! same key while the first is still running → 409. Keys are scoped
//! by (principal, method, route, key), kept for a TTL (24 h by default) and
//! stored in the owning module's own database (`idempotency_keys` table).
//! A 5xx answer, or one with `Retry-After` (in progress, rate limited),
//! releases the key so the client can retry.

use std::future::{Ready, ready};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpResponse};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use sha2::{Digest, Sha256};

use crate::principal::Principal;
use crate::problem::Problem;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Which stored key a request maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyScope {
    pub principal: String,
    pub method: String,
    pub route: String,
    pub key: String,
}

/// A response kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub body: String,
}

/// What [`IdempotencyStore::begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The caller owns the key now and must `complete` or `release` it.
    Started,
    /// Another request with this key is still running.
    InFlight,
    /// The key was used with another body.
    Mismatch,
    /// The key completed before: replay this.
    Replay(StoredResponse),
}

/// Where a module keeps its idempotency keys.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claim `scope` for a request whose body hashes to `request_hash`. Keys
    /// older than `ttl` count as absent; an unfinished key older than
    /// `lock_timeout` (its request crashed) may be taken over.
    ///
    /// # Errors
    /// Store failures.
    async fn begin(
        &self,
        scope: &IdempotencyScope,
        request_hash: &str,
        now: DateTime<Utc>,
        ttl: Duration,
        lock_timeout: Duration,
    ) -> anyhow::Result<Begin>;

    /// Store the response of a started key.
    ///
    /// # Errors
    /// Store failures.
    async fn complete(
        &self,
        scope: &IdempotencyScope,
        response: &StoredResponse,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()>;

    /// Forget a started key whose request failed, so it may be retried.
    ///
    /// # Errors
    /// Store failures.
    async fn release(&self, scope: &IdempotencyScope) -> anyhow::Result<()>;

    /// Delete keys created before `cutoff`; returns how many.
    ///
    /// # Errors
    /// Store failures.
    async fn purge_older_than(&self, cutoff: DateTime<Utc>) -> anyhow::Result<u64>;
}

/// A stored key as both stores read it: request hash, status, content type,
/// location, body, created at (epoch ms).
type KeyRow = (
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

/// What a claim that found its key already taken makes of the record.
enum Found {
    Decided(Begin),
    /// Unfinished and older than the lock timeout (its request crashed): the
    /// caller may take it over, if it is still as read.
    Stale {
        created_at: i64,
    },
}

/// Judge the record a claim of `request_hash` found (`None`: it was deleted
/// between the claim and the read, so someone else is on it). An unfinished
/// record created before `stale_before` is [`Found::Stale`].
fn found(row: Option<KeyRow>, request_hash: &str, stale_before: i64) -> Found {
    let Some((hash, status, content_type, location, body, created_at)) = row else {
        return Found::Decided(Begin::InFlight);
    };
    if hash != request_hash {
        return Found::Decided(Begin::Mismatch);
    }
    match status {
        Some(status) => Found::Decided(Begin::Replay(StoredResponse {
            status: u16::try_from(status).unwrap_or(500),
            content_type,
            location,
            body: body.unwrap_or_default(),
        })),
        None if created_at < stale_before => Found::Stale { created_at },
        None => Found::Decided(Begin::InFlight),
    }
}

macro_rules! sql_idempotency {
    ($db:ident, $pool:ty) => {
        pub mod $db {
            use super::*;
            use crate::db::epoch_ms;
            use anyhow::Context;

            /// The idempotency keys of one module's database.
            pub type Store = crate::db::KernelTables<$pool>;

            const WHERE_SCOPE: &str = "principal = $1 AND method = $2 AND route = $3 AND idem_key = $4";

            #[async_trait]
            impl IdempotencyStore for Store {
                async fn begin(
                    &self,
                    s: &IdempotencyScope,
                    request_hash: &str,
                    now: DateTime<Utc>,
                    ttl: Duration,
                    lock_timeout: Duration,
                ) -> anyhow::Result<Begin> {
                    let now_ms = epoch_ms(now);
                    let expired_before = now_ms - ttl.as_millis() as i64;
                    // Claim the key, or take over an expired record of it, in one write.
                    let inserted = sqlx::query(
                        "INSERT INTO idempotency_keys (principal, method, route, idem_key, request_hash, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (principal, method, route, idem_key) DO UPDATE \
                         SET request_hash = excluded.request_hash, created_at = excluded.created_at, status = NULL, \
                         content_type = NULL, location = NULL, body = NULL, completed_at = NULL \
                         WHERE idempotency_keys.created_at < $7",
                    )
                    .bind(&s.principal).bind(&s.method).bind(&s.route).bind(&s.key).bind(request_hash).bind(now_ms)
                    .bind(expired_before)
                    .execute(&self.db).await.context("failed to claim an idempotency key")?;
                    if inserted.rows_affected() == 1 {
                        return Ok(Begin::Started);
                    }
                    let row: Option<KeyRow> = sqlx::query_as(&format!(
                        "SELECT request_hash, status, content_type, location, body, created_at \
                         FROM idempotency_keys WHERE {WHERE_SCOPE}"))
                        .bind(&s.principal).bind(&s.method).bind(&s.route).bind(&s.key)
                        .fetch_optional(&self.db).await.context("failed to read an idempotency key")?;
                    match found(row, request_hash, now_ms - lock_timeout.as_millis() as i64) {
                        Found::Decided(begin) => Ok(begin),
                        Found::Stale { created_at } => {
                            // Only if nobody took it over since we read it.
                            let taken = sqlx::query(&format!(
                                "UPDATE idempotency_keys SET created_at = $5 \
                                 WHERE {WHERE_SCOPE} AND status IS NULL AND created_at = $6"))
                                .bind(&s.principal).bind(&s.method).bind(&s.route).bind(&s.key)
                                .bind(now_ms).bind(created_at)
                                .execute(&self.db).await.context("failed to take over an idempotency key")?;
                            Ok(if taken.rows_affected() == 1 { Begin::Started } else { Begin::InFlight })
                        }
                    }
                }

                async fn complete(&self, s: &IdempotencyScope, r: &StoredResponse, now: DateTime<Utc>) -> anyhow::Result<()> {
                    sqlx::query(&format!(
                        "UPDATE idempotency_keys SET status = $5, content_type = $6, location = $7, body = $8, \
                         completed_at = $9 WHERE {WHERE_SCOPE}"))
                        .bind(&s.principal).bind(&s.method).bind(&s.route).bind(&s.key)
                        .bind(i64::from(r.status)).bind(&r.content_type).bind(&r.location).bind(&r.body)
                        .bind(epoch_ms(now))
                        .execute(&self.db).await.context("failed to store an idempotent response")?;
                    Ok(())
                }

                async fn release(&self, s: &IdempotencyScope) -> anyhow::Result<()> {
                    sqlx::query(&format!("DELETE FROM idempotency_keys WHERE {WHERE_SCOPE} AND status IS NULL"))
                        .bind(&s.principal).bind(&s.method).bind(&s.route).bind(&s.key)
                        .execute(&self.db).await.context("failed to release an idempotency key")?;
                    Ok(())
                }

                async fn purge_older_than(&self, cutoff: DateTime<Utc>) -> anyhow::Result<u64> {
                    self.delete_older("DELETE FROM idempotency_keys WHERE created_at < $1", cutoff)
                        .await.context("failed to purge idempotency keys")
                }
            }
        }
    };
}

/// Idempotency keys on SQLite ([`crate::sqlite::Sqlite`]): the claim, and the
/// read of the record when the claim finds one, in one write transaction.
pub mod sqlite {
    use super::*;
    use crate::db::epoch_ms;
    use crate::sqlite::{Sqlite, rusqlite};
    use anyhow::Context;
    use rusqlite::OptionalExtension;

    /// The idempotency keys of one module's database.
    pub type Store = crate::db::KernelTables<Sqlite>;

    /// A key's scope, as a literal so statements are built at compile time.
    macro_rules! where_scope {
        () => {
            "principal = ?1 AND method = ?2 AND route = ?3 AND idem_key = ?4"
        };
    }

    #[async_trait]
    impl IdempotencyStore for Store {
        async fn begin(
            &self,
            s: &IdempotencyScope,
            request_hash: &str,
            now: DateTime<Utc>,
            ttl: Duration,
            lock_timeout: Duration,
        ) -> anyhow::Result<Begin> {
            let now_ms = epoch_ms(now);
            let expired_before = now_ms - ttl.as_millis() as i64;
            let stale_before = now_ms - lock_timeout.as_millis() as i64;
            let (s, request_hash) = (s.clone(), request_hash.to_owned());
            self.db
                .write(move |tx| {
                    // Claim the key, or take over an expired record of it, in one write.
                    let claimed = tx
                        .prepare_cached(
                            "INSERT INTO idempotency_keys (principal, method, route, idem_key, request_hash, created_at) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (principal, method, route, idem_key) DO UPDATE \
                             SET request_hash = excluded.request_hash, created_at = excluded.created_at, status = NULL, \
                             content_type = NULL, location = NULL, body = NULL, completed_at = NULL \
                             WHERE idempotency_keys.created_at < ?7",
                        )?
                        .execute(rusqlite::params![s.principal, s.method, s.route, s.key, request_hash, now_ms, expired_before])
                        .context("failed to claim an idempotency key")?;
                    if claimed == 1 {
                        return Ok(Begin::Started);
                    }
                    let row: Option<KeyRow> = tx
                        .prepare_cached(concat!("SELECT request_hash, status, content_type, location, body, created_at \
                             FROM idempotency_keys WHERE ", where_scope!()))?
                        .query_row(rusqlite::params![s.principal, s.method, s.route, s.key], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                        })
                        .optional()
                        .context("failed to read an idempotency key")?;
                    match found(row, &request_hash, stale_before) {
                        Found::Decided(begin) => Ok(begin),
                        Found::Stale { .. } => {
                            // Its request crashed: take it over (the same transaction, so no race).
                            tx.prepare_cached(concat!("UPDATE idempotency_keys SET created_at = ?5 WHERE ", where_scope!(), " AND status IS NULL"))?
                            .execute(rusqlite::params![s.principal, s.method, s.route, s.key, now_ms])
                            .context("failed to take over an idempotency key")?;
                            Ok(Begin::Started)
                        }
                    }
                })
                .await
        }

        async fn complete(
            &self,
            s: &IdempotencyScope,
            r: &StoredResponse,
            now: DateTime<Utc>,
        ) -> anyhow::Result<()> {
            let (s, r) = (s.clone(), r.clone());
            self.db
                .write(move |tx| {
                    tx.prepare_cached(concat!("UPDATE idempotency_keys SET status = ?5, content_type = ?6, location = ?7, body = ?8, \
                         completed_at = ?9 WHERE ", where_scope!()))?
                    .execute(rusqlite::params![
                        s.principal, s.method, s.route, s.key,
                        i64::from(r.status), r.content_type, r.location, r.body, epoch_ms(now)
                    ])
                })
                .await
                .context("failed to store an idempotent response")?;
            Ok(())
        }

        async fn release(&self, s: &IdempotencyScope) -> anyhow::Result<()> {
            let s = s.clone();
            self.db
                .write(move |tx| {
                    tx.prepare_cached(concat!(
                        "DELETE FROM idempotency_keys WHERE ",
                        where_scope!(),
                        " AND status IS NULL"
                    ))?
                    .execute(rusqlite::params![
                        s.principal,
                        s.method,
                        s.route,
                        s.key
                    ])
                })
                .await
                .context("failed to release an idempotency key")?;
            Ok(())
        }

        async fn purge_older_than(&self, cutoff: DateTime<Utc>) -> anyhow::Result<u64> {
            self.db
                .delete_in_batches(
                    "DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM idempotency_keys \
                     WHERE created_at < ?1 LIMIT ?2)",
                    epoch_ms(cutoff),
                )
                .await
                .context("failed to purge idempotency keys")
        }
    }
}

sql_idempotency!(postgres, sqlx::PgPool);

/// Settings of the middleware.
#[derive(Clone)]
pub struct IdempotencyConfig {
    /// A POST without the header → 400 when true; runs without protection when false.
    pub required: bool,
    pub ttl: Duration,
    /// After this, an unfinished key (its request crashed) may be taken over.
    pub lock_timeout: Duration,
    pub body_limit: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            required: true,
            ttl: Duration::from_secs(24 * 3600),
            lock_timeout: Duration::from_secs(300),
            body_limit: 256 * 1024,
        }
    }
}

/// The middleware; wrap the resources that create orders or move money.
#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    config: IdempotencyConfig,
}

impl Idempotency {
    pub fn new(store: Arc<dyn IdempotencyStore>, config: IdempotencyConfig) -> Self {
        Self { store, config }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Idempotency
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = IdempotencyMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(IdempotencyMiddleware {
            service: Rc::new(service),
            inner: self.clone(),
        }))
    }
}

pub struct IdempotencyMiddleware<S> {
    service: Rc<S>,
    inner: Idempotency,
}

fn valid_key(k: &str) -> bool {
    (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic())
}

/// The hash that decides "same request": method, request target (the concrete
/// path and query, not the route pattern) and the exact body bytes.
pub fn request_hash(method: &str, route: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update(b"\n");
    h.update(route.as_bytes());
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

fn replay(stored: StoredResponse) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(stored.status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = HttpResponse::build(status);
    if let Some(ct) = stored
        .content_type
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        builder.insert_header((header::CONTENT_TYPE, ct));
    }
    if let Some(loc) = stored
        .location
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        builder.insert_header((header::LOCATION, loc));
    }
    builder.insert_header((
        HeaderName::from_static(REPLAYED_HEADER),
        HeaderValue::from_static("true"),
    ));
    builder.body(stored.body)
}

impl<S, B> Service<ServiceRequest> for IdempotencyMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let service = self.service.clone();
        let Idempotency { store, config } = self.inner.clone();
        Box::pin(async move {
            // No principal: the handler answers 401; nothing is worth remembering.
            if req.extensions().get::<Principal>().is_none() {
                return Ok(service.call(req).await?.map_into_boxed_body());
            }
            let key = match req.headers().get(IDEMPOTENCY_KEY).map(|v| v.to_str()) {
                None if config.required => {
                    let p = Problem::bad_request(
                        "this request needs an Idempotency-Key header (1–255 visible ASCII characters)",
                    );
                    return Ok(req.into_response(p.to_response()));
                }
                None => return Ok(service.call(req).await?.map_into_boxed_body()),
                Some(Ok(k)) if valid_key(k) => k.to_owned(),
                Some(_) => {
                    let p = Problem::bad_request(
                        "Idempotency-Key must be 1–255 visible ASCII characters",
                    );
                    return Ok(req.into_response(p.to_response()));
                }
            };
            let principal = req
                .extensions()
                .get::<Principal>()
                .map(|p| p.subject.clone())
                .unwrap_or_default();
            let method = req.method().to_string();
            let route = req.match_pattern().unwrap_or_else(|| req.path().to_owned());
            // Hash the concrete target: the same key on /orders/2/pay after
            // /orders/1/pay (same pattern, same body) is a reuse, not a replay.
            let target = match req.query_string() {
                "" => req.path().to_owned(),
                query => format!("{}?{query}", req.path()),
            };

            // Read the whole body (bounded), then hand it back to the handler.
            let mut payload = req.take_payload();
            let mut body = actix_web::web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk?;
                if body.len() + chunk.len() > config.body_limit {
                    let p = Problem::new(
                        actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                        "payload-too-large",
                        "Payload too large",
                        format!(
                            "the request body exceeds the limit of {} bytes",
                            config.body_limit
                        ),
                    );
                    return Ok(req.into_response(p.to_response()));
                }
                body.extend_from_slice(&chunk);
            }
            let body = body.freeze();
            let hash = request_hash(&method, &target, &body);
            let (_, mut replayed_payload) = actix_http::h1::Payload::create(true);
            replayed_payload.unread_data(body);
            req.set_payload(replayed_payload.into());

            let scope = IdempotencyScope {
                principal,
                method,
                route,
                key,
            };
            let begin = store
                .begin(&scope, &hash, Utc::now(), config.ttl, config.lock_timeout)
                .await;
            match begin {
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "idempotency store failed");
                    return Ok(req.into_response(
                        Problem::unavailable("the idempotency store is unavailable", 1)
                            .to_response(),
                    ));
                }
                Ok(Begin::Replay(stored)) => return Ok(req.into_response(replay(stored))),
                Ok(Begin::Mismatch) => {
                    let p = Problem::new(
                        actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency-key-reused",
                        "Idempotency key reused",
                        "this Idempotency-Key was already used with a different request body or target",
                    );
                    return Ok(req.into_response(p.to_response()));
                }
                Ok(Begin::InFlight) => {
                    let p = Problem::new(
                        actix_web::http::StatusCode::CONFLICT,
                        "idempotency-key-in-flight",
                        "Request in progress",
                        "a request with this Idempotency-Key is still being processed; retry shortly",
                    )
                    .with_retry_after(1);
                    return Ok(req.into_response(p.to_response()));
                }
                Ok(Begin::Started) => {}
            }

            let res = match service.call(req).await {
                Ok(res) => res,
                Err(e) => {
                    if let Err(re) = store.release(&scope).await {
                        tracing::error!(error = %format!("{re:#}"), "failed to release an idempotency key");
                    }
                    return Err(e);
                }
            };
            let (req, res) = res.into_parts();
            let (head, body) = res.into_parts();
            let bytes = match actix_web::body::to_bytes(body).await {
                Ok(b) => b,
                Err(_) => {
                    let _ = store.release(&scope).await;
                    return Ok(ServiceResponse::new(req, Problem::internal().to_response()));
                }
            };
            let status = head.status();
            let text = std::str::from_utf8(&bytes).ok();
            match text {
                // A 5xx, or any answer that says "retry after", is no final
                // answer: the key is released so the retry runs again.
                Some(text)
                    if !status.is_server_error()
                        && !head.headers().contains_key(header::RETRY_AFTER) =>
                {
                    let header_str = |name: header::HeaderName| {
                        head.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let stored = StoredResponse {
                        status: status.as_u16(),
                        content_type: header_str(header::CONTENT_TYPE),
                        location: header_str(header::LOCATION),
                        body: text.to_owned(),
                    };
                    if let Err(e) = store.complete(&scope, &stored, Utc::now()).await {
                        tracing::error!(error = %format!("{e:#}"), "failed to store an idempotent response");
                    }
                }
                _ => {
                    if let Err(e) = store.release(&scope).await {
                        tracing::error!(error = %format!("{e:#}"), "failed to release an idempotency key");
                    }
                }
            }
            let res = head.set_body(BoxBody::new(bytes));
            Ok(ServiceResponse::new(req, res))
        })
    }
}
