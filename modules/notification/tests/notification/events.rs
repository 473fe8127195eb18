//! From event to delivery through the module's public face: the bus handler
//! (inbox dedup, preferences, contacts) and the delivery worker's retries,
//! with a scripted channel in place of the providers.

use std::time::Duration;

use agora_notification::domain::models::{
    AttemptOutcome, Channel, ChannelChoice, Phone, Preferences, Status,
};
use agora_notification::domain::ports::DeliveryError;
use uuid::Uuid;

const DEAD: &str = "agora_notifications_dead_total{channel=email}";

use crate::helpers::{
    Backend, FakeChannel, TestModule, all, counter, customer, eventually, order_event,
    refund_event, staff,
};

async fn a_duplicate_event_creates_one_notification_on(backend: Backend) {
    let fake = FakeChannel::new();
    let Some(m) = TestModule::with_channels(backend, fake.channels(), |_| {}).await else {
        return;
    };
    let event = order_event("order.confirmed.v1", "alice", Some("alice@example.com"));
    m.publish(&event).await;
    m.publish(&event).await;
    let items = m.store().list(&all()).await.unwrap();
    assert_eq!(items.len(), 1, "one e-mail notification, once");
    let n = &items[0];
    assert_eq!(n.event_id, event.id);
    assert_eq!(n.channel, Channel::Email);
    assert_eq!(n.status, Status::Pending);
    assert_eq!(n.recipient.as_deref(), Some("alice@example.com"));
    assert_eq!(n.template.as_str(), "order_confirmed");
}

#[tokio::test]
async fn a_duplicate_event_creates_one_notification() {
    a_duplicate_event_creates_one_notification_on(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_duplicate_event_creates_one_notification_on_postgres() {
    a_duplicate_event_creates_one_notification_on(Backend::Postgres).await;
}

#[tokio::test]
async fn turning_email_off_in_preferences_makes_the_email_skipped() {
    let fake = FakeChannel::new();
    let mut m = TestModule::with_fake(&fake).await;
    let service = m.module.service();
    let mut prefs = Preferences::defaults("alice");
    prefs.channels = ChannelChoice {
        email: false,
        sms: false,
        push: false,
    };
    service
        .put_preferences(&customer("alice"), prefs)
        .await
        .unwrap();
    m.start_worker();

    m.publish_order("order.shipped.v1", Uuid::now_v7(), "alice")
        .await;
    let items = m.store().list(&all()).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].status, Status::Skipped);
    assert_eq!(
        items[0].last_error.as_deref(),
        Some("the customer turned email notifications off")
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(fake.calls().is_empty(), "nothing is delivered");
    assert_eq!(
        m.store().get(items[0].id).await.unwrap().unwrap().status,
        Status::Skipped
    );
}

#[tokio::test]
async fn a_refund_uses_the_address_remembered_from_order_events_or_is_skipped_without_one() {
    let fake = FakeChannel::new();
    let m = TestModule::with_fake(&fake).await;
    let order_id = Uuid::now_v7();
    m.publish(&refund_event("bob", order_id)).await;
    m.publish_order("order.cancelled.v1", order_id, "bob").await;
    m.publish(&refund_event("bob", order_id)).await;
    let mut items = m.store().list(&all()).await.unwrap();
    items.reverse();
    let summary: Vec<_> = items
        .iter()
        .map(|n| (n.template.as_str(), n.status, n.recipient.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("payment_refunded", Status::Skipped, None),
            (
                "order_cancelled",
                Status::Pending,
                Some("bob@example.com".into())
            ),
            (
                "payment_refunded",
                Status::Pending,
                Some("bob@example.com".into())
            ),
        ]
    );
    assert_eq!(
        items[0].last_error.as_deref(),
        Some("no email address is known for the customer")
    );
    assert!(
        items[2]
            .subject
            .as_deref()
            .unwrap()
            .starts_with("Refund of 29.99 EUR")
    );
}

#[tokio::test]
async fn a_preference_email_overrides_the_event_and_sms_goes_to_the_phone() {
    let fake = FakeChannel::new();
    let mut m = TestModule::with_fake(&fake).await;
    let mut prefs = Preferences::defaults("carol");
    prefs.email =
        Some(agora_notification::domain::models::Email::parse("carol@pref.example").unwrap());
    prefs.phone = Some(Phone::parse("+4915123456789").unwrap());
    prefs.channels.sms = true;
    m.module
        .service()
        .put_preferences(&customer("carol"), prefs)
        .await
        .unwrap();
    m.start_worker();
    m.publish(&order_event(
        "order.delivered.v1",
        "carol",
        Some("carol@event.example"),
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async { fake.calls().len() == 2 }).await,
        "both channels delivered"
    );
    let mut sent: Vec<_> = fake
        .calls()
        .iter()
        .map(|m| (m.channel, m.recipient.clone()))
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        vec![
            (Channel::Email, "carol@pref.example".to_owned()),
            (Channel::Sms, "+4915123456789".to_owned())
        ]
    );
    let store = m.store();
    assert!(
        eventually(Duration::from_secs(5), || async {
            store
                .list(&all())
                .await
                .unwrap()
                .iter()
                .all(|n| n.status == Status::Sent)
        })
        .await
    );
}

#[tokio::test]
async fn transient_failures_are_retried_until_max_attempts_then_dead_and_counted() {
    let fake =
        FakeChannel::new().always(Err(DeliveryError::Transient("connection refused".into())));
    let mut m = TestModule::with_channels(Backend::Sqlite, fake.channels(), |s| s.max_attempts = 3)
        .await
        .unwrap();
    let dead_before = counter(DEAD);
    m.start_worker();
    m.publish_order("order.confirmed.v1", Uuid::now_v7(), "alice")
        .await;
    assert!(
        m.newest_reaches(Status::Dead, Duration::from_secs(10))
            .await,
        "dead after the last attempt"
    );
    let n = m.newest().await;
    let store = m.store();
    assert_eq!(n.attempts, 3);
    assert_eq!(fake.calls().len(), 3);
    let attempts = store.attempts(n.id).await.unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a.outcome == AttemptOutcome::Failed));
    assert!(
        attempts[2]
            .error
            .as_deref()
            .unwrap()
            .contains("gave up after 3 attempts")
    );
    assert!(attempts[0].attempted_at < attempts[1].attempted_at);
    assert!(
        counter(DEAD) > dead_before,
        "the dead notification is counted"
    );
}

#[tokio::test]
async fn a_permanent_failure_is_dead_at_once_and_a_staff_retry_delivers_it() {
    let fake = FakeChannel::new().then(vec![Err(DeliveryError::Permanent(
        "550 mailbox unavailable".into(),
    ))]);
    let mut m = TestModule::with_fake(&fake).await;
    m.start_worker();
    m.publish_order("order.rejected.v1", Uuid::now_v7(), "alice")
        .await;
    assert!(m.newest_reaches(Status::Dead, Duration::from_secs(5)).await);
    let n = m.newest().await;
    assert_eq!(n.attempts, 1);
    assert_eq!(n.last_error.as_deref(), Some("550 mailbox unavailable"));

    let service = m.module.service();
    assert!(
        service.retry(&customer("alice"), n.id).await.is_err(),
        "staff only"
    );
    let back = service.retry(&staff(), n.id).await.unwrap();
    let store = m.store();
    assert_eq!(back.status, Status::Pending);
    assert!(
        eventually(Duration::from_secs(5), || async {
            store.get(n.id).await.unwrap().unwrap().status == Status::Sent
        })
        .await
    );
    let attempts = store.attempts(n.id).await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.outcome).collect::<Vec<_>>(),
        vec![AttemptOutcome::Rejected, AttemptOutcome::Sent]
    );
}

#[tokio::test]
async fn a_payload_the_module_cannot_read_is_dropped_without_failing_the_bus() {
    let fake = FakeChannel::new();
    let m = TestModule::with_fake(&fake).await;
    let bad = agora_kernel::EventEnvelope::new(
        "order.confirmed.v1",
        "order",
        "req",
        &serde_json::json!({"order_id": "not-a-uuid"}),
    )
    .unwrap();
    m.publish(&bad).await;
    assert!(m.store().list(&all()).await.unwrap().is_empty());
}
