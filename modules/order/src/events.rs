//! The integration events the order module publishes through its outbox, one
//! per status change that others act on, and their payload. Consumers keep
//! their own copies of this shape (see `docs/events.md`); this is the
//! publisher's.

use agora_kernel::EventEnvelope;
use serde::Serialize;

use crate::domain::models::{Order, OrderId, OrderLine, OrderStatus};

pub const PLACED: &str = "order.placed.v1";
pub const CONFIRMED: &str = "order.confirmed.v1";
pub const REJECTED: &str = "order.rejected.v1";
pub const PAYMENT_FAILED: &str = "order.payment_failed.v1";
pub const CANCELLED: &str = "order.cancelled.v1";
pub const SHIPPED: &str = "order.shipped.v1";
pub const DELIVERED: &str = "order.delivered.v1";

/// The payload of every `order.*.v1` event.
#[derive(Debug, Clone, Serialize)]
pub struct OrderEventPayload {
    pub order_id: OrderId,
    pub customer_id: String,
    pub customer_email: Option<String>,
    pub status: OrderStatus,
    pub items: Vec<OrderLine>,
    pub total_minor: i64,
    pub currency: String,
    pub payment_id: Option<String>,
    pub reason: Option<String>,
}

/// The event a change to `status` publishes, if any (`awaiting_payment` is
/// internal to the saga).
pub fn type_of(status: OrderStatus) -> Option<&'static str> {
    match status {
        OrderStatus::Pending => Some(PLACED),
        OrderStatus::AwaitingPayment => None,
        OrderStatus::Confirmed => Some(CONFIRMED),
        OrderStatus::Rejected => Some(REJECTED),
        OrderStatus::PaymentFailed => Some(PAYMENT_FAILED),
        OrderStatus::Cancelled => Some(CANCELLED),
        OrderStatus::Shipped => Some(SHIPPED),
        OrderStatus::Delivered => Some(DELIVERED),
    }
}

/// The envelope of `event_type` for `order` as it is now.
///
/// # Errors
/// The payload cannot be serialised.
pub fn envelope(
    order: &Order,
    event_type: &str,
    correlation_id: &str,
    reason: Option<&str>,
) -> anyhow::Result<EventEnvelope> {
    let payload = OrderEventPayload {
        order_id: order.id,
        customer_id: order.customer_id.clone(),
        customer_email: order.customer_email.clone(),
        status: order.status,
        items: order.items.clone(),
        total_minor: order.total.minor(),
        currency: order.total.currency().to_string(),
        payment_id: order.payment_id.as_ref().map(|p| p.as_str().to_owned()),
        reason: reason.map(str::to_owned),
    };
    EventEnvelope::publishable(event_type, crate::NAME, correlation_id, &payload)
}
