//! Calls to a module hosted by another process.
//!
//! A module's HTTP client of its own REST API (`agora_payment::remote`, …)
//! speaks [`RemoteRequest`]s to a [`Transport`] the host provides. The host's
//! transport picks an instance of the module, authenticates the call with the
//! calling process's `service` token, carries the correlation id, bounds the
//! call by a time-out, retries a connection failure of an idempotent call on
//! another instance and guards the module with a circuit breaker. The module's
//! client only turns responses into its own domain results.

use std::time::Duration;

use actix_web::http::Method;
use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::context::CallContext;
use crate::problem::Problem;

/// One call to a module's REST API.
#[derive(Debug, Clone)]
pub struct RemoteRequest {
    pub method: Method,
    /// Under `/api/v1`, with its query: `/payments?order_id=…`.
    pub path: String,
    pub body: Option<serde_json::Value>,
    /// Sent as `Idempotency-Key`; a call with one may be retried.
    pub idempotency_key: Option<String>,
    /// The aggregate the call concerns (an order id): calls about one
    /// aggregate stay on one side of a canary split.
    pub affinity: Option<String>,
}

impl RemoteRequest {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            body: None,
            idempotency_key: None,
            affinity: None,
        }
    }

    pub fn post(path: impl Into<String>, body: serde_json::Value) -> Self {
        Self {
            method: Method::POST,
            path: path.into(),
            body: Some(body),
            idempotency_key: None,
            affinity: None,
        }
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    pub fn affinity(mut self, key: impl Into<String>) -> Self {
        self.affinity = Some(key.into());
        self
    }

    /// GETs and calls with an idempotency key may be sent twice.
    pub fn is_idempotent(&self) -> bool {
        self.method == Method::GET || self.idempotency_key.is_some()
    }
}

/// What the module answered (any status).
#[derive(Debug, Clone)]
pub struct RemoteResponse {
    pub status: u16,
    pub body: bytes::Bytes,
    /// `Retry-After`, when it answered one.
    pub retry_after: Option<Duration>,
}

impl RemoteResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as `T`.
    ///
    /// # Errors
    /// The body is not a `T`.
    pub fn json<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            anyhow::anyhow!(
                "the module answered {} with a body that is not what its API documents: {e}",
                self.status
            )
        })
    }

    /// The problem+json body of an error answer.
    pub fn problem(&self) -> Option<Problem> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The problem type's slug (`insufficient-stock` of `urn:agora:problem:insufficient-stock`).
    pub fn problem_type(&self) -> Option<String> {
        self.problem().map(|p| {
            p.problem_type
                .strip_prefix("urn:agora:problem:")
                .unwrap_or(&p.problem_type)
                .to_owned()
        })
    }

    /// What an answer `module`'s API does not document for `what` (a call)
    /// means: an unexpected error with the status and the problem's detail.
    pub fn unexpected(&self, module: &str, what: &str) -> anyhow::Error {
        let detail = self.problem().map(|p| p.detail).unwrap_or_default();
        anyhow::anyhow!(
            "the {module} module answered {what} with {}: {detail}",
            self.status
        )
    }
}

/// No answer: every instance unreachable or too slow, or the module's circuit
/// breaker open. Whether the call took effect is unknown; retry it (with its
/// idempotency key).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the {module} module is unavailable: {reason}")]
pub struct RemoteError {
    pub module: String,
    pub reason: String,
    pub retry_after: Option<Duration>,
}

/// The host's way to one module in another process.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Send `request` to an instance of the module on behalf of `ctx` (its
    /// correlation id travels; its principal does not — the call is
    /// authenticated as this process's `service` principal).
    ///
    /// # Errors
    /// [`RemoteError`] when no answer came.
    async fn send(
        &self,
        ctx: &CallContext,
        request: RemoteRequest,
    ) -> Result<RemoteResponse, RemoteError>;

    /// [`Transport::send`] for a module's `api` client: to its callers no
    /// answer is unexpected, and `?` turns it into their errors'
    /// `Unexpected(anyhow::Error)`.
    ///
    /// # Errors
    /// The [`RemoteError`] when no answer came.
    async fn call(
        &self,
        ctx: &CallContext,
        request: RemoteRequest,
    ) -> anyhow::Result<RemoteResponse> {
        Ok(self.send(ctx, request).await?)
    }
}
