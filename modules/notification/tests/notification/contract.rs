//! The store contract: one set of async test functions, run against SQLite and
//! PostgreSQL (skipped with a message when PostgreSQL is unreachable outside CI).

use std::time::Duration;

use agora_notification::domain::models::{
    Attempt, AttemptOutcome, AttemptResult, Channel, ChannelChoice, Email, EventRef, ListFilter,
    Notification, NotificationId, Phone, Preferences, RenderedMessage, Status, Template,
};
use agora_notification::domain::ports::{NotificationStore, RetryError};
use chrono::{Duration as ChronoDuration, Utc};
use uuid::Uuid;

fn event() -> EventRef {
    EventRef {
        id: Uuid::now_v7(),
        event_type: "order.confirmed.v1".into(),
        correlation_id: "req-1".into(),
    }
}

fn note(
    event: &EventRef,
    customer: &str,
    channel: Channel,
    recipient: Option<&str>,
) -> Notification {
    let skip = recipient.is_none().then(|| "no address".to_owned());
    Notification::new(
        event,
        customer,
        channel,
        Template::OrderConfirmed,
        recipient.map(str::to_owned),
        RenderedMessage {
            subject: Some("Your order is confirmed".into()),
            text: "text body".into(),
            html: Some("<p>html</p>".into()),
        },
        skip,
        Utc::now(),
    )
}

fn filter() -> ListFilter {
    ListFilter {
        limit: 100,
        ..ListFilter::default()
    }
}

async fn ingest_one(
    store: &dyn NotificationStore,
    customer: &str,
    channel: Channel,
) -> Notification {
    let e = event();
    let n = note(&e, customer, channel, Some("x@example.com"));
    assert!(
        store
            .ingest("notification", e.id, None, std::slice::from_ref(&n))
            .await
            .unwrap()
    );
    n
}

fn result(n: &Notification, outcome: AttemptOutcome, status: Status) -> AttemptResult {
    AttemptResult {
        attempt: Attempt {
            number: n.attempts + 1,
            attempted_at: Utc::now(),
            outcome,
            error: (outcome != AttemptOutcome::Sent).then(|| "451 try again".to_owned()),
        },
        new_status: status,
        next_attempt_at: (status == Status::Retrying)
            .then(|| Utc::now() - ChronoDuration::seconds(1)),
    }
}

/// Record the next attempt on `n` (numbered after `n.attempts`, as the worker
/// numbers it from the copy it holds); whether the store took it.
async fn record(
    store: &dyn NotificationStore,
    n: &Notification,
    outcome: AttemptOutcome,
    status: Status,
) -> bool {
    store
        .record_attempt(n.id, &result(n, outcome, status))
        .await
        .unwrap()
}

pub async fn an_event_is_ingested_once_with_its_notifications(store: &dyn NotificationStore) {
    let e = event();
    let notes = vec![
        note(&e, "alice", Channel::Email, Some("alice@example.com")),
        note(&e, "alice", Channel::Sms, None),
    ];
    assert!(
        store
            .ingest(
                "notification",
                e.id,
                Some(("alice", "alice@example.com")),
                &notes
            )
            .await
            .unwrap()
    );
    let again = vec![note(&e, "alice", Channel::Email, Some("alice@example.com"))];
    assert!(
        !store
            .ingest("notification", e.id, None, &again)
            .await
            .unwrap(),
        "a duplicate is refused"
    );
    let all = store.list(&filter()).await.unwrap();
    assert_eq!(all.len(), 2);
    let email = store.get(notes[0].id).await.unwrap().unwrap();
    assert_eq!(
        email,
        notes[0].clone(),
        "a notification reads back as written"
    );
    let sms = store.get(notes[1].id).await.unwrap().unwrap();
    assert_eq!(sms.status, Status::Skipped);
    assert_eq!(sms.recipient, None);
    assert_eq!(
        store.contact_email("alice").await.unwrap().as_deref(),
        Some("alice@example.com")
    );
}

pub async fn a_failed_ingest_writes_nothing(store: &dyn NotificationStore) {
    let e = event();
    let n = note(&e, "alice", Channel::Email, Some("alice@example.com"));
    // The same notification twice violates the (event, channel) key: the whole
    // transaction, inbox row included, rolls back.
    let err = store
        .ingest(
            "notification",
            e.id,
            Some(("alice", "a@example.com")),
            &[n.clone(), n],
        )
        .await;
    assert!(err.is_err());
    assert!(store.list(&filter()).await.unwrap().is_empty());
    assert_eq!(store.contact_email("alice").await.unwrap(), None);
    let n = note(&e, "alice", Channel::Email, Some("alice@example.com"));
    assert!(
        store
            .ingest("notification", e.id, None, &[n])
            .await
            .unwrap(),
        "the event can be handled again"
    );
}

pub async fn contacts_keep_the_latest_address(store: &dyn NotificationStore) {
    assert_eq!(store.contact_email("bob").await.unwrap(), None);
    for email in ["bob@old.example", "bob@new.example"] {
        let e = event();
        store
            .ingest("notification", e.id, Some(("bob", email)), &[])
            .await
            .unwrap();
    }
    assert_eq!(
        store.contact_email("bob").await.unwrap().as_deref(),
        Some("bob@new.example")
    );
}

pub async fn preferences_are_created_and_replaced(store: &dyn NotificationStore) {
    assert_eq!(store.preferences("carol").await.unwrap(), None);
    let mut p = Preferences::defaults("carol");
    p.email = Some(Email::parse("carol@example.com").unwrap());
    p.phone = Some(Phone::parse("+4915123456789").unwrap());
    p.channels = ChannelChoice {
        email: false,
        sms: true,
        push: false,
    };
    store.put_preferences(&p, Utc::now()).await.unwrap();
    assert_eq!(store.preferences("carol").await.unwrap(), Some(p.clone()));
    let replaced = Preferences::defaults("carol");
    store.put_preferences(&replaced, Utc::now()).await.unwrap();
    assert_eq!(store.preferences("carol").await.unwrap(), Some(replaced));
}

pub async fn listing_filters_and_pages_newest_first(store: &dyn NotificationStore) {
    let a1 = ingest_one(store, "alice", Channel::Email).await;
    let b1 = ingest_one(store, "bob", Channel::Sms).await;
    let a2 = ingest_one(store, "alice", Channel::Push).await;
    let a3 = ingest_one(store, "alice", Channel::Email).await;
    record(store, &a3, AttemptOutcome::Sent, Status::Sent).await;

    let ids = |v: Vec<Notification>| v.into_iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list(&filter()).await.unwrap()),
        vec![a3.id, a2.id, b1.id, a1.id]
    );
    let alice = ListFilter {
        customer_id: Some("alice".into()),
        ..filter()
    };
    assert_eq!(
        ids(store.list(&alice).await.unwrap()),
        vec![a3.id, a2.id, a1.id]
    );
    let email = ListFilter {
        channel: Some(Channel::Email),
        ..alice.clone()
    };
    assert_eq!(ids(store.list(&email).await.unwrap()), vec![a3.id, a1.id]);
    let sent = ListFilter {
        status: Some(Status::Sent),
        ..filter()
    };
    assert_eq!(ids(store.list(&sent).await.unwrap()), vec![a3.id]);
    let page1 = ListFilter {
        limit: 2,
        ..alice.clone()
    };
    assert_eq!(ids(store.list(&page1).await.unwrap()), vec![a3.id, a2.id]);
    let page2 = ListFilter {
        before: Some(a2.id),
        limit: 2,
        ..alice
    };
    assert_eq!(ids(store.list(&page2).await.unwrap()), vec![a1.id]);
}

pub async fn due_notifications_are_claimed_once_per_lease(store: &dyn NotificationStore) {
    let e = event();
    let due = note(&e, "alice", Channel::Email, Some("alice@example.com"));
    let skipped = note(&e, "alice", Channel::Sms, None);
    let mut later = note(&event(), "alice", Channel::Email, Some("alice@example.com"));
    later.next_attempt_at = Some(Utc::now() + ChronoDuration::hours(1));
    store
        .ingest("notification", e.id, None, &[due.clone(), skipped])
        .await
        .unwrap();
    store
        .ingest("notification", later.event_id, None, &[later])
        .await
        .unwrap();

    let lease = Duration::from_secs(60);
    let claimed = store.claim_due(Utc::now(), lease, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![due.id]
    );
    assert!(
        store
            .claim_due(Utc::now(), lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    let after_lease = Utc::now() + ChronoDuration::seconds(61);
    assert_eq!(
        store.claim_due(after_lease, lease, 1).await.unwrap().len(),
        1,
        "a lost claim runs out"
    );
}

pub async fn attempts_are_recorded_and_move_the_status(store: &dyn NotificationStore) {
    let n = ingest_one(store, "alice", Channel::Email).await;
    assert!(record(store, &n, AttemptOutcome::Failed, Status::Retrying).await);
    let n1 = store.get(n.id).await.unwrap().unwrap();
    assert_eq!((n1.status, n1.attempts), (Status::Retrying, 1));
    assert_eq!(n1.last_error.as_deref(), Some("451 try again"));
    assert!(
        !record(store, &n, AttemptOutcome::Sent, Status::Sent).await,
        "a stale attempt changes nothing"
    );
    assert!(record(store, &n1, AttemptOutcome::Sent, Status::Sent).await);
    let n2 = store.get(n.id).await.unwrap().unwrap();
    assert_eq!((n2.status, n2.attempts), (Status::Sent, 2));
    assert!(n2.sent_at.is_some());
    assert_eq!(n2.next_attempt_at, None);
    let attempts = store.attempts(n.id).await.unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.number, a.outcome))
            .collect::<Vec<_>>(),
        vec![(1, AttemptOutcome::Failed), (2, AttemptOutcome::Sent)]
    );
    assert_eq!(attempts[0].error.as_deref(), Some("451 try again"));
    assert!(
        !record(store, &n2, AttemptOutcome::Sent, Status::Sent).await,
        "a sent notification is final"
    );
}

pub async fn only_a_dead_notification_can_be_retried(store: &dyn NotificationStore) {
    assert!(matches!(
        store.retry(NotificationId::new(), Utc::now()).await,
        Err(RetryError::NotFound)
    ));
    let n = ingest_one(store, "alice", Channel::Email).await;
    assert!(matches!(
        store.retry(n.id, Utc::now()).await,
        Err(RetryError::NotDead(Status::Pending))
    ));
    record(store, &n, AttemptOutcome::Rejected, Status::Dead).await;
    let back = store.retry(n.id, Utc::now()).await.unwrap();
    assert_eq!(back.status, Status::Pending);
    assert_eq!(
        (back.attempts, back.round_start),
        (1, 1),
        "a new round of attempts"
    );
    assert_eq!(
        store
            .claim_due(Utc::now(), Duration::from_secs(60), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let counts = store.count_by_status().await.unwrap();
    assert_eq!(counts, vec![("pending".to_owned(), 1)]);
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let s = crate::helpers::TestStore::start(crate::helpers::Backend::Sqlite).await.unwrap();
                    super::$name(s.store.as_ref()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(s) = crate::helpers::TestStore::start(crate::helpers::Backend::Postgres).await else { return };
                    super::$name(s.store.as_ref()).await;
                    s.db.close().await;
                }
            )*
        }
    };
}

contract!(
    an_event_is_ingested_once_with_its_notifications,
    a_failed_ingest_writes_nothing,
    contacts_keep_the_latest_address,
    preferences_are_created_and_replaced,
    listing_filters_and_pages_newest_first,
    due_notifications_are_claimed_once_per_lease,
    attempts_are_recorded_and_move_the_status,
    only_a_dead_notification_can_be_retried,
);
