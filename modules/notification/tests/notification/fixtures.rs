//! The notification module reads the published payloads — their fixtures in
//! `docs/events/`, never the publishers' types — as it expects to.

use agora_notification::domain::models::{OrderEventPayload, PaymentRefundedPayload};

fn read<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_json::from_str(text).unwrap()
}

#[test]
fn order_event_fixtures_read_as_the_notification_module_expects() {
    let confirmed: OrderEventPayload = read(include_str!(
        "../../../../docs/events/order.confirmed.v1.json"
    ));
    assert_eq!(
        confirmed.order_id.to_string(),
        "01936f0e-7c4a-7b1e-9f0a-3c5d2e8b4a61"
    );
    assert_eq!(confirmed.status, "confirmed");
    assert_eq!(
        confirmed.customer_email.as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(confirmed.items[0].line_total_minor, 1700);
    assert_eq!(
        (
            confirmed.total_minor,
            confirmed.currency.as_str(),
            confirmed.reason
        ),
        (1700, "EUR", None)
    );

    let rejected: OrderEventPayload = read(include_str!(
        "../../../../docs/events/order.rejected.v1.json"
    ));
    assert_eq!(rejected.status, "rejected");
    assert_eq!(rejected.reason.as_deref(), Some("out of stock: MUG"));

    let cancelled: OrderEventPayload = read(include_str!(
        "../../../../docs/events/order.cancelled.v1.json"
    ));
    assert_eq!(cancelled.status, "cancelled");
    assert_eq!(cancelled.customer_email, None);
    assert_eq!(cancelled.reason.as_deref(), Some("changed my mind"));
}

#[test]
fn the_refund_fixture_reads_as_the_notification_module_expects() {
    let seen: PaymentRefundedPayload = read(include_str!(
        "../../../../docs/events/payment.refunded.v1.json"
    ));
    assert_eq!(
        (seen.payment_id.to_string(), seen.order_id.to_string()),
        (
            "01936f0e-7c4a-7b1e-9f0a-3c5d2e8b4a65".to_owned(),
            "01936f0e-7c4a-7b1e-9f0a-3c5d2e8b4a64".to_owned()
        )
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
