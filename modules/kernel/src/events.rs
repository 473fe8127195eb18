//! Integration events: the [`EventEnvelope`] every module publishes, the
//! [`EventBus`] port, and the in-process bus the monolith uses.
//!
//! Delivery is at-least-once: the outbox relay publishes a row and marks it done
//! only when [`EventBus::publish`] returns `Ok`, which the in-memory bus does only
//! after *every* subscriber handled the event. Consumers dedupe by event id.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One integration event, versioned by its type (`order.confirmed.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub id: Uuid,
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

    /// Deserialise the payload into the consumer's own type.
    pub fn payload_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }
}

/// A subscriber. `handle` should only write rows (inbox + its own records);
/// slow work belongs in the consuming module's own worker.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// A stable name, used as the inbox consumer key and in logs.
    fn name(&self) -> &str;
    /// Whether this handler wants events of this type.
    fn handles(&self, event_type: &str) -> bool;
    /// Handle one event.
    ///
    /// # Errors
    /// Any error makes the publish fail, so the event is delivered again later.
    async fn handle(&self, event: &EventEnvelope) -> anyhow::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("subscriber `{handler}` failed to handle {event_type}")]
    HandlerFailed {
        handler: String,
        event_type: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("the bus is unavailable")]
    Unavailable(#[source] anyhow::Error),
}

/// The event-bus port.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Deliver an event.
    ///
    /// # Errors
    /// [`PublishError`] when any subscriber failed or the broker did not
    /// acknowledge; the caller must deliver it again.
    async fn publish(&self, event: &EventEnvelope) -> Result<(), PublishError>;

    /// Register a subscriber for every later publish.
    fn subscribe(&self, handler: Arc<dyn EventHandler>);
}

/// The in-process bus: calls each interested subscriber in turn.
#[derive(Default)]
pub struct InMemoryBus {
    handlers: RwLock<Vec<Arc<dyn EventHandler>>>,
}

impl InMemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn interested(&self, event_type: &str) -> Vec<Arc<dyn EventHandler>> {
        match self.handlers.read() {
            Ok(hs) => hs
                .iter()
                .filter(|h| h.handles(event_type))
                .cloned()
                .collect(),
            Err(poisoned) => poisoned
                .into_inner()
                .iter()
                .filter(|h| h.handles(event_type))
                .cloned()
                .collect(),
        }
    }
}

#[async_trait]
impl EventBus for InMemoryBus {
    #[tracing::instrument(skip_all, fields(event_id = %event.id, event_type = %event.event_type, correlation_id = %event.correlation_id))]
    async fn publish(&self, event: &EventEnvelope) -> Result<(), PublishError> {
        // Every subscriber gets the event even if an earlier one fails; the first
        // failure is reported so the relay delivers again (consumers dedupe).
        let mut first_failure = None;
        for handler in self.interested(&event.event_type) {
            if let Err(source) = handler.handle(event).await {
                tracing::warn!(handler = handler.name(), error = %format!("{source:#}"), "subscriber failed");
                first_failure.get_or_insert(PublishError::HandlerFailed {
                    handler: handler.name().to_owned(),
                    event_type: event.event_type.clone(),
                    source,
                });
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    fn subscribe(&self, handler: Arc<dyn EventHandler>) {
        match self.handlers.write() {
            Ok(mut hs) => hs.push(handler),
            Err(poisoned) => poisoned.into_inner().push(handler),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recorder {
        name: &'static str,
        seen: Mutex<Vec<String>>,
        fail: bool,
    }

    #[async_trait]
    impl EventHandler for Recorder {
        fn name(&self) -> &str {
            self.name
        }
        fn handles(&self, t: &str) -> bool {
            t.starts_with("order.")
        }
        async fn handle(&self, e: &EventEnvelope) -> anyhow::Result<()> {
            if let Ok(mut s) = self.seen.lock() {
                s.push(e.event_type.clone());
            }
            if self.fail {
                anyhow::bail!("boom")
            }
            Ok(())
        }
    }

    fn recorder(name: &'static str, fail: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            name,
            seen: Mutex::new(vec![]),
            fail,
        })
    }

    fn seen(r: &Recorder) -> Vec<String> {
        r.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    #[tokio::test]
    async fn publish_reaches_every_interested_subscriber() {
        let bus = InMemoryBus::new();
        let a = recorder("a", false);
        let b = recorder("b", false);
        bus.subscribe(a.clone());
        bus.subscribe(b.clone());
        let e = EventEnvelope::new(
            "order.placed.v1",
            "order",
            "req-1",
            &serde_json::json!({"x": 1}),
        );
        assert!(
            bus.publish(&e.unwrap_or_else(|_| unreachable!()))
                .await
                .is_ok()
        );
        let other = EventEnvelope::new("payment.succeeded.v1", "payment", "req-2", &1);
        assert!(
            bus.publish(&other.unwrap_or_else(|_| unreachable!()))
                .await
                .is_ok()
        );
        assert_eq!(seen(&a), vec!["order.placed.v1"]);
        assert_eq!(seen(&b), vec!["order.placed.v1"]);
    }

    #[tokio::test]
    async fn one_failing_subscriber_fails_the_publish_but_the_others_still_get_it() {
        let bus = InMemoryBus::new();
        let bad = recorder("bad", true);
        let good = recorder("good", false);
        bus.subscribe(bad.clone());
        bus.subscribe(good.clone());
        let e = EventEnvelope::new("order.placed.v1", "order", "req-1", &1)
            .unwrap_or_else(|_| unreachable!());
        let err = bus.publish(&e).await;
        assert!(
            matches!(err, Err(PublishError::HandlerFailed { ref handler, .. }) if handler == "bad")
        );
        assert_eq!(seen(&good).len(), 1);
    }
}
