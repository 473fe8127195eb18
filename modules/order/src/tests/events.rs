//! What the order module publishes is exactly the payload its consumers read:
//! each `order.*.v1` payload serialises to its fixture in `docs/events/`.

use crate::domain::models::{OrderId, OrderLine, OrderStatus, Sku};
use crate::events::OrderEventPayload;

fn fixture(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

fn payload(
    id: &str,
    email: Option<&str>,
    status: OrderStatus,
    payment: Option<&str>,
    reason: Option<&str>,
) -> serde_json::Value {
    serde_json::to_value(OrderEventPayload {
        order_id: OrderId::parse(id).unwrap(),
        customer_id: "alice".into(),
        customer_email: email.map(str::to_owned),
        status,
        items: vec![OrderLine {
            sku: Sku::parse("MUG").unwrap(),
            quantity: 2,
            unit_price_minor: 850,
            line_total_minor: 1700,
        }],
        total_minor: 1700,
        currency: "EUR".into(),
        payment_id: payment.map(str::to_owned),
        reason: reason.map(str::to_owned),
    })
    .unwrap()
}

#[test]
fn order_event_payloads_serialise_to_their_fixtures() {
    assert_eq!(
        payload(
            "01936f0e-7c4a-7b1e-9f0a-3c5d2e8b4a61",
            Some("alice@example.com"),
            OrderStatus::Confirmed,
            Some("01936f0e-7c4a-7b1e-9f0a-3c5d2e8b4a62"),
            None
        ),
        fixture(include_str!(
            "../../../../docs/events/order.confirmed.v1.json"
        ))
    );
    assert_eq!(
        payload(
            "01936f0e-7c4a-7b1e-9f0a-3c5d2e8b4a63",
            Some("alice@example.com"),
            OrderStatus::Rejected,
            None,
            Some("out of stock: MUG")
        ),
        fixture(include_str!(
            "../../../../docs/events/order.rejected.v1.json"
        ))
    );
    assert_eq!(
        payload(
            "01936f0e-7c4a-7b1e-9f0a-3c5d2e8b4a64",
            None,
            OrderStatus::Cancelled,
            Some("01936f0e-7c4a-7b1e-9f0a-3c5d2e8b4a65"),
            Some("changed my mind")
        ),
        fixture(include_str!(
            "../../../../docs/events/order.cancelled.v1.json"
        ))
    );
}
