//! What a module gives the host: its routes, its OpenAPI fragment, its
//! background tasks and its readiness check. The host only composes these.

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// A long-running task (outbox relay, sweeper, worker) stopped by the token.
pub struct BackgroundTask {
    pub name: String,
    pub run: Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>,
}

impl BackgroundTask {
    pub fn new<F, Fut>(name: impl Into<String>, f: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        Self {
            name: name.into(),
            run: Box::new(move |token| Box::pin(f(token))),
        }
    }
}

/// A module as the host sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModuleInfo {
    /// `order`, `inventory`, `payment` or `notification`.
    pub name: String,
    /// `sqlite`, `postgres` or `mongodb`.
    pub store: String,
    /// Path prefixes under `/api/v1` that the module serves.
    pub routes: Vec<String>,
}

/// The public face of a module crate.
#[async_trait]
pub trait Module: Send + Sync + 'static {
    fn info(&self) -> ModuleInfo;

    /// Register the module's routes; the host mounts them under `/api/v1`,
    /// behind the gateway (auth, rate limits).
    fn configure(&self, cfg: &mut actix_web::web::ServiceConfig);

    /// Tasks to run beside the server; each stops when its token is cancelled.
    fn background_tasks(&self) -> Vec<BackgroundTask>;

    /// Whether the module's store answers.
    ///
    /// # Errors
    /// The reason the module cannot serve requests now.
    async fn ready(&self) -> anyhow::Result<()>;

    /// Close pools and connections after the background tasks stopped.
    async fn shutdown(&self);
}
