//! The saga, step by step, against fakes of inventory and payment and a real
//! SQLite store.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agora_kernel::{CallContext, Principal, Role};

use crate::domain::ports::StockReservations;

use super::fakes::{FakeCatalogue, FakePayments, FakeStock, Held, PayMode};
use super::{customer, request};
use crate::domain::models::{Order, OrderId, OrderStatus};
use crate::domain::service::{OrderError, OrderService, SagaConfig};

struct World {
    svc: OrderService,
    stock: Arc<FakeStock>,
    pay: Arc<FakePayments>,
    db: agora_kernel::db::SqlDatabase,
    _dir: tempfile::TempDir,
}

async fn world(mode: PayMode, config: SagaConfig) -> World {
    let (store, db, dir) = super::sqlite_store().await;
    let stock = Arc::new(FakeStock::with(&[("TSHIRT", 10), ("MUG", 1)]));
    let pay = Arc::new(FakePayments::new(mode));
    let svc = OrderService::new(
        store,
        Arc::new(FakeCatalogue::standard()),
        stock.clone(),
        pay.clone(),
        config,
    );
    World {
        svc,
        stock,
        pay,
        db,
        _dir: dir,
    }
}

impl World {
    /// The customer `sub` places `lines`; the call itself must succeed,
    /// whatever the order's status.
    async fn place(&self, sub: &str, lines: &[(&str, i64)]) -> Order {
        self.svc
            .place(&customer(sub), request(lines))
            .await
            .unwrap()
    }

    /// Staff move the order on to `to` (shipped, delivered).
    async fn fulfil(&self, id: OrderId, to: OrderStatus) -> Result<Order, OrderError> {
        self.svc.advance_fulfilment(&staff(), id, to).await
    }
}

fn fast() -> SagaConfig {
    SagaConfig {
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
        ..SagaConfig::default()
    }
}

fn staff() -> CallContext {
    CallContext::new(Principal::new("sam", [Role::Staff]), "req-staff")
}

#[tokio::test]
async fn a_healthy_order_is_confirmed_inside_the_request() {
    let w = world(PayMode::Approve, SagaConfig::default()).await;
    let o = w.place("alice", &[("TSHIRT", 2), ("MUG", 1)]).await;
    assert_eq!(o.status, OrderStatus::Confirmed);
    assert_eq!(o.total.minor(), 2 * 1999 + 850);
    assert_eq!(o.customer_email.as_deref(), Some("alice@example.com"));
    assert!(o.payment_id.is_some());
    assert_eq!(w.stock.available("TSHIRT"), 8);
    assert_eq!(w.stock.state(&o.reservation_id()), Some(Held::Reserved));
    let steps: Vec<OrderStatus> = w
        .svc
        .history(&customer("alice"), o.id)
        .await
        .unwrap()
        .iter()
        .map(|t| t.to)
        .collect();
    assert_eq!(
        steps,
        [
            OrderStatus::Pending,
            OrderStatus::AwaitingPayment,
            OrderStatus::Confirmed
        ]
    );
    // placed + confirmed, in the order's own outbox.
    assert_eq!(w.db.outbox().backlog().await.unwrap(), 2);
}

#[tokio::test]
async fn unknown_inactive_and_mixed_currency_items_are_refused_with_field_errors() {
    let w = world(PayMode::Approve, SagaConfig::default()).await;
    let err = w
        .svc
        .place(
            &customer("alice"),
            request(&[("TSHIRT", 1), ("NOPE", 1), ("OLD", 1), ("USD-HAT", 1)]),
        )
        .await;
    let Err(OrderError::Validation(errors)) = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        errors.keys().cloned().collect::<Vec<_>>(),
        ["items[1].sku", "items[2].sku", "items[3].sku"]
    );
    assert_eq!(w.stock.available("TSHIRT"), 10, "nothing reserved");
    assert_eq!(w.db.outbox().backlog().await.unwrap(), 0, "nothing written");
}

#[tokio::test]
async fn an_order_short_of_stock_is_rejected_and_reserves_nothing() {
    let w = world(PayMode::Approve, SagaConfig::default()).await;
    let o = w.place("alice", &[("TSHIRT", 1), ("MUG", 2)]).await;
    assert_eq!(o.status, OrderStatus::Rejected);
    assert!(o.failure_reason.as_deref().unwrap().contains("MUG"));
    assert_eq!(w.stock.available("TSHIRT"), 10);
    assert_eq!(w.pay.charge_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_declined_payment_fails_the_order_and_releases_its_stock() {
    let w = world(PayMode::Decline, SagaConfig::default()).await;
    let o = w.place("alice", &[("TSHIRT", 3)]).await;
    assert_eq!(o.status, OrderStatus::PaymentFailed);
    assert!(
        o.failure_reason
            .as_deref()
            .unwrap()
            .contains("card_declined")
    );
    assert_eq!(w.stock.available("TSHIRT"), 10);
    assert_eq!(w.stock.state(&o.reservation_id()), Some(Held::Released));
}

#[tokio::test]
async fn an_unavailable_provider_leaves_the_order_awaiting_payment_until_it_is_back() {
    let w = world(PayMode::Down, fast()).await;
    let o = w.place("alice", &[("TSHIRT", 1)]).await;
    assert_eq!(o.status, OrderStatus::AwaitingPayment);
    assert_eq!(o.attempts, 1);
    assert!(o.next_attempt_at.is_some());
    // Still down: the worker retries, backing off.
    tokio::time::sleep(Duration::from_millis(30)).await;
    w.svc.recover_due(10).await.unwrap();
    let o = w.svc.get(&customer("alice"), o.id).await.unwrap();
    assert_eq!((o.status, o.attempts), (OrderStatus::AwaitingPayment, 2));
    // Back: the next pass confirms it, charged exactly once.
    w.pay.set(PayMode::Approve);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(w.svc.recover_due(10).await.unwrap(), 1);
    let o = w.svc.get(&customer("alice"), o.id).await.unwrap();
    assert_eq!(o.status, OrderStatus::Confirmed);
    assert_eq!(w.pay.captured(), 1);
}

#[tokio::test]
async fn past_the_payment_deadline_an_unpaid_order_fails_and_its_stock_is_released() {
    let config = SagaConfig {
        payment_deadline: Duration::from_millis(50),
        ..fast()
    };
    let w = world(PayMode::Down, config).await;
    let o = w.place("alice", &[("TSHIRT", 4)]).await;
    assert_eq!(o.status, OrderStatus::AwaitingPayment);
    assert_eq!(w.stock.available("TSHIRT"), 6);
    tokio::time::sleep(Duration::from_millis(80)).await;
    w.svc.recover_due(10).await.unwrap();
    let o = w.svc.get(&customer("alice"), o.id).await.unwrap();
    assert_eq!(o.status, OrderStatus::PaymentFailed);
    assert!(o.failure_reason.as_deref().unwrap().contains("deadline"));
    assert_eq!(w.stock.available("TSHIRT"), 10);
}

#[tokio::test]
async fn cancelling_a_confirmed_order_refunds_it_in_full_and_releases_stock_once() {
    let w = world(PayMode::Approve, SagaConfig::default()).await;
    let alice = customer("alice");
    let o = w.place("alice", &[("TSHIRT", 2)]).await;
    let c = w.svc.cancel(&alice, o.id, None).await.unwrap();
    assert_eq!(c.status, OrderStatus::Cancelled);
    assert_eq!(w.stock.available("TSHIRT"), 10);
    let refunds = w.pay.refunds.lock().unwrap().clone();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].1, o.total.minor());
    // Twice is a no-op that returns the order.
    let again = w.svc.cancel(&alice, o.id, None).await.unwrap();
    assert_eq!(
        (again.status, again.version),
        (OrderStatus::Cancelled, c.version)
    );
    assert_eq!(w.pay.refunds.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn shipping_commits_the_reservation_and_a_shipped_order_cannot_be_cancelled() {
    let w = world(PayMode::Approve, SagaConfig::default()).await;
    let alice = customer("alice");
    let o = w.place("alice", &[("MUG", 1)]).await;
    assert!(matches!(
        w.svc
            .advance_fulfilment(&alice, o.id, OrderStatus::Shipped)
            .await,
        Err(OrderError::Forbidden(_))
    ));
    assert!(matches!(
        w.fulfil(o.id, OrderStatus::Delivered).await,
        Err(OrderError::IllegalTransition { .. })
    ));
    let s = w.fulfil(o.id, OrderStatus::Shipped).await.unwrap();
    assert_eq!(s.status, OrderStatus::Shipped);
    assert_eq!(w.stock.state(&o.reservation_id()), Some(Held::Committed));
    assert!(matches!(
        w.svc.cancel(&alice, o.id, None).await,
        Err(OrderError::IllegalTransition { .. })
    ));
    let d = w.fulfil(o.id, OrderStatus::Delivered).await.unwrap();
    assert_eq!(d.status, OrderStatus::Delivered);
}

#[tokio::test]
async fn another_customer_cannot_see_cancel_or_list_an_order() {
    let w = world(PayMode::Approve, SagaConfig::default()).await;
    let o = w.place("alice", &[("TSHIRT", 1)]).await;
    let bob = customer("bob");
    assert!(matches!(
        w.svc.get(&bob, o.id).await,
        Err(OrderError::NotFound)
    ));
    assert!(matches!(
        w.svc.history(&bob, o.id).await,
        Err(OrderError::NotFound)
    ));
    assert!(matches!(
        w.svc.cancel(&bob, o.id, None).await,
        Err(OrderError::NotFound)
    ));
    assert!(
        w.svc
            .list(&bob, Default::default(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        w.svc
            .list(&staff(), Default::default(), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        w.svc.get(&customer("alice"), o.id).await.unwrap().status,
        OrderStatus::Confirmed
    );
}

#[tokio::test]
async fn the_address_changes_only_at_the_current_version() {
    let w = world(PayMode::Approve, SagaConfig::default()).await;
    let alice = customer("alice");
    let o = w.place("alice", &[("TSHIRT", 1)]).await;
    let mut addr = o.shipping_address.clone();
    addr.city = "Hamburg".into();
    assert!(matches!(
        w.svc
            .update_address(&alice, o.id, o.version - 1, addr.clone())
            .await,
        Err(OrderError::VersionMismatch { .. })
    ));
    let u = w
        .svc
        .update_address(&alice, o.id, o.version, addr)
        .await
        .unwrap();
    assert_eq!(
        (u.shipping_address.city.as_str(), u.version),
        ("Hamburg", o.version + 1)
    );
}

#[tokio::test]
async fn only_customers_place_orders() {
    let w = world(PayMode::Approve, SagaConfig::default()).await;
    let err = w.svc.place(&staff(), request(&[("TSHIRT", 1)])).await;
    assert!(matches!(err, Err(OrderError::Forbidden(_))));
}

#[tokio::test]
async fn a_payment_that_lands_after_the_reservation_ended_is_refunded() {
    let w = world(PayMode::Down, fast()).await;
    let alice = customer("alice");
    let o = w.place("alice", &[("TSHIRT", 1)]).await;
    assert_eq!(o.status, OrderStatus::AwaitingPayment);
    // The sweeper released the reservation meanwhile.
    w.stock.release(&alice, &o.reservation_id()).await.unwrap();
    w.pay.set(PayMode::Approve);
    tokio::time::sleep(Duration::from_millis(60)).await;
    w.svc.recover_due(10).await.unwrap();
    let o = w.svc.get(&alice, o.id).await.unwrap();
    assert_eq!(o.status, OrderStatus::PaymentFailed);
    assert_eq!(w.pay.refunds.lock().unwrap().len(), 1);
    assert_eq!(w.stock.available("TSHIRT"), 10);
}

#[tokio::test]
async fn placing_twice_with_one_idempotency_key_returns_the_first_order() {
    let w = world(PayMode::Approve, SagaConfig::default()).await;
    let alice = customer("alice");
    let mut r = request(&[("TSHIRT", 1)]);
    r.idempotency_key = Some("k-1".into());
    let first = w.svc.place(&alice, r.clone()).await.unwrap();
    let again = w.svc.place(&alice, r.clone()).await.unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(w.pay.captured(), 1);
    assert_eq!(w.stock.available("TSHIRT"), 9);
    // Another customer's key space is their own.
    let bob_order = w.svc.place(&customer("bob"), r).await.unwrap();
    assert_ne!(bob_order.id, first.id);
}
