//! What a module gives the host: its routes, its background tasks and its
//! readiness check. The host only composes these.

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// What the host hands every module it builds: where the module's own
/// database is, the event bus, and the clock its rules read. Every module's
/// `build(settings, wiring, …)` takes one, so one is built like the next.
#[derive(Clone)]
pub struct Wiring {
    /// The module's database (`sqlite:`, `postgres://`, `mongodb://`).
    pub database_url: String,
    pub bus: std::sync::Arc<dyn crate::events::EventBus>,
    /// The wall clock (tests drive a [`crate::clock::ManualClock`]).
    pub clock: std::sync::Arc<dyn crate::clock::Clock>,
}

impl Wiring {
    /// A module on `database_url` and `bus`, reading the system clock.
    pub fn new(
        database_url: impl Into<String>,
        bus: std::sync::Arc<dyn crate::events::EventBus>,
    ) -> Self {
        Self {
            database_url: database_url.into(),
            bus,
            clock: std::sync::Arc::new(crate::clock::SystemClock),
        }
    }

    /// The same, reading `clock` instead.
    #[must_use]
    pub fn with_clock(mut self, clock: std::sync::Arc<dyn crate::clock::Clock>) -> Self {
        self.clock = clock;
        self
    }
}

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

/// How one round of a [`periodically`] task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Nothing more is due: wait for the next round.
    Idle,
    /// More may be due at once (a full batch): run again without waiting.
    More,
}

/// The loop of every periodic background task: run `round` at once, then
/// again after `every` (or as soon as `wake` is notified), at once again
/// when it returned [`Round::More`], until `token` is cancelled. A round is
/// never interrupted: cancellation takes effect between rounds.
pub async fn periodically<F, Fut>(
    token: &CancellationToken,
    every: std::time::Duration,
    wake: Option<&tokio::sync::Notify>,
    mut round: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Round>,
{
    loop {
        let next = round().await;
        if token.is_cancelled() {
            break;
        }
        if next == Round::More {
            continue;
        }
        let woken = async {
            match wake {
                Some(w) => w.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = token.cancelled() => break,
            () = woken => {}
            () = tokio::time::sleep(every) => {}
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

impl ModuleInfo {
    pub fn new(name: &str, store: &str, routes: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            store: store.to_owned(),
            routes: routes.iter().map(|r| (*r).to_owned()).collect(),
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    /// A round that asks for more runs again at once, a wake starts the next
    /// one before `every` (an hour here), and cancelling ends the loop.
    #[tokio::test]
    async fn rounds_repeat_when_more_is_due_wake_early_and_stop_when_cancelled() {
        let token = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let rounds = Arc::new(AtomicUsize::new(0));
        let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn({
            let (token, wake, rounds) = (token.clone(), wake.clone(), rounds.clone());
            async move {
                periodically(&token, Duration::from_secs(3600), Some(&wake), || {
                    let n = rounds.fetch_add(1, Ordering::SeqCst) + 1;
                    let _ = done.send(n);
                    async move { if n < 3 { Round::More } else { Round::Idle } }
                })
                .await;
            }
        });
        for expected in 1..=3 {
            assert_eq!(finished.recv().await, Some(expected));
        }
        wake.notify_one();
        assert_eq!(finished.recv().await, Some(4), "a wake runs the next round");
        token.cancel();
        task.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rounds.load(Ordering::SeqCst), 4);
    }
}
