//! The HTTP endpoints through `Module::configure`, in an actix test service
//! with a stand-in for the gateway (the caller named by `x-test-sub` with the
//! roles in `x-test-roles` is authenticated): the JSON contract, roles, 404
//! for other customers, problem bodies, idempotent replay, 503 + Retry-After.

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::middleware::from_fn;
use actix_web::{App, test};
use agora_kernel::Module;
use serde_json::{Value, json};
use uuid::Uuid;

use agora_payment::Settings;

use crate::helpers::{Backend, Harness};

/// The module on a fresh SQLite database with `configure`d settings, and its
/// endpoints in a test service with a stand-in for the gateway. The harness
/// must live as long as the service is called.
async fn app_with(
    configure: impl FnOnce(&mut Settings),
) -> (
    Harness,
    impl Service<
        actix_http::Request,
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
    >,
) {
    let h = Harness::start_with(Backend::Sqlite, configure)
        .await
        .unwrap();
    let app = test::init_service(
        App::new()
            .configure(agora_kernel::http::extractors(64 * 1024))
            .wrap(from_fn(agora_kernel::testing::principal_from_test_headers))
            .configure(|cfg| h.module.configure(cfg)),
    )
    .await;
    (h, app)
}

/// Who calls: (subject, comma-separated roles).
type Who<'a> = (&'a str, &'a str);
const SERVICE: Who = ("service:order", "service");
const STAFF: Who = ("sam", "staff");
const ALICE: Who = ("alice", "customer");
const BOB: Who = ("bob", "customer");

fn post(path: &str, who: Who, key: Option<&str>, body: &Value) -> actix_http::Request {
    let mut r = test::TestRequest::post()
        .uri(path)
        .insert_header(("x-test-sub", who.0))
        .insert_header(("x-test-roles", who.1))
        .insert_header(header::ContentType::json())
        .set_payload(body.to_string());
    if let Some(k) = key {
        r = r.insert_header(("idempotency-key", k));
    }
    r.to_request()
}

fn get(path: &str, who: Who) -> actix_http::Request {
    test::TestRequest::get()
        .uri(path)
        .insert_header(("x-test-sub", who.0))
        .insert_header(("x-test-roles", who.1))
        .to_request()
}

/// Status, headers and JSON body of a response.
async fn call<S, B>(app: &S, req: actix_http::Request) -> (StatusCode, header::HeaderMap, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let res = test::call_service(app, req).await;
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = test::read_body(res).await;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

fn assert_problem(status: StatusCode, headers: &header::HeaderMap, body: &Value, want: u16) {
    assert_eq!(status.as_u16(), want, "{body}");
    assert_eq!(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{body}"
    );
    assert_eq!(body["status"], want);
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:agora:problem:")
    );
    assert!(body["title"].is_string() && body["detail"].is_string());
}

/// Call and assert the answer is a problem with status `want`; its body.
async fn problem<S, B>(app: &S, req: actix_http::Request, want: u16) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let (status, headers, body) = call(app, req).await;
    assert_problem(status, &headers, &body, want);
    body
}

/// `POST /payments` as `who` under the idempotency key `key`.
fn create(who: Who, key: &str, body: &Value) -> actix_http::Request {
    post("/payments", who, Some(key), body)
}

/// The payment the order module creates with `body`: answered 201.
async fn created<S, B>(app: &S, key: &str, body: &Value) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let (status, _, payment) = call(app, create(SERVICE, key, body)).await;
    assert_eq!(status, StatusCode::CREATED, "{payment}");
    payment
}

/// The keys of a JSON object, sorted.
fn sorted_keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

fn charge_body(customer: &str, minor: i64, method: &str) -> Value {
    json!({
        "order_id": Uuid::now_v7(),
        "customer_id": customer,
        "amount_minor": minor,
        "currency": "EUR",
        "payment_method": method,
    })
}

#[actix_web::test]
async fn creating_a_payment_answers_201_with_the_public_json_contract() {
    let (_h, app) = app_with(|_| {}).await;
    let body = charge_body("alice", 4990, "tok_visa");
    let (status, headers, p) = call(&app, create(SERVICE, "k1", &body)).await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert_eq!(
        sorted_keys(&p),
        [
            "amount_minor",
            "created_at",
            "currency",
            "customer_id",
            "id",
            "order_id",
            "provider",
            "provider_ref",
            "refunded_minor",
            "refunds",
            "status",
            "updated_at"
        ]
    );
    assert_eq!(p["status"], "succeeded");
    assert_eq!(p["order_id"], body["order_id"]);
    assert_eq!(p["customer_id"], "alice");
    assert_eq!(p["amount_minor"], 4990);
    assert_eq!(p["refunded_minor"], 0);
    assert_eq!(p["currency"], "EUR");
    assert_eq!(p["provider"], "simulated");
    assert!(p["provider_ref"].as_str().unwrap().starts_with("pi_sim_"));
    assert_eq!(
        headers.get(header::LOCATION).and_then(|v| v.to_str().ok()),
        Some(format!("/api/v1/payments/{}", p["id"].as_str().unwrap()).as_str())
    );
    // An admin may charge as well.
    let admin = create(
        ("ada", "admin"),
        "k2",
        &charge_body("bob", 1, "tok_mastercard"),
    );
    let (status, _, _) = call(&app, admin).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[actix_web::test]
async fn a_decline_answers_201_with_status_failed_and_its_failure_code() {
    let (_h, app) = app_with(|_| {}).await;
    let p = created(&app, "d1", &charge_body("alice", 100, "tok_chargeDeclined")).await;
    assert_eq!(p["status"], "failed");
    assert_eq!(p["failure_code"], "card_declined");
}

#[actix_web::test]
async fn an_idempotent_replay_returns_the_same_answer_and_another_key_finds_the_same_payment() {
    let (_h, app) = app_with(|_| {}).await;
    let body = charge_body("alice", 100, "tok_visa");
    let (s1, _, first) = call(&app, create(SERVICE, "same", &body)).await;
    let (s2, headers, replay) = call(&app, create(SERVICE, "same", &body)).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(replay, first);
    assert_eq!(
        headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    // Another key for the same order: the order's payment, not a second charge.
    let (s3, _, other) = call(&app, create(SERVICE, "other", &body)).await;
    assert_eq!(s3, StatusCode::OK);
    assert_eq!(other["id"], first["id"]);
    // The same key with another body is refused.
    problem(
        &app,
        create(SERVICE, "same", &charge_body("alice", 1, "tok_visa")),
        422,
    )
    .await;
    // The same order with other details is a conflict.
    let mut changed = body.clone();
    changed["amount_minor"] = json!(999);
    let b5 = problem(&app, create(SERVICE, "third", &changed), 409).await;
    assert_eq!(b5["type"], "urn:agora:problem:order-already-charged");
}

#[actix_web::test]
async fn a_post_without_an_idempotency_key_is_refused_with_400() {
    let (_h, app) = app_with(|_| {}).await;
    problem(
        &app,
        post("/payments", SERVICE, None, &charge_body("a", 1, "tok_visa")),
        400,
    )
    .await;
    problem(
        &app,
        post(
            &format!("/payments/{}/refunds", Uuid::now_v7()),
            STAFF,
            None,
            &json!({"amount_minor": 1}),
        ),
        400,
    )
    .await;
}

#[actix_web::test]
async fn invalid_payment_bodies_answer_422_listing_every_field_and_change_nothing() {
    let (_h, app) = app_with(|_| {}).await;
    let bad = json!({
        "order_id": "not-a-uuid",
        "customer_id": "",
        "amount_minor": 0,
        "currency": "eur",
        "payment_method": "tok visa",
    });
    let b = problem(&app, create(SERVICE, "bad", &bad), 422).await;
    assert_eq!(
        sorted_keys(&b["errors"]),
        [
            "amount_minor",
            "currency",
            "customer_id",
            "order_id",
            "payment_method"
        ]
    );
    // Wrong JSON shape: 422 naming the field.
    problem(&app, create(SERVICE, "bad2", &json!({"order_id": 1})), 422).await;
    // A method that is neither a tok_ test token nor a pm_ PaymentMethod id,
    // and a field the API does not know.
    let b = problem(
        &app,
        create(SERVICE, "bad3", &charge_body("alice", 100, "visa")),
        422,
    )
    .await;
    assert!(b["errors"]["payment_method"].is_array(), "{b}");
    let mut extra = charge_body("alice", 100, "tok_visa");
    extra["amount"] = json!(100);
    let b = problem(&app, create(SERVICE, "bad4", &extra), 422).await;
    assert!(b["errors"]["amount"].is_array(), "{b}");
    let (_, _, list) = call(&app, get("/payments", STAFF)).await;
    assert_eq!(list["items"], json!([]), "nothing was created");
}

#[actix_web::test]
async fn customers_and_staff_cannot_create_payments() {
    let (_h, app) = app_with(|_| {}).await;
    for (i, who) in [ALICE, STAFF].into_iter().enumerate() {
        let key = format!("k{i}");
        problem(
            &app,
            create(who, &key, &charge_body("alice", 1, "tok_visa")),
            403,
        )
        .await;
    }
    problem(
        &app,
        test::TestRequest::get().uri("/payments").to_request(),
        401,
    )
    .await;
}

#[actix_web::test]
async fn a_customer_gets_404_for_another_customers_payment_and_staff_see_it() {
    let (_h, app) = app_with(|_| {}).await;
    let alices = created(&app, "a", &charge_body("alice", 100, "tok_visa")).await;
    let bobs = created(&app, "b", &charge_body("bob", 200, "tok_visa")).await;
    let path = |p: &Value| format!("/payments/{}", p["id"].as_str().unwrap());

    let (s, _, own) = call(&app, get(&path(&alices), ALICE)).await;
    assert_eq!(
        (s, own["id"].clone()),
        (StatusCode::OK, alices["id"].clone())
    );
    let b = problem(&app, get(&path(&bobs), ALICE), 404).await;
    let missing = problem(
        &app,
        get(&format!("/payments/{}", Uuid::now_v7()), ALICE),
        404,
    )
    .await;
    assert_eq!(
        b["detail"], missing["detail"],
        "indistinguishable from a missing one"
    );
    let (s, _, seen) = call(&app, get(&path(&bobs), STAFF)).await;
    assert_eq!(
        (s, seen["id"].clone()),
        (StatusCode::OK, bobs["id"].clone())
    );

    let (_, _, list) = call(&app, get("/payments", BOB)).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["id"], bobs["id"]);
    let by_order = format!("/payments?order_id={}", bobs["order_id"].as_str().unwrap());
    let (_, _, list) = call(&app, get(&by_order, ALICE)).await;
    assert_eq!(list["items"], json!([]));
    let (_, _, list) = call(&app, get(&by_order, SERVICE)).await;
    assert_eq!(list["items"][0]["id"], bobs["id"]);
}

#[actix_web::test]
async fn listing_pages_with_a_cursor_and_refuses_bad_parameters() {
    let (_h, app) = app_with(|_| {}).await;
    for i in 0..3 {
        let key = format!("k{i}");
        created(&app, &key, &charge_body("alice", 100, "tok_visa")).await;
    }
    let mut ids = Vec::new();
    let mut uri = "/payments?limit=2".to_owned();
    loop {
        let (s, _, page) = call(&app, get(&uri, ALICE)).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        ids.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/payments?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 3);
    for bad in [
        "/payments?limit=0",
        "/payments?limit=101",
        "/payments?cursor=zz",
        "/payments?order_id=x",
    ] {
        problem(&app, get(bad, STAFF), 422).await;
    }
}

#[actix_web::test]
async fn refunds_answer_201_appear_on_the_payment_and_never_exceed_it() {
    let (_h, app) = app_with(|_| {}).await;
    let p = created(&app, "p", &charge_body("alice", 1000, "tok_visa")).await;
    let id = p["id"].as_str().unwrap();
    let refunds = format!("/payments/{id}/refunds");

    let body = json!({"amount_minor": 400, "reason": "damaged"});
    let (s, _, r) = call(&app, post(&refunds, STAFF, Some("r1"), &body)).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["amount_minor"], 400);
    assert_eq!(r["currency"], "EUR");
    assert_eq!(r["reason"], "damaged");
    assert_eq!(r["payment_id"], p["id"]);

    let b = problem(
        &app,
        post(&refunds, STAFF, Some("r2"), &json!({"amount_minor": 601})),
        409,
    )
    .await;
    assert_eq!(b["type"], "urn:agora:problem:refund-exceeds-payment");
    problem(
        &app,
        post(&refunds, ALICE, Some("r3"), &json!({"amount_minor": 1})),
        403,
    )
    .await;
    let b = problem(
        &app,
        post(
            &refunds,
            STAFF,
            Some("r4"),
            &json!({"amount_minor": -1, "reason": " "}),
        ),
        422,
    )
    .await;
    assert!(
        b["errors"]["amount_minor"].is_array() && b["errors"]["reason"].is_array(),
        "{b}"
    );
    let missing = format!("/payments/{}/refunds", Uuid::now_v7());
    problem(
        &app,
        post(&missing, STAFF, Some("r5"), &json!({"amount_minor": 1})),
        404,
    )
    .await;

    let (s, _, r) = call(
        &app,
        post(
            &refunds,
            ("service:order", "service"),
            Some("r6"),
            &json!({"amount_minor": 600}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let (_, _, after) = call(&app, get(&format!("/payments/{id}"), ALICE)).await;
    assert_eq!(after["status"], "refunded");
    assert_eq!(after["refunded_minor"], 1000);
    assert_eq!(after["refunds"].as_array().unwrap().len(), 2);
}

#[actix_web::test]
async fn an_open_breaker_answers_503_with_retry_after_and_a_problem_body() {
    let (_h, app) = app_with(|s| {
        s.breaker.failure_threshold = 1;
        s.breaker.recovery_timeout_secs = 30;
    })
    .await;
    let (s, hd, b) = call(
        &app,
        create(
            SERVICE,
            "f",
            &charge_body("alice", 1, "tok_processing_error"),
        ),
    )
    .await;
    assert_problem(s, &hd, &b, 503);
    assert_eq!(
        hd.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(b["type"], "urn:agora:problem:payment-provider-unavailable");
    let (s, hd, b) = call(
        &app,
        create(SERVICE, "g", &charge_body("alice", 1, "tok_visa")),
    )
    .await;
    assert_problem(s, &hd, &b, 503);
    assert_eq!(
        hd.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()),
        Some("30")
    );
    assert!(!b.to_string().contains("simulated"), "no internals: {b}");
}

#[actix_web::test]
async fn wrong_methods_answer_405_and_unknown_ids_404() {
    let (_h, app) = app_with(|_| {}).await;
    for (method, path) in [
        (actix_web::http::Method::PUT, "/payments".to_owned()),
        (
            actix_web::http::Method::DELETE,
            format!("/payments/{}", Uuid::now_v7()),
        ),
        (
            actix_web::http::Method::GET,
            format!("/payments/{}/refunds", Uuid::now_v7()),
        ),
    ] {
        let req = test::TestRequest::default()
            .method(method.clone())
            .uri(&path)
            .insert_header(("x-test-sub", "sam"))
            .insert_header(("x-test-roles", "staff"))
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(
            res.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
    }
    problem(&app, get("/payments/not-a-uuid", STAFF), 404).await;
}

#[actix_web::test]
async fn fifty_concurrent_refund_requests_get_201_or_409_and_the_excess_change_nothing() {
    let (_h, app) = app_with(|_| {}).await;
    let p = created(&app, "p", &charge_body("alice", 1000, "tok_visa")).await;
    let refunds = format!("/payments/{}/refunds", p["id"].as_str().unwrap());
    let requests = (0..50).map(|i| {
        let key = format!("refund-{i}");
        call(
            &app,
            post(&refunds, STAFF, Some(&key), &json!({"amount_minor": 100})),
        )
    });
    let answers = futures_util::future::join_all(requests).await;
    let created = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::CREATED)
        .count();
    let conflicts: Vec<_> = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::CONFLICT)
        .collect();
    assert_eq!((created, conflicts.len()), (10, 40));
    for (s, hd, b) in conflicts {
        assert_problem(*s, hd, b, 409);
    }
    let (_, _, after) = call(
        &app,
        get(&format!("/payments/{}", p["id"].as_str().unwrap()), STAFF),
    )
    .await;
    assert_eq!(after["refunded_minor"], 1000);
    assert_eq!(after["status"], "refunded");
    assert_eq!(after["refunds"].as_array().unwrap().len(), 10);
}

#[actix_web::test]
async fn the_openapi_fragment_documents_every_endpoint_relative_to_api_v1() {
    let doc = serde_json::to_value(agora_payment::openapi()).unwrap();
    assert_eq!(
        sorted_keys(&doc["paths"]),
        ["/payments", "/payments/{id}", "/payments/{id}/refunds"]
    );
    let create = &doc["paths"]["/payments"]["post"];
    assert_eq!(create["security"], json!([{"bearer": []}]));
    assert!(create["responses"]["503"]["content"]["application/problem+json"].is_object());
    assert!(create["responses"]["201"]["content"]["application/json"].is_object());
    assert!(doc["paths"]["/payments"]["get"].is_object());
    assert!(doc["paths"]["/payments/{id}/refunds"]["post"]["responses"]["409"].is_object());
    for schema in [
        "PaymentBody",
        "RefundBody",
        "CreatePaymentBody",
        "CreateRefundBody",
        "PaymentList",
        "Problem",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    assert_eq!(agora_payment::ROUTES, ["/payments"]);
}
