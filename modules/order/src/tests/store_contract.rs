//! One contract, every backend: the same test functions run against SQLite and
//! PostgreSQL.

use std::sync::Arc;

use agora_kernel::EventEnvelope;
use chrono::{DateTime, Duration as Span, Utc};

use super::fakes::eur;
use crate::domain::models::{Order, OrderFilter, OrderId, OrderLine, OrderStatus, Sku, Transition};
use crate::domain::ports::{Change, Lease, OrderStore, StoreError};

fn lease(until: chrono::DateTime<Utc>) -> Lease {
    Lease {
        owner: "test".into(),
        until,
    }
}

/// A pending order of two mugs, as `customer` places it.
fn order(customer: &str) -> Order {
    let now = Utc::now();
    let mugs = OrderLine {
        sku: Sku::parse("MUG").unwrap(),
        quantity: 2,
        unit_price_minor: 850,
        line_total_minor: 1700,
    };
    Order::placed(
        &super::customer(customer),
        super::request(&[("MUG", 2)]),
        (vec![mugs], eur(1700)),
        now,
        now + Span::minutes(15),
    )
}

fn created(o: &Order) -> Transition {
    Transition {
        from: None,
        to: OrderStatus::Pending,
        at: o.created_at,
        actor: o.customer_id.clone(),
        reason: None,
        correlation_id: "req-1".into(),
    }
}

/// Store `o` as just placed: its creation, no events, a lease already over.
async fn insert(store: &dyn OrderStore, o: &Order) {
    store
        .insert(o, &created(o), &[], &lease(Utc::now()))
        .await
        .unwrap();
}

/// An order of `customer`'s placed under idempotency `key`.
fn keyed(customer: &str, key: &str) -> Order {
    let mut o = order(customer);
    o.idempotency_key = Some(key.into());
    o
}

async fn outbox_types(db: &agora_kernel::db::SqlDatabase) -> u64 {
    db.outbox().backlog().await.unwrap()
}

async fn an_order_round_trips_with_its_history_and_event(
    store: Arc<dyn OrderStore>,
    db: &agora_kernel::db::SqlDatabase,
) {
    let o = order("alice");
    let e = EventEnvelope::new(
        "order.placed.v1",
        "order",
        "req-1",
        &serde_json::json!({"order_id": o.id}),
    )
    .unwrap();
    store
        .insert(&o, &created(&o), &[e], &lease(Utc::now()))
        .await
        .unwrap();
    let back = store.get(o.id).await.unwrap().unwrap();
    assert_eq!(back.items, o.items);
    assert_eq!(back.total, o.total);
    assert_eq!(back.shipping_address, o.shipping_address);
    assert_eq!(
        back.created_at.timestamp_millis(),
        o.created_at.timestamp_millis()
    );
    assert_eq!(
        store.history(o.id).await.unwrap(),
        vec![Transition {
            at: back.created_at,
            ..created(&o)
        }]
    );
    assert_eq!(outbox_types(db).await, 1);
    assert!(store.get(OrderId::new()).await.unwrap().is_none());
}

async fn a_change_is_a_compare_and_swap_on_version(
    store: Arc<dyn OrderStore>,
    db: &agora_kernel::db::SqlDatabase,
) {
    let o = order("alice");
    insert(&*store, &o).await;
    let t = Transition {
        from: Some(OrderStatus::Pending),
        to: OrderStatus::AwaitingPayment,
        at: Utc::now(),
        actor: "system".into(),
        reason: None,
        correlation_id: "req-2".into(),
    };
    let e = EventEnvelope::new("order.test.v1", "order", "req-2", &1).unwrap();
    let change = Change {
        status: Some((OrderStatus::AwaitingPayment, t.clone())),
        events: vec![e],
        ..Change::default()
    };
    let next = store.apply(&o, &change).await.unwrap();
    assert_eq!(
        (next.status, next.version),
        (OrderStatus::AwaitingPayment, 2)
    );
    // The same change at the old version conflicts and writes nothing.
    assert!(matches!(
        store.apply(&o, &change).await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store
            .apply(
                &Order {
                    id: OrderId::new(),
                    ..o.clone()
                },
                &change
            )
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.history(o.id).await.unwrap().len(), 2);
    assert_eq!(outbox_types(db).await, 1);
    assert_eq!(store.get(o.id).await.unwrap().unwrap().version, 2);
}

async fn listing_is_newest_first_filtered_and_paged_by_id(store: Arc<dyn OrderStore>) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let o = order(if i % 2 == 0 { "alice" } else { "bob" });
        insert(&*store, &o).await;
        ids.push(o.id);
    }
    let alice = OrderFilter {
        customer_id: Some("alice".into()),
        ..OrderFilter::default()
    };
    let page1 = store.list(&alice, None, 2).await.unwrap();
    assert_eq!(
        page1.iter().map(|o| o.id).collect::<Vec<_>>(),
        vec![ids[4], ids[2]]
    );
    // A newer order inserted between pages does not shift the next page.
    let late = order("alice");
    insert(&*store, &late).await;
    let page2 = store.list(&alice, Some(page1[1].id), 2).await.unwrap();
    assert_eq!(page2.iter().map(|o| o.id).collect::<Vec<_>>(), vec![ids[0]]);
    let all = store
        .list(&OrderFilter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
    let none = OrderFilter {
        status: Some(OrderStatus::Confirmed),
        ..OrderFilter::default()
    };
    assert!(store.list(&none, None, 100).await.unwrap().is_empty());
    let future = OrderFilter {
        created_after: Some(Utc::now() + Span::hours(1)),
        ..OrderFilter::default()
    };
    assert!(store.list(&future, None, 100).await.unwrap().is_empty());
    let past = OrderFilter {
        created_before: Some(Utc::now() + Span::hours(1)),
        ..OrderFilter::default()
    };
    assert_eq!(store.list(&past, None, 100).await.unwrap().len(), 6);
}

async fn leases_exclude_each_other_and_the_recovery_worker(store: Arc<dyn OrderStore>) {
    let o = order("alice");
    let now = Utc::now();
    store
        .insert(&o, &created(&o), &[], &lease(now + Span::seconds(30)))
        .await
        .unwrap();
    // Held by the placing request: nobody else gets it, not even the worker.
    assert!(
        !store
            .try_lease(o.id, now, &lease(now + Span::seconds(30)))
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_due(now, &lease(now + Span::seconds(30)), 10)
            .await
            .unwrap()
            .is_empty()
    );
    store.release_lease(o.id, "test").await.unwrap();
    assert_eq!(
        store
            .claim_due(now + Span::seconds(1), &lease(now + Span::seconds(30)), 10)
            .await
            .unwrap(),
        vec![o.id]
    );
    assert!(
        store
            .claim_due(now + Span::seconds(1), &lease(now + Span::seconds(30)), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // An expired lease (a crashed holder) can be taken.
    assert!(
        store
            .try_lease(
                o.id,
                now + Span::seconds(31),
                &lease(now + Span::seconds(60))
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store.count_in_status(OrderStatus::Pending).await.unwrap(),
        1
    );
}

async fn a_change_stores_an_earlier_transition_before_its_own(store: Arc<dyn OrderStore>) {
    let o = order("alice");
    insert(&*store, &o).await;
    let at =
        |ms: i64| DateTime::from_timestamp_millis(o.created_at.timestamp_millis() + ms).unwrap();
    let step = |from, to, ms| Transition {
        from: Some(from),
        to,
        at: at(ms),
        actor: "system".into(),
        reason: None,
        correlation_id: "req-2".into(),
    };
    let reserved = step(OrderStatus::Pending, OrderStatus::AwaitingPayment, 1);
    let confirmed = step(OrderStatus::AwaitingPayment, OrderStatus::Confirmed, 2);
    // The saga's order in memory already shows the earlier transition.
    let in_memory = Order {
        status: OrderStatus::AwaitingPayment,
        ..o.clone()
    };
    let change = Change {
        status: Some((OrderStatus::Confirmed, confirmed.clone())),
        earlier: Some(reserved.clone()),
        ..Change::default()
    };
    let next = store.apply(&in_memory, &change).await.unwrap();
    assert_eq!((next.status, next.version), (OrderStatus::Confirmed, 2));
    let history = store.history(o.id).await.unwrap();
    assert_eq!(history[1..], [reserved, confirmed]);
    // A conflicting change stores neither.
    assert!(matches!(
        store.apply(&in_memory, &change).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.history(o.id).await.unwrap().len(), 3);
}

macro_rules! contract {
    ($($name:ident),* ; $($db_name:ident),*) => {
        mod on_sqlite {
            $(#[tokio::test] async fn $name() { let (s, _db, _dir) = super::super::sqlite_store().await; super::$name(s).await; })*
            $(#[tokio::test] async fn $db_name() { let (s, db, _dir) = super::super::sqlite_store().await; super::$db_name(s, &db).await; })*
        }
        mod on_postgres {
            $(#[tokio::test] async fn $name() { let Some((s, _db)) = super::super::postgres_store().await else { return }; super::$name(s).await; })*
            $(#[tokio::test] async fn $db_name() { let Some((s, db)) = super::super::postgres_store().await else { return }; super::$db_name(s, &db).await; })*
        }
    };
}

async fn an_idempotency_key_is_unique_per_customer(store: Arc<dyn OrderStore>) {
    let a = keyed("alice", "k");
    insert(&*store, &a).await;
    let twin = keyed("alice", "k");
    assert!(matches!(
        store
            .insert(&twin, &created(&twin), &[], &lease(Utc::now()))
            .await,
        Err(StoreError::DuplicateKey)
    ));
    assert_eq!(
        store.find_by_key("alice", "k").await.unwrap().map(|o| o.id),
        Some(a.id)
    );
    let other = keyed("bob", "k");
    insert(&*store, &other).await;
    assert!(store.find_by_key("carol", "k").await.unwrap().is_none());
}

async fn only_the_lease_holder_renews_releases_or_changes_the_order_under_it(
    store: Arc<dyn OrderStore>,
) {
    let o = order("alice");
    let now = Utc::now();
    let held_by = |owner: &str, until| Lease {
        owner: owner.into(),
        until,
    };
    store
        .insert(
            &o,
            &created(&o),
            &[],
            &held_by("a", now + Span::seconds(30)),
        )
        .await
        .unwrap();
    assert!(
        !store
            .renew_lease(o.id, &held_by("b", now + Span::seconds(40)))
            .await
            .unwrap()
    );
    assert!(
        store
            .renew_lease(o.id, &held_by("a", now + Span::seconds(40)))
            .await
            .unwrap()
    );
    store.release_lease(o.id, "b").await.unwrap();
    assert!(
        !store
            .try_lease(o.id, now, &held_by("b", now + Span::seconds(30)))
            .await
            .unwrap(),
        "b's release did not free a's lease"
    );
    let under = |owner: &str| Change {
        attempts: Some(1),
        lease_owner: Some(owner.into()),
        ..Change::default()
    };
    assert!(matches!(
        store.apply(&o, &under("b")).await,
        Err(StoreError::Conflict)
    ));
    let o = store.apply(&o, &under("a")).await.unwrap();
    // a's lease runs out (a crashed, or its step outlived it); b takes over.
    let later = now + Span::seconds(41);
    assert!(
        store
            .try_lease(o.id, later, &held_by("b", later + Span::seconds(30)))
            .await
            .unwrap()
    );
    assert!(
        !store
            .renew_lease(o.id, &held_by("a", later + Span::seconds(30)))
            .await
            .unwrap(),
        "a learns it lost the lease"
    );
    assert!(
        matches!(
            store.apply(&o, &under("a")).await,
            Err(StoreError::Conflict)
        ),
        "a step that outlived its lease cannot finish"
    );
    let o = store.apply(&o, &under("b")).await.unwrap();
    // A change that frees the lease: another instance may take the order now.
    let o = store
        .apply(
            &o,
            &Change {
                release_lease: true,
                ..under("b")
            },
        )
        .await
        .unwrap();
    assert!(
        store
            .try_lease(o.id, later, &held_by("c", later + Span::seconds(30)))
            .await
            .unwrap(),
        "the releasing change freed the lease"
    );
}

contract!(a_change_stores_an_earlier_transition_before_its_own, listing_is_newest_first_filtered_and_paged_by_id, leases_exclude_each_other_and_the_recovery_worker,
    an_idempotency_key_is_unique_per_customer, only_the_lease_holder_renews_releases_or_changes_the_order_under_it;
    an_order_round_trips_with_its_history_and_event, a_change_is_a_compare_and_swap_on_version);
