//! The integration events the payment module publishes through its outbox:
//! `payment.succeeded.v1`, `payment.failed.v1` and `payment.refunded.v1`.
//!
//! Consumers own their own deserialisation types; these are the publisher's.

use agora_kernel::EventEnvelope;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::models::{Payment, Refund};

pub const PAYMENT_SUCCEEDED: &str = "payment.succeeded.v1";
pub const PAYMENT_FAILED: &str = "payment.failed.v1";
pub const PAYMENT_REFUNDED: &str = "payment.refunded.v1";

/// `payment.succeeded.v1`: the order's money was captured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub provider: String,
    pub provider_ref: Option<String>,
}

/// `payment.failed.v1`: the provider declined the charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// The provider's decline code, e.g. `card_declined`, `insufficient_funds`.
    pub failure_code: String,
}

/// `payment.refunded.v1`: (part of) a payment was given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub payment_id: Uuid,
    pub refund_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    /// The payment's amount (as in the payment's JSON).
    pub amount_minor: i64,
    /// All succeeded refunds of the payment so far, this one included.
    pub refunded_minor: i64,
    /// This refund's amount.
    pub refund_amount_minor: i64,
    pub currency: String,
    /// `partially_refunded` or `refunded`.
    pub payment_status: String,
    pub reason: Option<String>,
}

/// The event a finished charge publishes.
///
/// # Errors
/// Serialisation failures.
pub fn charge_finished(p: &Payment, correlation_id: &str) -> anyhow::Result<EventEnvelope> {
    match &p.failure_code {
        None => EventEnvelope::publishable(
            PAYMENT_SUCCEEDED,
            crate::NAME,
            correlation_id,
            &PaymentSucceeded {
                payment_id: p.id.as_uuid(),
                order_id: p.order_id.as_uuid(),
                customer_id: p.customer_id.as_str().to_owned(),
                amount_minor: p.amount.minor(),
                currency: p.currency().code().to_owned(),
                provider: p.provider.clone(),
                provider_ref: p.provider_ref.clone(),
            },
        ),
        Some(code) => EventEnvelope::publishable(
            PAYMENT_FAILED,
            crate::NAME,
            correlation_id,
            &PaymentFailed {
                payment_id: p.id.as_uuid(),
                order_id: p.order_id.as_uuid(),
                customer_id: p.customer_id.as_str().to_owned(),
                amount_minor: p.amount.minor(),
                currency: p.currency().code().to_owned(),
                failure_code: code.clone(),
            },
        ),
    }
}

/// The event a succeeded refund publishes.
///
/// # Errors
/// Serialisation failures.
pub fn refunded(p: &Payment, r: &Refund, correlation_id: &str) -> anyhow::Result<EventEnvelope> {
    EventEnvelope::publishable(
        PAYMENT_REFUNDED,
        crate::NAME,
        correlation_id,
        &PaymentRefunded {
            payment_id: p.id.as_uuid(),
            refund_id: r.id.as_uuid(),
            order_id: p.order_id.as_uuid(),
            customer_id: p.customer_id.as_str().to_owned(),
            amount_minor: p.amount.minor(),
            refunded_minor: p.refunded_minor,
            refund_amount_minor: r.amount.minor(),
            currency: p.currency().code().to_owned(),
            payment_status: p.status.as_str().to_owned(),
            reason: r.reason.clone(),
        },
    )
}

#[cfg(test)]
mod fixtures {
    use super::*;

    /// What payment publishes is exactly the payload its consumers read.
    #[test]
    fn the_refund_payload_serialises_to_its_fixture() {
        let id = |s: &str| Uuid::parse_str(s).unwrap_or_default();
        let published = PaymentRefunded {
            payment_id: id("01936f0e-7c4a-7b1e-9f0a-3c5d2e8b4a65"),
            refund_id: id("01936f0e-7c4a-7b1e-9f0a-3c5d2e8b4a66"),
            order_id: id("01936f0e-7c4a-7b1e-9f0a-3c5d2e8b4a64"),
            customer_id: "alice".into(),
            amount_minor: 1700,
            refunded_minor: 1700,
            refund_amount_minor: 1700,
            currency: "EUR".into(),
            payment_status: "refunded".into(),
            reason: None,
        };
        let fixture: serde_json::Value = serde_json::from_str(include_str!(
            "../../../docs/events/payment.refunded.v1.json"
        ))
        .unwrap_or_default();
        assert_eq!(serde_json::to_value(&published).ok(), Some(fixture));
    }
}
