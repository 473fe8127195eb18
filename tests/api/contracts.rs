//! Event contracts across modules: every publisher's payload, as it
//! serialises, is readable by every consumer's own type (consumers never use
//! the publisher's types).

use agora_notification::domain::models::{
    OrderEventPayload as NotificationOrderView, PaymentRefundedPayload as NotificationRefundView,
};
use agora_order::domain::models::{OrderId, OrderLine, OrderStatus, Sku};

#[test]
fn order_events_read_as_the_notification_module_expects() {
    for (status, payment_id, reason) in [
        (OrderStatus::Confirmed, Some("pay-1".to_owned()), None),
        (
            OrderStatus::Rejected,
            None,
            Some("out of stock: MUG".to_owned()),
        ),
        (
            OrderStatus::Cancelled,
            Some("pay-2".to_owned()),
            Some("changed my mind".to_owned()),
        ),
    ] {
        let published = agora_order::OrderEventPayload {
            order_id: OrderId::new(),
            customer_id: "alice".into(),
            customer_email: Some("alice@example.com".into()),
            status,
            items: vec![OrderLine {
                sku: Sku::parse("MUG").unwrap(),
                quantity: 2,
                unit_price_minor: 850,
                line_total_minor: 1700,
            }],
            total_minor: 1700,
            currency: "EUR".into(),
            payment_id,
            reason: reason.clone(),
        };
        let wire = serde_json::to_value(&published).unwrap();
        let seen: NotificationOrderView = serde_json::from_value(wire).unwrap();
        assert_eq!(seen.order_id, published.order_id.as_uuid());
        assert_eq!(seen.status, status.as_str());
        assert_eq!(seen.customer_email.as_deref(), Some("alice@example.com"));
        assert_eq!(seen.items[0].line_total_minor, 1700);
        assert_eq!(
            (seen.total_minor, seen.currency.as_str(), seen.reason),
            (1700, "EUR", reason)
        );
    }
}

#[test]
fn payment_refunds_read_as_the_notification_module_expects() {
    let published = agora_payment::events::PaymentRefunded {
        payment_id: uuid::Uuid::now_v7(),
        refund_id: uuid::Uuid::now_v7(),
        order_id: uuid::Uuid::now_v7(),
        customer_id: "alice".into(),
        amount_minor: 1700,
        refunded_minor: 1700,
        refund_amount_minor: 1700,
        currency: "EUR".into(),
        payment_status: "refunded".into(),
        reason: None,
    };
    let seen: NotificationRefundView =
        serde_json::from_value(serde_json::to_value(&published).unwrap()).unwrap();
    assert_eq!(
        (seen.payment_id, seen.order_id),
        (published.payment_id, published.order_id)
    );
    assert_eq!(
        (
            seen.amount_minor,
            seen.refunded_minor,
            seen.currency.as_str()
        ),
        (1700, 1700, "EUR")
    );
}
