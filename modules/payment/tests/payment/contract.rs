//! The contract every payment store must keep, written once and run against
//! SQLite and PostgreSQL: charges (one per order), declines, refunds within the
//! captured amount (also under 50 concurrent requests), leases, the
//! append-only ledger and the outbox events.

use std::sync::Arc;

use agora_kernel::CallContext;
use agora_payment::PaymentService;
use agora_payment::domain::models::{
    ChargeResult, LedgerKind, OrderId, PaymentFilter, PaymentId, PaymentStatus, RefundReason,
    RefundRequest, RefundResult, RefundStatus, RequestKey,
};
use agora_payment::domain::ports::{FaultKind, ProviderError, Reservation};
use agora_payment::domain::service::{ChargeError, GetPaymentError, RefundError, Refunded};
use agora_payment::events;
use chrono::Utc;

use crate::helpers::{
    Backend, Harness, ScriptedProvider, admin, charge, charge_request, customer, payment, service,
    staff,
};

/// Generate one `#[tokio::test]` per backend for each contract test.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(crate::helpers::Backend::Postgres).await;
                }
            )*
        }
    };
}

contract_tests!(
    a_charge_with_tok_visa_succeeds_and_is_recorded_in_the_ledger,
    a_declined_card_fails_the_payment_with_its_failure_code_and_moves_no_money,
    an_order_is_charged_at_most_once_whatever_is_retried,
    concurrent_charges_of_one_order_make_one_payment,
    a_provider_fault_leaves_the_payment_pending_and_a_retry_resumes_it_with_the_same_key,
    the_charge_lease_is_exclusive_until_it_goes_stale,
    refunds_may_be_partial_and_never_exceed_the_captured_amount,
    a_refund_retried_with_the_same_key_is_not_refunded_twice,
    fifty_concurrent_refunds_never_exceed_the_captured_amount,
    only_succeeded_payments_can_be_refunded,
    a_refund_rejected_by_the_provider_gives_its_amount_back,
    a_refund_fault_keeps_its_amount_reserved_until_the_retry,
    customers_see_only_their_own_payments_and_staff_see_all,
    lists_page_newest_first_with_a_cursor,
    the_ledger_is_append_only,
    events_are_published_through_the_outbox_with_the_correlation_id,
    role_rules_apply_to_in_process_callers,
);

async fn a_charge_with_tok_visa_succeeds_and_is_recorded_in_the_ledger(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    for method in ["tok_visa", "tok_mastercard"] {
        let req = charge_request("alice", 4990, method);
        let charged = h.api.charge(&service(), req.clone()).await.unwrap();
        assert!(charged.charged_now);
        let p = charged.payment;
        assert_eq!(p.status, PaymentStatus::Succeeded);
        assert_eq!(p.order_id, req.order_id);
        assert_eq!(p.amount.minor(), 4990);
        assert_eq!(p.refunded_minor, 0);
        assert_eq!(p.provider, "simulated");
        assert!(p.provider_ref.as_deref().unwrap().starts_with("pi_sim_"));
        assert_eq!(p.failure_code, None);
        assert_eq!(h.api.get(&service(), p.id).await.unwrap(), p);
        let ledger = h.store().ledger(p.id).await.unwrap();
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger[0].kind, LedgerKind::Charge);
        assert_eq!(ledger[0].amount, p.amount);
    }
}

async fn a_declined_card_fails_the_payment_with_its_failure_code_and_moves_no_money(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    for (token, code) in [
        ("tok_chargeDeclined", "card_declined"),
        ("tok_insufficient_funds", "insufficient_funds"),
    ] {
        let charged = charge(&h.api, "bob", 1200, token).await.unwrap();
        assert!(charged.charged_now);
        assert_eq!(charged.payment.status, PaymentStatus::Failed);
        assert_eq!(charged.payment.failure_code.as_deref(), Some(code));
        assert!(
            h.store()
                .ledger(charged.payment.id)
                .await
                .unwrap()
                .is_empty()
        );
    }
    // A decline is final: the breaker does not count it.
    assert_eq!(h.module.breaker().consecutive_faults(), 0);
}

async fn an_order_is_charged_at_most_once_whatever_is_retried(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let req = charge_request("alice", 500, "tok_visa");
    let first = h.api.charge(&service(), req.clone()).await.unwrap();
    let again = h.api.charge(&admin(), req.clone()).await.unwrap();
    assert!(!again.charged_now);
    assert_eq!(again.payment, first.payment);

    let mut other = req.clone();
    other.amount = crate::helpers::eur(501);
    let err = h.api.charge(&service(), other).await.unwrap_err();
    assert!(
        matches!(err, ChargeError::OrderAlreadyCharged { payment_id, .. } if payment_id == first.payment.id),
        "{err:?}"
    );
    // A declined order stays declined: a retry returns the failed payment.
    let declined = charge_request("alice", 500, "tok_chargeDeclined");
    let d1 = h.api.charge(&service(), declined.clone()).await.unwrap();
    let d2 = h.api.charge(&service(), declined).await.unwrap();
    assert_eq!(d1.payment.id, d2.payment.id);
    assert_eq!(d2.payment.status, PaymentStatus::Failed);
    assert_eq!(h.store().ledger(first.payment.id).await.unwrap().len(), 1);
}

async fn concurrent_charges_of_one_order_make_one_payment(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let req = charge_request("carol", 700, "tok_visa");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let api = h.api.clone();
        let req = req.clone();
        tasks.push(tokio::spawn(
            async move { api.charge(&service(), req).await },
        ));
    }
    let mut ids = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => ids.push(c.payment.id),
            // A racer may find the first one's provider call still in flight.
            Err(ChargeError::InProgress { payment_id }) => ids.push(payment_id),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "one order, one payment");
    let filter = PaymentFilter {
        order_id: Some(req.order_id),
        customer_id: None,
    };
    assert_eq!(h.store().list(&filter, None, 10).await.unwrap().len(), 1);
    assert_eq!(h.store().ledger(ids[0]).await.unwrap().len(), 1);
}

async fn a_provider_fault_leaves_the_payment_pending_and_a_retry_resumes_it_with_the_same_key(
    b: Backend,
) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let provider = Arc::new(
        ScriptedProvider::default()
            .then_charge(Err(ProviderError::fault(FaultKind::Timeout, "no answer")))
            .then_charge(Err(ProviderError::fault(
                FaultKind::Status(502),
                "bad gateway",
            ))),
    );
    let api = h.api_with(provider.clone());
    let req = charge_request("dave", 2500, "pm_card_visa");
    for _ in 0..2 {
        let err = api.charge(&service(), req.clone()).await.unwrap_err();
        assert!(
            matches!(err, ChargeError::ProviderUnavailable { retry_after_secs, .. } if retry_after_secs >= 1),
            "{err:?}"
        );
    }
    let pending = api.find_by_order(&service(), req.order_id).await.unwrap();
    assert_eq!(pending.status, PaymentStatus::Pending);
    assert!(h.store().ledger(pending.id).await.unwrap().is_empty());

    let charged = api.charge(&service(), req).await.unwrap();
    assert!(charged.charged_now);
    assert_eq!(charged.payment.id, pending.id);
    assert_eq!(charged.payment.status, PaymentStatus::Succeeded);
    let keys = provider.charge_keys();
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one idempotency key: {keys:?}"
    );
    assert_eq!(h.store().ledger(pending.id).await.unwrap().len(), 1);
}

async fn the_charge_lease_is_exclusive_until_it_goes_stale(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let store = h.store();
    let new = agora_payment::domain::models::NewPayment {
        id: PaymentId::new(),
        request: charge_request("erin", 100, "tok_visa"),
        provider: "simulated".into(),
    };
    let now = Utc::now();
    let Reservation::Created(p) = store.reserve_charge(&new, now).await.unwrap() else {
        panic!("the first reservation creates the payment");
    };
    assert_eq!(p.status, PaymentStatus::Pending);
    // The reservation holds the lease: a retry within the lease time is refused...
    let stale_before = now - chrono::Duration::seconds(5);
    assert!(!store.lease_charge(p.id, now, stale_before).await.unwrap());
    // ...and taken once the holder gave it back or went stale.
    store.release_charge(p.id).await.unwrap();
    assert!(store.lease_charge(p.id, now, stale_before).await.unwrap());
    let later = now + chrono::Duration::seconds(10);
    assert!(
        store
            .lease_charge(p.id, later, later - chrono::Duration::seconds(5))
            .await
            .unwrap()
    );
    // A second reservation of the order finds the first.
    let dup = agora_payment::domain::models::NewPayment {
        id: PaymentId::new(),
        ..new.clone()
    };
    assert!(matches!(
        store.reserve_charge(&dup, now).await.unwrap(),
        Reservation::Existing(e) if e.id == p.id
    ));
    // A finished payment has no lease to take.
    let ok = ChargeResult::Succeeded {
        provider_ref: "pi_x".into(),
    };
    let finished = store
        .finish_charge(&p, &ok, "c", now)
        .await
        .unwrap()
        .expect("the pending payment finishes");
    // What the store answers is what it now holds (no reload behind it).
    assert_eq!(finished.status, PaymentStatus::Succeeded);
    assert_eq!(Some(finished), store.get(p.id).await.unwrap());
    assert!(
        store
            .finish_charge(&p, &ok, "c", now)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!store.lease_charge(p.id, later, later).await.unwrap());
}

fn refund(payment: PaymentId, minor: i64, key: &str) -> RefundRequest {
    RefundRequest::new(
        payment,
        minor,
        Some(RefundReason::parse("customer changed their mind").unwrap()),
        RequestKey::parse(key).unwrap(),
    )
    .unwrap()
}

/// Refund `minor` of `payment` under `key`, as `ctx`.
async fn refund_as(
    api: &PaymentService,
    ctx: &CallContext,
    payment: PaymentId,
    minor: i64,
    key: &str,
) -> Result<Refunded, RefundError> {
    api.refund(ctx, refund(payment, minor, key)).await
}

/// A refund by staff that must be answered.
async fn refunded(api: &PaymentService, payment: PaymentId, minor: i64, key: &str) -> Refunded {
    refund_as(api, &staff(), payment, minor, key)
        .await
        .expect("the refund is answered")
}

/// A refund by staff that must be refused.
async fn refused(api: &PaymentService, payment: PaymentId, minor: i64, key: &str) -> RefundError {
    refund_as(api, &staff(), payment, minor, key)
        .await
        .expect_err("the refund is refused")
}

/// Assert that `err` refuses a refund for exceeding what is left: `left` minor units.
fn assert_exceeds(err: &RefundError, left: i64) {
    assert!(
        matches!(err, RefundError::ExceedsRefundable { refundable_minor } if *refundable_minor == left),
        "{err:?}"
    );
}

async fn refunds_may_be_partial_and_never_exceed_the_captured_amount(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let p = payment(&h.api, "alice", 1000, "tok_visa").await;
    let r1 = refunded(&h.api, p.id, 300, "k1").await;
    assert!(r1.refunded_now);
    assert_eq!(r1.refund.status, RefundStatus::Succeeded);
    assert_eq!(r1.payment.status, PaymentStatus::PartiallyRefunded);
    assert_eq!(r1.payment.refunded_minor, 300);

    let err = refused(&h.api, p.id, 800, "k2").await;
    assert_exceeds(&err, 700);
    let r3 = refund_as(&h.api, &admin(), p.id, 700, "k3").await.unwrap();
    assert_eq!(r3.payment.status, PaymentStatus::Refunded);
    assert_eq!(r3.payment.refunded_minor, 1000);
    assert_eq!(
        r3.payment.refunds.len(),
        2,
        "the refused refund left no row"
    );

    let err = refund_as(&h.api, &service(), p.id, 1, "k4")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RefundError::NotRefundable(PaymentStatus::Refunded)),
        "{err:?}"
    );
    let ledger = h.store().ledger(p.id).await.unwrap();
    let amounts: Vec<i64> = ledger.iter().map(|e| e.amount.minor()).collect();
    assert_eq!(amounts, [1000, -300, -700]);
    assert_eq!(ledger[1].refund_id, Some(r1.refund.id));
}

async fn a_refund_retried_with_the_same_key_is_not_refunded_twice(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let p = payment(&h.api, "alice", 1000, "tok_visa").await;
    let first = refunded(&h.api, p.id, 300, "same").await;
    let again = refunded(&h.api, p.id, 300, "same").await;
    assert!(!again.refunded_now);
    assert_eq!(again.refund.id, first.refund.id);
    assert_eq!(again.payment.refunded_minor, 300);
    let err = refused(&h.api, p.id, 400, "same").await;
    assert!(matches!(err, RefundError::KeyReused), "{err:?}");
    assert_eq!(h.store().ledger(p.id).await.unwrap().len(), 2);
}

async fn fifty_concurrent_refunds_never_exceed_the_captured_amount(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let p = payment(&h.api, "alice", 1000, "tok_visa").await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let api = h.api.clone();
        let req = refund(p.id, 100, &format!("concurrent-{i}"));
        tasks.push(tokio::spawn(async move { api.refund(&staff(), req).await }));
    }
    let (mut ok, mut exceeded) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(RefundError::ExceedsRefundable { .. } | RefundError::NotRefundable(_)) => {
                exceeded += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((ok, exceeded), (10, 40));
    let after = h.api.get(&staff(), p.id).await.unwrap();
    assert_eq!(after.refunded_minor, 1000);
    assert_eq!(after.status, PaymentStatus::Refunded);
    assert_eq!(
        after.refunds.len(),
        10,
        "the refused requests left nothing behind"
    );
    let ledger = h.store().ledger(p.id).await.unwrap();
    assert_eq!(ledger.len(), 11);
    assert_eq!(ledger.iter().map(|e| e.amount.minor()).sum::<i64>(), 0);
    h.drain_outbox().await;
    assert_eq!(h.events.of_type(events::PAYMENT_REFUNDED).len(), 10);
}

async fn only_succeeded_payments_can_be_refunded(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let declined = payment(&h.api, "alice", 1000, "tok_chargeDeclined").await;
    let err = refused(&h.api, declined.id, 1, "a").await;
    assert!(
        matches!(err, RefundError::NotRefundable(PaymentStatus::Failed)),
        "{err:?}"
    );
    let err = refused(&h.api, PaymentId::new(), 1, "b").await;
    assert!(matches!(err, RefundError::NotFound), "{err:?}");
    // In-process callers name the currency they mean; another one is refused.
    let paid = payment(&h.api, "alice", 1000, "tok_visa").await;
    let usd = agora_kernel::Money::new(100, agora_kernel::Currency::parse("USD").unwrap());
    let req = RefundRequest::of_money(paid.id, usd, None, RequestKey::parse("c").unwrap()).unwrap();
    let err = h.api.refund(&service(), req).await.unwrap_err();
    assert!(
        matches!(err, RefundError::CurrencyMismatch { .. }),
        "{err:?}"
    );
    let req = RefundRequest::of_money(
        paid.id,
        crate::helpers::eur(100),
        None,
        RequestKey::parse("c").unwrap(),
    )
    .unwrap();
    assert!(h.api.refund(&service(), req).await.is_ok());
}

async fn a_refund_rejected_by_the_provider_gives_its_amount_back(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let provider = Arc::new(
        ScriptedProvider::default().then_refund(Ok(RefundResult::Rejected {
            code: "charge_disputed".into(),
        })),
    );
    let api = h.api_with(provider);
    let p = payment(&api, "alice", 1000, "pm_card_visa").await;
    let err = refused(&api, p.id, 1000, "r1").await;
    assert!(
        matches!(err, RefundError::Rejected { ref code, .. } if code == "charge_disputed"),
        "{err:?}"
    );
    let again = refused(&api, p.id, 1000, "r1").await;
    assert!(
        matches!(again, RefundError::Rejected { .. }),
        "a replay answers the same"
    );
    let ok = refunded(&api, p.id, 1000, "r2").await;
    assert_eq!(ok.payment.status, PaymentStatus::Refunded);
    let statuses: Vec<RefundStatus> = ok.payment.refunds.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [RefundStatus::Failed, RefundStatus::Succeeded]);
    assert_eq!(h.store().ledger(p.id).await.unwrap().len(), 2);
}

async fn a_refund_fault_keeps_its_amount_reserved_until_the_retry(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let provider = Arc::new(
        ScriptedProvider::default()
            .then_refund(Err(ProviderError::fault(FaultKind::Timeout, "no answer"))),
    );
    let api = h.api_with(provider.clone());
    let p = payment(&api, "alice", 1000, "pm_card_visa").await;
    let err = refused(&api, p.id, 600, "slow").await;
    assert!(
        matches!(err, RefundError::ProviderUnavailable { .. }),
        "{err:?}"
    );
    // The pending refund's amount is not refundable twice.
    let err = refused(&api, p.id, 500, "other").await;
    assert_exceeds(&err, 400);
    let resumed = refunded(&api, p.id, 600, "slow").await;
    assert!(resumed.refunded_now);
    assert_eq!(resumed.payment.refunded_minor, 600);
    let keys = provider.refund_keys();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys[0], keys[1],
        "the retry reuses the provider idempotency key"
    );
}

async fn customers_see_only_their_own_payments_and_staff_see_all(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let alices = payment(&h.api, "alice", 100, "tok_visa").await;
    let bobs = payment(&h.api, "bob", 200, "tok_visa").await;
    assert_eq!(
        h.api.get(&customer("alice"), alices.id).await.unwrap().id,
        alices.id
    );
    assert!(matches!(
        h.api.get(&customer("alice"), bobs.id).await,
        Err(GetPaymentError::NotFound)
    ));
    assert_eq!(h.api.get(&staff(), bobs.id).await.unwrap().id, bobs.id);

    let all = |ctx| {
        let api = h.api.clone();
        async move {
            api.list(&ctx, PaymentFilter::default(), None, 100)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(all(customer("alice")).await, [alices.id]);
    assert_eq!(all(staff()).await, [bobs.id, alices.id]);
    // Asking for someone else's list gives nothing, not their payments.
    let filter = PaymentFilter {
        order_id: None,
        customer_id: Some(bobs.customer_id.clone()),
    };
    let page = h
        .api
        .list(&customer("alice"), filter, None, 20)
        .await
        .unwrap();
    assert!(page.items.is_empty());
    // By order: the order module's lookup.
    let by_order = h
        .api
        .find_by_order(&service(), bobs.order_id)
        .await
        .unwrap();
    assert_eq!(by_order.id, bobs.id);
    assert!(matches!(
        h.api.find_by_order(&customer("alice"), bobs.order_id).await,
        Err(GetPaymentError::NotFound)
    ));
    assert!(matches!(
        h.api.find_by_order(&service(), OrderId::new()).await,
        Err(GetPaymentError::NotFound)
    ));
}

async fn lists_page_newest_first_with_a_cursor(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let mut ids = Vec::new();
    for _ in 0..5 {
        let p = payment(&h.api, "alice", 100, "tok_visa").await;
        ids.push(p.id);
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = h
            .api
            .list(&customer("alice"), PaymentFilter::default(), after, 2)
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|p| p.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

async fn the_ledger_is_append_only(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let p = payment(&h.api, "alice", 100, "tok_visa").await;
    let id = p.id.to_string();
    // The same SQL on both backends: SQLite reads `$1` as parameter 1.
    for statement in [
        "UPDATE payment_ledger SET amount_minor = 1 WHERE payment_id = $1",
        "DELETE FROM payment_ledger WHERE payment_id = $1",
    ] {
        let result = match h.db() {
            agora_kernel::db::SqlDatabase::Sqlite(db) => {
                let id = id.clone();
                db.write(move |tx| tx.execute(statement, [&id]))
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
            agora_kernel::db::SqlDatabase::Postgres(pool) => sqlx::query(statement)
                .bind(&id)
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from),
        };
        let err = result.expect_err(statement);
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
    assert_eq!(h.store().ledger(p.id).await.unwrap()[0].amount.minor(), 100);
}

async fn events_are_published_through_the_outbox_with_the_correlation_id(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let ok = payment(&h.api, "alice", 4990, "tok_visa").await;
    let declined = payment(&h.api, "bob", 100, "tok_insufficient_funds").await;
    refunded(&h.api, ok.id, 990, "r").await;
    h.drain_outbox().await;

    let succeeded = h.events.of_type(events::PAYMENT_SUCCEEDED);
    assert_eq!(succeeded.len(), 1);
    let e = &succeeded[0];
    assert_eq!(e.source, "payment");
    assert_eq!(e.correlation_id, "corr-service");
    let body: events::PaymentSucceeded = serde_json::from_value(e.payload.clone()).unwrap();
    assert_eq!(body.payment_id, ok.id.as_uuid());
    assert_eq!(body.order_id, ok.order_id.as_uuid());
    assert_eq!((body.amount_minor, body.currency.as_str()), (4990, "EUR"));

    let failed = h.events.of_type(events::PAYMENT_FAILED);
    assert_eq!(failed.len(), 1);
    let body: events::PaymentFailed = serde_json::from_value(failed[0].payload.clone()).unwrap();
    assert_eq!(body.payment_id, declined.id.as_uuid());
    assert_eq!(body.failure_code, "insufficient_funds");

    let refunded = h.events.of_type(events::PAYMENT_REFUNDED);
    assert_eq!(refunded.len(), 1);
    assert_eq!(refunded[0].correlation_id, "corr-staff");
    let body: events::PaymentRefunded =
        serde_json::from_value(refunded[0].payload.clone()).unwrap();
    assert_eq!(
        (
            body.amount_minor,
            body.refunded_minor,
            body.refund_amount_minor
        ),
        (4990, 990, 990)
    );
    assert_eq!(body.order_id, ok.order_id.as_uuid());
    assert_eq!(body.customer_id, "alice");
    assert_eq!(body.currency, "EUR");
    assert_eq!(body.payment_status, "partially_refunded");
    assert_eq!(body.reason.as_deref(), Some("customer changed their mind"));
}

async fn role_rules_apply_to_in_process_callers(b: Backend) {
    let Some(h) = Harness::start(b).await else {
        return;
    };
    let alices = || charge_request("alice", 100, "tok_visa");
    for (who, ctx) in [("customers", customer("alice")), ("staff", staff())] {
        let err = h.api.charge(&ctx, alices()).await.unwrap_err();
        assert!(matches!(err, ChargeError::Forbidden), "{who} do not charge");
    }
    let p = h.api.charge(&admin(), alices()).await.unwrap().payment;
    let err = refund_as(&h.api, &customer("alice"), p.id, 10, "x")
        .await
        .unwrap_err();
    assert!(matches!(err, RefundError::Forbidden));
    let filter = PaymentFilter::default();
    assert!(
        h.api
            .list(&customer("alice"), filter, None, 20)
            .await
            .unwrap()
            .items
            .len()
            == 1
    );
}
