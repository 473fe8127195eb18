//! The Stripe-compatible `http` provider against a local HTTP server the test
//! starts (actix-web on 127.0.0.1:0), which answers like Stripe by payment
//! method: success, decline (402 card_error), 5xx, a slow answer (time-out),
//! malformed bodies. Checked at the provider port and through the module.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use agora_payment::domain::models::{
    ChargeResult, PaymentId, PaymentStatus, RefundId, RefundResult,
};
use agora_payment::domain::ports::{
    FaultKind, PaymentProvider, ProviderChargeRequest, ProviderError, ProviderRefundRequest,
};
use agora_payment::domain::service::ChargeError;
use agora_payment::testing::HttpProvider;
use agora_payment::{BreakerState, ProviderKind};
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{
    Backend, Harness, assert_ref, assert_unavailable_for, charge, charge_request, eur, payment,
    service,
};

/// One request the fake provider received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub form: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    /// How many times each payment method was charged so far.
    calls: Mutex<HashMap<String, usize>>,
    /// Answers already given per idempotency key (Stripe replays them).
    by_key: Mutex<HashMap<String, (u16, String)>>,
    slow_ms: AtomicUsize,
}

/// A local Stripe look-alike.
pub struct FakeStripe {
    pub url: String,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeStripe {
    pub async fn start() -> Self {
        let state = Arc::new(State::default());
        state.slow_ms.store(1500, Ordering::SeqCst);
        let data = web::Data::from(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/payment_intents", web::post().to(answer))
                .route("/v1/refunds", web::post().to(answer))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { url, state, handle }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

fn record(req: &HttpRequest, state: &State, form: &HashMap<String, String>) {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    state.seen.lock().unwrap().push(Seen {
        path: req.path().to_owned(),
        idempotency_key: h("idempotency-key"),
        authorization: h("authorization"),
        content_type: h("content-type"),
        form: form.clone(),
    });
}

fn card_error(code: &str, decline_code: &str, pi: &str) -> (u16, String) {
    let body = json!({"error": {"type": "card_error", "code": code, "decline_code": decline_code,
        "message": "Your card was declined.", "payment_intent": {"id": pi, "status": "requires_payment_method"}}});
    (402, body.to_string())
}

/// Every request is recorded, then answered as Stripe would at its path.
async fn answer(
    req: HttpRequest,
    state: web::Data<State>,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    record(&req, &state, &form);
    if req.path() == "/v1/refunds" {
        refunds(&form)
    } else {
        payment_intents(&req, &state, &form).await
    }
}

async fn payment_intents(
    req: &HttpRequest,
    state: &State,
    form: &HashMap<String, String>,
) -> HttpResponse {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if let Some((status, body)) = state.by_key.lock().unwrap().get(&key).cloned() {
        return respond(status, body);
    }
    let method = form.get("payment_method").cloned().unwrap_or_default();
    let n = {
        let mut calls = state.calls.lock().unwrap();
        let n = calls.entry(method.clone()).or_default();
        *n += 1;
        *n
    };
    let pi = format!("pi_{}", key.replace('-', "_"));
    let succeeded = (
        200,
        json!({"id": pi, "object": "payment_intent", "status": "succeeded",
        "amount": form.get("amount"), "currency": form.get("currency")})
        .to_string(),
    );
    let answer = match method.as_str() {
        "pm_card_visa" => succeeded,
        "pm_card_chargeDeclined" => card_error("card_declined", "generic_decline", &pi),
        "pm_card_insufficient_funds" => card_error("card_declined", "insufficient_funds", &pi),
        "pm_requires_payment_method" => (
            200,
            json!({"id": pi, "status": "requires_payment_method",
            "last_payment_error": {"code": "card_declined", "decline_code": "expired_card"}})
            .to_string(),
        ),
        "pm_no_such" => (
            400,
            json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
            "param": "payment_method"}})
            .to_string(),
        ),
        "pm_500" => (500, json!({"error": {"type": "api_error"}}).to_string()),
        "pm_garbage" => (200, "<html>upstream error</html>".to_owned()),
        "pm_no_id" => (200, json!({"status": "succeeded"}).to_string()),
        "pm_slow" => {
            tokio::time::sleep(Duration::from_millis(
                state.slow_ms.load(Ordering::SeqCst) as u64
            ))
            .await;
            succeeded
        }
        // Times out on its first call only; the charge still happens then,
        // so the retry (same key) must get the stored answer, not a new charge.
        "pm_slow_once" => {
            if n == 1 {
                state
                    .by_key
                    .lock()
                    .unwrap()
                    .insert(key.clone(), succeeded.clone());
                tokio::time::sleep(Duration::from_millis(
                    state.slow_ms.load(Ordering::SeqCst) as u64
                ))
                .await;
            }
            succeeded
        }
        // 503 on its first two calls, then fine.
        "pm_flaky" if n <= 2 => (503, json!({"error": {"type": "api_error"}}).to_string()),
        "pm_flaky" => succeeded,
        _ => card_error("card_declined", "generic_decline", &pi),
    };
    if answer.0 < 500 {
        state.by_key.lock().unwrap().insert(key, answer.clone());
    }
    respond(answer.0, answer.1)
}

fn refunds(form: &HashMap<String, String>) -> HttpResponse {
    match form.get("payment_intent").map(String::as_str) {
        Some("pi_disputed") => respond(
            400,
            json!({"error": {"type": "invalid_request_error", "code": "charge_disputed"}}).to_string(),
        ),
        Some("pi_refund_500") => respond(502, "bad gateway".to_owned()),
        Some(_) => respond(
            200,
            json!({"id": "re_123", "object": "refund", "status": "succeeded", "amount": form.get("amount")}).to_string(),
        ),
        None => respond(400, json!({"error": {"type": "invalid_request_error", "code": "parameter_missing"}}).to_string()),
    }
}

fn respond(status: u16, body: String) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .content_type("application/json")
        .body(body)
}

fn provider(stripe: &FakeStripe, timeout_ms: u64) -> HttpProvider {
    HttpProvider::new(
        &stripe.url,
        SecretString::from("sk_test_123".to_owned()),
        Duration::from_millis(timeout_ms),
    )
    .unwrap()
}

fn call(method: &str) -> ProviderChargeRequest {
    let req = charge_request("alice", 4990, method);
    let payment_id = PaymentId::new();
    ProviderChargeRequest {
        idempotency_key: format!("agora-payment-{payment_id}"),
        payment_id,
        order_id: req.order_id,
        customer_id: req.customer_id,
        amount: req.amount,
        payment_method: req.payment_method,
    }
}

#[tokio::test]
async fn a_succeeded_payment_intent_is_a_success_and_the_request_is_stripe_shaped() {
    let stripe = FakeStripe::start().await;
    let req = call("pm_card_visa");
    let r = provider(&stripe, 2000).charge(&req).await.unwrap();
    let ChargeResult::Succeeded { provider_ref } = r else {
        panic!("{r:?}")
    };
    assert!(provider_ref.starts_with("pi_"));
    let seen = stripe.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.path, "/v1/payment_intents");
    assert_eq!(
        s.idempotency_key.as_deref(),
        Some(req.idempotency_key.as_str())
    );
    assert_eq!(s.authorization.as_deref(), Some("Bearer sk_test_123"));
    assert_eq!(
        s.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(s.form["amount"], "4990");
    assert_eq!(s.form["currency"], "eur");
    assert_eq!(s.form["payment_method"], "pm_card_visa");
    assert_eq!(s.form["confirm"], "true");
    assert_eq!(s.form["payment_method_types[0]"], "card");
    assert_eq!(s.form["metadata[order_id]"], req.order_id.to_string());
    assert_eq!(s.form["metadata[payment_id]"], req.payment_id.to_string());
    stripe.stop().await;
}

#[tokio::test]
async fn a_402_card_error_is_a_decline_with_its_decline_code() {
    let stripe = FakeStripe::start().await;
    let p = provider(&stripe, 2000);
    for (method, code) in [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_insufficient_funds", "insufficient_funds"),
        ("pm_requires_payment_method", "expired_card"),
        ("pm_no_such", "resource_missing"),
    ] {
        let r = p.charge(&call(method)).await;
        assert!(
            matches!(&r, Ok(ChargeResult::Declined { code: c, .. }) if c == code),
            "{method}: {r:?}"
        );
    }
    stripe.stop().await;
}

/// Assert that `r` is a provider fault of `kind`.
fn assert_fault<T: std::fmt::Debug>(r: &Result<T, ProviderError>, kind: FaultKind, what: &str) {
    assert!(
        matches!(r, Err(ProviderError::Fault { kind: k, .. }) if *k == kind),
        "{what}: {r:?}"
    );
}

/// Charge with `method` on a fresh fake Stripe, expecting a fault of `kind`.
async fn charging_is_a_fault(method: &str, timeout_ms: u64, kind: FaultKind) {
    let stripe = FakeStripe::start().await;
    let r = provider(&stripe, timeout_ms).charge(&call(method)).await;
    assert_fault(&r, kind, method);
    stripe.stop().await;
}

#[tokio::test]
async fn a_5xx_is_a_fault_with_its_status() {
    charging_is_a_fault("pm_500", 2000, FaultKind::Status(500)).await;
}

#[tokio::test]
async fn a_time_out_is_a_fault_with_an_unknown_outcome() {
    charging_is_a_fault("pm_slow", 200, FaultKind::Timeout).await;
}

#[tokio::test]
async fn a_malformed_answer_is_a_fault() {
    for method in ["pm_garbage", "pm_no_id"] {
        charging_is_a_fault(method, 2000, FaultKind::Malformed).await;
    }
}

#[tokio::test]
async fn an_unreachable_provider_is_a_transport_fault() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = HttpProvider::new(
        &format!("http://127.0.0.1:{port}"),
        SecretString::from(String::new()),
        Duration::from_millis(500),
    )
    .unwrap();
    let r = p.charge(&call("pm_card_visa")).await;
    assert!(matches!(r, Err(ProviderError::Fault { .. })), "{r:?}");
}

fn refund_call(charge_ref: &str) -> ProviderRefundRequest {
    let refund_id = RefundId::new();
    ProviderRefundRequest {
        idempotency_key: format!("agora-refund-{refund_id}"),
        refund_id,
        payment_id: PaymentId::new(),
        charge_ref: charge_ref.to_owned(),
        amount: eur(250),
        reason: Some("damaged & late".to_owned()),
    }
}

#[tokio::test]
async fn refunds_post_the_payment_intent_and_amount_with_an_idempotency_key() {
    let stripe = FakeStripe::start().await;
    let p = provider(&stripe, 2000);
    let req = refund_call("pi_abc");
    let r = p.refund(&req).await.unwrap();
    assert_eq!(
        r,
        RefundResult::Succeeded {
            provider_ref: "re_123".into()
        }
    );
    let s = &stripe.seen()[0];
    assert_eq!(s.path, "/v1/refunds");
    assert_eq!(
        s.idempotency_key.as_deref(),
        Some(req.idempotency_key.as_str())
    );
    assert_eq!(s.authorization.as_deref(), Some("Bearer sk_test_123"));
    assert_eq!(s.form["payment_intent"], "pi_abc");
    assert_eq!(s.form["amount"], "250");
    assert_eq!(s.form["metadata[reason]"], "damaged & late");

    let r = p.refund(&refund_call("pi_disputed")).await.unwrap();
    assert_eq!(
        r,
        RefundResult::Rejected {
            code: "charge_disputed".into()
        }
    );
    let r = p.refund(&refund_call("pi_refund_500")).await;
    assert_fault(&r, FaultKind::Status(502), "pi_refund_500");
    stripe.stop().await;
}

async fn module_on(stripe: &FakeStripe, threshold: u32, timeout_ms: u64) -> Harness {
    let url = stripe.url.clone();
    Harness::start_with(Backend::Sqlite, move |s| {
        s.provider = ProviderKind::Http;
        s.provider_url = url;
        s.provider_secret_key = SecretString::from("sk_test_123".to_owned());
        s.provider_timeout_ms = timeout_ms;
        s.breaker.failure_threshold = threshold;
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn through_the_module_each_answer_maps_to_the_right_payment_status_and_error() {
    let stripe = FakeStripe::start().await;
    let h = module_on(&stripe, 10, 300).await;

    let ok = payment(&h.api, "alice", 100, "pm_card_visa").await;
    assert_eq!(ok.status, PaymentStatus::Succeeded);
    assert_eq!(ok.provider, "http");
    assert_ref(ok.provider_ref.as_deref(), "pi_");

    let declined = payment(&h.api, "alice", 100, "pm_card_insufficient_funds").await;
    assert_eq!(declined.status, PaymentStatus::Failed);
    assert_eq!(declined.failure_code.as_deref(), Some("insufficient_funds"));

    for method in ["pm_500", "pm_slow", "pm_garbage"] {
        let req = charge_request("alice", 100, method);
        let err = h.api.charge(&service(), req.clone()).await.unwrap_err();
        assert!(
            matches!(err, ChargeError::ProviderUnavailable { .. }),
            "{method}: {err:?}"
        );
        let p = h.api.find_by_order(&service(), req.order_id).await.unwrap();
        assert_eq!(
            p.status,
            PaymentStatus::Pending,
            "{method}: unknown outcome stays pending"
        );
    }
    // Every call carried an idempotency key.
    assert!(stripe.seen().iter().all(|s| s.idempotency_key.is_some()));
    let refund = h
        .api
        .refund(
            &crate::helpers::staff(),
            agora_payment::domain::models::RefundRequest::new(
                ok.id,
                40,
                None,
                agora_payment::domain::models::RequestKey::parse("r1").unwrap(),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(refund.payment.refunded_minor, 40);
    let last = stripe.seen().pop().unwrap();
    assert_eq!(last.path, "/v1/refunds");
    assert_eq!(
        last.form["payment_intent"],
        ok.provider_ref.clone().unwrap()
    );
    stripe.stop().await;
}

#[tokio::test]
async fn a_charge_that_timed_out_is_resolved_by_retrying_with_the_same_key_never_charged_twice() {
    let stripe = FakeStripe::start().await;
    let h = module_on(&stripe, 10, 300).await;
    let req = charge_request("alice", 100, "pm_slow_once");
    let err = h.api.charge(&service(), req.clone()).await.unwrap_err();
    assert!(
        matches!(err, ChargeError::ProviderUnavailable { .. }),
        "{err:?}"
    );
    let done = h.api.charge(&service(), req.clone()).await.unwrap();
    assert_eq!(done.payment.status, PaymentStatus::Succeeded);
    let seen = stripe.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].idempotency_key, seen[1].idempotency_key);
    // The flaky provider recovers; the pending payment completes on retry.
    let flaky = charge_request("alice", 100, "pm_flaky");
    for _ in 0..2 {
        assert!(h.api.charge(&service(), flaky.clone()).await.is_err());
    }
    let ok = h.api.charge(&service(), flaky).await.unwrap();
    assert_eq!(ok.payment.status, PaymentStatus::Succeeded);
    stripe.stop().await;
}

#[tokio::test]
async fn time_outs_and_5xx_open_the_breaker_but_declines_do_not() {
    let stripe = FakeStripe::start().await;
    let h = module_on(&stripe, 2, 200).await;
    for _ in 0..5 {
        payment(&h.api, "alice", 100, "pm_card_chargeDeclined").await;
    }
    assert_eq!(h.module.breaker().state(), BreakerState::Closed);
    for method in ["pm_slow", "pm_500"] {
        let _ = charge(&h.api, "alice", 100, method).await;
    }
    assert_eq!(h.module.breaker().state(), BreakerState::Open);
    let before = stripe.seen().len();
    let err = charge(&h.api, "alice", 100, "pm_card_visa")
        .await
        .unwrap_err();
    assert_unavailable_for(&err, 30);
    assert_eq!(
        stripe.seen().len(),
        before,
        "an open breaker does not call the provider"
    );
    stripe.stop().await;
}
