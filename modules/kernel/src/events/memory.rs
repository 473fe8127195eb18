//! The in-process bus of the single-process default: `publish` calls every
//! interested subscriber in turn and succeeds only once all of them handled
//! the event, so the outbox relay (which publishes rows in order and retries
//! the first failing one before any later one) gives each subscriber the
//! events of a module in the order they were written.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use uuid::Uuid;

use super::{
    CONSUMED, DeliveryPolicy, EventBus, EventEnvelope, EventHandler, PublishError, REDELIVERED,
    count,
};
use crate::module::BackgroundTask;

/// The in-process bus.
#[derive(Default)]
pub struct InMemoryBus {
    handlers: RwLock<Vec<Arc<dyn EventHandler>>>,
    /// (handler, event) pairs whose last delivery failed: the next one is a redelivery.
    failed: Mutex<HashSet<(String, Uuid)>>,
    policy: DeliveryPolicy,
}

impl InMemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus whose failing deliveries are retried by this policy.
    pub fn with_policy(policy: DeliveryPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// Register a subscriber (cannot fail in process).
    pub fn subscribe(&self, handler: Arc<dyn EventHandler>) {
        match self.handlers.write() {
            Ok(mut hs) => hs.push(handler),
            Err(poisoned) => poisoned.into_inner().push(handler),
        }
    }

    fn interested(&self, event_type: &str) -> Vec<Arc<dyn EventHandler>> {
        let pick = |hs: &Vec<Arc<dyn EventHandler>>| -> Vec<Arc<dyn EventHandler>> {
            hs.iter()
                .filter(|h| h.handles(event_type))
                .cloned()
                .collect()
        };
        match self.handlers.read() {
            Ok(hs) => pick(&hs),
            Err(poisoned) => pick(&poisoned.into_inner()),
        }
    }

    /// Remember or forget that `handler`'s delivery of `id` failed; returns
    /// whether it had failed before (so this one was a redelivery).
    fn note(&self, handler: &str, id: Uuid, failed: bool) -> bool {
        let mut set = match self.failed.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key = (handler.to_owned(), id);
        if failed {
            !set.insert(key)
        } else {
            set.remove(&key)
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
            let result = handler.handle(event).await;
            let was_redelivery = self.note(handler.name(), event.id, result.is_err());
            if was_redelivery {
                count(REDELIVERED, handler.name(), &event.event_type);
            }
            match result {
                Ok(()) => count(CONSUMED, handler.name(), &event.event_type),
                Err(source) => {
                    tracing::warn!(handler = handler.name(), error = %format!("{source:#}"), "subscriber failed");
                    first_failure.get_or_insert(PublishError::HandlerFailed {
                        handler: handler.name().to_owned(),
                        event_type: event.event_type.clone(),
                        source,
                    });
                }
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    async fn subscribe(&self, handler: Arc<dyn EventHandler>) -> anyhow::Result<()> {
        super::register_consumer(handler.name());
        InMemoryBus::subscribe(self, handler);
        Ok(())
    }

    fn background_tasks(&self) -> Vec<BackgroundTask> {
        Vec::new()
    }

    async fn ready(&self) -> anyhow::Result<()> {
        Ok(())
    }

    fn delivery_policy(&self) -> DeliveryPolicy {
        self.policy
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::Recorder;

    fn recorder(name: &'static str, fail: bool) -> Arc<Recorder> {
        let recorder = Recorder::of("order").named(name);
        Arc::new(if fail {
            recorder.failing_first(usize::MAX)
        } else {
            recorder
        })
    }

    /// A bus with `subscribers` on it, in that order.
    fn bus_with(subscribers: &[&Arc<Recorder>]) -> InMemoryBus {
        let bus = InMemoryBus::new();
        for subscriber in subscribers {
            bus.subscribe(Arc::clone(subscriber) as Arc<dyn EventHandler>);
        }
        bus
    }

    fn seen(r: &Recorder) -> Vec<String> {
        r.events().into_iter().map(|e| e.event_type).collect()
    }

    #[tokio::test]
    async fn publish_reaches_every_interested_subscriber() {
        let (a, b) = (recorder("a", false), recorder("b", false));
        let bus = bus_with(&[&a, &b]);
        let e = EventEnvelope::new(
            "order.placed.v1",
            "order",
            "req-1",
            &serde_json::json!({"x": 1}),
        );
        assert!(bus.publish(&e.unwrap()).await.is_ok());
        let other = EventEnvelope::new("payment.succeeded.v1", "payment", "req-2", &1);
        assert!(bus.publish(&other.unwrap()).await.is_ok());
        assert_eq!(seen(&a), vec!["order.placed.v1"]);
        assert_eq!(seen(&b), vec!["order.placed.v1"]);
    }

    #[tokio::test]
    async fn one_failing_subscriber_fails_the_publish_but_the_others_still_get_it() {
        let (bad, good) = (recorder("bad", true), recorder("good", false));
        let bus = bus_with(&[&bad, &good]);
        let e = EventEnvelope::new("order.placed.v1", "order", "req-1", &1).unwrap();
        let err = bus.publish(&e).await;
        assert!(
            matches!(err, Err(PublishError::HandlerFailed { ref handler, .. }) if handler == "bad")
        );
        assert_eq!(seen(&good).len(), 1);
    }

    #[test]
    fn a_delivery_after_a_failed_one_is_a_redelivery() {
        let bus = InMemoryBus::new();
        let id = Uuid::now_v7();
        assert!(!bus.note("a", id, true), "the first failure");
        assert!(bus.note("a", id, true), "failed again: a redelivery");
        assert!(bus.note("a", id, false), "succeeded on redelivery");
        assert!(!bus.note("a", id, false), "forgotten once it succeeded");
    }
}
