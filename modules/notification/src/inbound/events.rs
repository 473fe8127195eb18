//! The event consumer: subscribes to the order and payment events this module
//! turns into notifications. It only writes rows (inbox + notifications +
//! contacts, one transaction); delivery happens in the worker.

use std::sync::Arc;

use agora_kernel::{EventEnvelope, EventHandler};
use async_trait::async_trait;

use crate::domain::models::Template;
use crate::domain::service::{CONSUMER, NotificationService};

/// The event types this module consumes (its tests hold `handles` and the
/// templates to this list).
#[cfg(test)]
const CONSUMED: [&str; 7] = [
    "order.confirmed.v1",
    "order.payment_failed.v1",
    "order.rejected.v1",
    "order.cancelled.v1",
    "order.shipped.v1",
    "order.delivered.v1",
    "payment.refunded.v1",
];

/// The publishing modules of those events.
pub const SOURCES: [&str; 2] = ["order", "payment"];

/// The bus subscriber.
pub struct NotificationEvents {
    service: Arc<NotificationService>,
}

impl NotificationEvents {
    pub fn new(service: Arc<NotificationService>) -> Self {
        Self { service }
    }
}

#[async_trait]
impl EventHandler for NotificationEvents {
    fn name(&self) -> &str {
        CONSUMER
    }

    fn sources(&self) -> &[&str] {
        &SOURCES
    }

    fn handles(&self, event_type: &str) -> bool {
        Template::for_event_type(event_type).is_some()
    }

    async fn handle(&self, event: &EventEnvelope) -> anyhow::Result<()> {
        self.service.handle_event(event).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumed_list_matches_the_templates() {
        for t in CONSUMED {
            assert!(Template::for_event_type(t).is_some(), "{t}");
        }
        assert_eq!(CONSUMED.len(), Template::ALL.len());
        for t in CONSUMED {
            let source = t.split('.').next().unwrap_or_default();
            assert!(SOURCES.contains(&source), "{t} comes from a listed source");
        }
    }
}
