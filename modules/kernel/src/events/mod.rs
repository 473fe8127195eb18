//! Integration events: the [`EventEnvelope`] every module publishes, the
//! [`EventBus`] port, and its two adapters — the in-process [`InMemoryBus`]
//! (the single-process default) and [`jetstream::JetStreamBus`] (NATS
//! JetStream, once modules run in separate processes).
//!
//! Publishing is the outbox relay's job: it hands each committed outbox row to
//! [`EventBus::publish`] and marks the row done only when that returns `Ok`
//! (every in-process subscriber handled it, or the broker acknowledged it).
//! Subscribers are [`EventHandler`]s; they record each event id in their own
//! inbox in the same transaction as their writes, so at-least-once delivery
//! changes nothing the second time. Both adapters deliver the events of one
//! publishing module to one subscriber in the order they were written, and
//! hold later events back while an earlier one is being retried; after
//! [`DeliveryPolicy::max_deliver`] failed deliveries an event is dead-lettered
//! instead of blocking the subscriber for good.

pub mod jetstream;
mod memory;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::module::BackgroundTask;

pub use memory::InMemoryBus;

/// One integration event, versioned by its type (`order.confirmed.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub id: Uuid,
    /// `<source>.<name>.v<n>`: the first segment is always the publishing module.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The publishing module (`order`, `payment`, ...).
    pub source: String,
    pub occurred_at: DateTime<Utc>,
    /// The request id of the request that caused it.
    pub correlation_id: String,
    pub payload: serde_json::Value,
}

impl EventEnvelope {
    /// Wrap a payload; fails only if the payload cannot be serialised.
    pub fn new(
        event_type: &str,
        source: &str,
        correlation_id: &str,
        payload: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id: Uuid::now_v7(),
            event_type: event_type.to_owned(),
            source: source.to_owned(),
            occurred_at: Utc::now(),
            correlation_id: correlation_id.to_owned(),
            payload: serde_json::to_value(payload)?,
        })
    }

    /// [`new`](Self::new) for a publishing module: a payload that does not
    /// serialise is an unexpected error that names the event type.
    ///
    /// # Errors
    /// The payload cannot be serialised.
    pub fn publishable(
        event_type: &str,
        source: &str,
        correlation_id: &str,
        payload: &impl Serialize,
    ) -> anyhow::Result<Self> {
        Self::new(event_type, source, correlation_id, payload)
            .with_context(|| format!("failed to serialise the {event_type} event"))
    }

    /// Deserialise the payload into the consumer's own type.
    pub fn payload_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }
}

/// A subscriber. `handle` should only write rows (inbox + its own records);
/// slow work belongs in the consuming module's own worker.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// A stable name: the inbox consumer key, the durable consumer's name on a
    /// broker, the `module` label of the bus metrics. Letters, digits, `_`, `-`.
    fn name(&self) -> &str;
    /// The publishing modules whose events this handler reads; a broker keeps
    /// one durable consumer per source for it.
    fn sources(&self) -> &[&str];
    /// Whether this handler wants events of this type (others are skipped).
    fn handles(&self, event_type: &str) -> bool;
    /// Handle one event.
    ///
    /// # Errors
    /// Any error makes the bus deliver the event again later (with back-off),
    /// up to [`DeliveryPolicy::max_deliver`] times.
    async fn handle(&self, event: &EventEnvelope) -> anyhow::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// An in-process subscriber failed; the relay delivers the event again.
    #[error("subscriber `{handler}` failed to handle {event_type}")]
    HandlerFailed {
        handler: String,
        event_type: String,
        #[source]
        source: anyhow::Error,
    },
    /// The broker did not acknowledge the event; the relay publishes it again.
    #[error("the bus is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// The event can never be published as it is (a programming error).
    #[error("the event cannot be published: {0}")]
    Invalid(String),
}

/// How often a failing delivery is retried before the event is dead-lettered,
/// and the back-off between attempts (doubling, with jitter, up to `retry_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    pub max_deliver: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            max_deliver: 20,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

impl DeliveryPolicy {
    /// The wait before delivery `delivered + 1`.
    pub fn backoff(&self, delivered: u32) -> Duration {
        crate::outbox::backoff(delivered, self.retry_base, self.retry_max)
    }
}

/// The event-bus port.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Deliver an event. Called by the outbox relay, in outbox order.
    ///
    /// # Errors
    /// [`PublishError`] when a subscriber failed or the broker did not
    /// acknowledge; the caller must deliver it again.
    async fn publish(&self, event: &EventEnvelope) -> Result<(), PublishError>;

    /// Register a subscriber for every later publish (with a broker: for
    /// every event its durable consumers have not yet acknowledged, including
    /// those published while no process consumed them).
    ///
    /// # Errors
    /// The broker refused to create the subscriber's consumers.
    async fn subscribe(&self, handler: Arc<dyn EventHandler>) -> anyhow::Result<()>;

    /// Tasks the host runs beside the server: a broker's pull loop per
    /// consumer and its lag gauges. Call after every `subscribe`.
    fn background_tasks(&self) -> Vec<BackgroundTask>;

    /// Whether events can flow now.
    ///
    /// # Errors
    /// The reason (the broker is unreachable).
    async fn ready(&self) -> anyhow::Result<()>;

    /// Retries and dead-lettering of failing deliveries.
    fn delivery_policy(&self) -> DeliveryPolicy;

    /// `memory` or `jetstream`.
    fn kind(&self) -> &'static str;
}

/// Count a delivery outcome: `agora_events_{consumed,redelivered,dead_lettered}_total{module,type}`.
/// A subscriber's failure counters at zero from the start, so dashboards and
/// alerts see a series (without an event type) before the first failure.
pub(crate) fn register_consumer(handler: &str) {
    for metric in [REDELIVERED, DEAD_LETTERED] {
        metrics::counter!(metric, "module" => handler.to_owned(), "type" => "").increment(0);
    }
}

pub(crate) fn count(metric: &'static str, module: &str, event_type: &str) {
    metrics::counter!(metric, "module" => module.to_owned(), "type" => event_type.to_owned())
        .increment(1);
}

pub(crate) const CONSUMED: &str = "agora_events_consumed_total";
pub(crate) const REDELIVERED: &str = "agora_events_redelivered_total";
pub(crate) const DEAD_LETTERED: &str = "agora_events_dead_lettered_total";
pub(crate) const PUBLISHED: &str = "agora_events_published_total";
