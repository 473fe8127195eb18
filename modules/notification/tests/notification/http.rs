//! The HTTP endpoints through `Module::configure` with actix's test server:
//! roles, 404 for other customers' notifications, problem+json bodies, 422
//! listing fields, cursor pagination, preferences and the staff retry.

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{App, test};
use agora_kernel::Module;
use agora_kernel::problem::PROBLEM_JSON;
use agora_kernel::testing::TestApp;
use agora_notification::NotificationModule;
use agora_notification::domain::ports::DeliveryError;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{FakeChannel, TestModule};

async fn app(module: Arc<NotificationModule>) -> impl TestApp<Body = impl MessageBody> {
    test::init_service(
        App::new()
            .wrap(from_fn(agora_kernel::testing::principal_from_test_headers))
            .configure(agora_kernel::http::extractors(64 * 1024))
            .configure(move |cfg| module.configure(cfg)),
    )
    .await
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
}

async fn call(app: &impl TestApp, req: test::TestRequest) -> Answer {
    let answer = agora_kernel::testing::call(app, req.to_request()).await;
    Answer {
        status: answer.status,
        content_type: answer.header("content-type").unwrap_or("").to_owned(),
        body: serde_json::from_slice(&answer.body).unwrap_or(Value::Null),
    }
}

fn as_who(req: test::TestRequest, sub: &str, roles: &str) -> test::TestRequest {
    req.insert_header(("x-test-sub", sub))
        .insert_header(("x-test-roles", roles))
}

fn get(uri: &str, sub: &str, roles: &str) -> test::TestRequest {
    as_who(test::TestRequest::get().uri(uri), sub, roles)
}

fn put(uri: &str, sub: &str, roles: &str) -> test::TestRequest {
    as_who(test::TestRequest::put().uri(uri), sub, roles)
}

fn post(uri: &str, sub: &str, roles: &str) -> test::TestRequest {
    as_who(test::TestRequest::post().uri(uri), sub, roles)
}

fn assert_problem(a: &Answer, status: u16) {
    assert_eq!(a.status.as_u16(), status, "{}", a.body);
    assert_eq!(a.content_type, PROBLEM_JSON);
    assert_eq!(a.body["status"], status);
    assert!(
        a.body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:agora:problem:")
    );
    assert!(a.body["title"].is_string() && a.body["detail"].is_string());
}

/// A module with notifications: alice 3 (confirmed, shipped, delivered), bob 1;
/// and the app serving it (keep the module: it owns the database).
async fn seeded() -> (TestModule, impl TestApp<Body = impl MessageBody>) {
    let m = TestModule::with_fake(&FakeChannel::new()).await;
    for (event_type, customer) in [
        ("order.confirmed.v1", "alice"),
        ("order.shipped.v1", "alice"),
        ("order.delivered.v1", "alice"),
        ("order.confirmed.v1", "bob"),
    ] {
        m.publish_order(event_type, Uuid::now_v7(), customer).await;
    }
    let app = app(m.module.clone()).await;
    (m, app)
}

#[actix_web::test]
async fn a_customer_lists_only_their_own_notifications_in_the_public_shape() {
    let (_m, app) = seeded().await;
    let a = call(&app, get("/notifications", "alice", "customer")).await;
    assert_eq!(a.status, StatusCode::OK);
    let items = a.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|i| i["customer_id"] == "alice"));
    assert_eq!(a.body["next_cursor"], Value::Null);
    let first = &items[0];
    assert_eq!(first["template"], "order_delivered", "newest first");
    for field in [
        "id",
        "customer_id",
        "channel",
        "template",
        "status",
        "recipient",
        "subject",
        "attempts",
        "event_id",
        "created_at",
    ] {
        assert!(first.get(field).is_some(), "{field} missing in {first}");
    }
    assert_eq!(first["channel"], "email");
    assert_eq!(first["status"], "pending");
    assert_eq!(first["attempts"], 0);
    assert!(first.get("sent_at").is_none() && first.get("last_error").is_none());

    let other = call(
        &app,
        get("/notifications?customer_id=bob", "alice", "customer"),
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);
    assert!(
        other.body["items"].as_array().unwrap().is_empty(),
        "never another customer's"
    );
}

#[actix_web::test]
async fn staff_list_everyone_with_filters_and_cursor_pages() {
    let (_m, app) = seeded().await;
    let all = call(&app, get("/notifications", "sam", "staff")).await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 4);
    let bob = call(
        &app,
        get(
            "/notifications?customer_id=bob&channel=email&status=pending",
            "sam",
            "staff",
        ),
    )
    .await;
    let items = bob.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["customer_id"], "bob");
    let none = call(&app, get("/notifications?status=dead", "ada", "admin")).await;
    assert!(none.body["items"].as_array().unwrap().is_empty());

    let mut seen = vec![];
    let mut uri = "/notifications?limit=3".to_owned();
    loop {
        let page = call(&app, get(&uri, "sam", "staff")).await;
        assert_eq!(page.status, StatusCode::OK);
        seen.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].clone()),
        );
        match page.body["next_cursor"].as_str() {
            Some(c) => uri = format!("/notifications?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4);
    seen.dedup();
    assert_eq!(seen.len(), 4, "no item twice");
}

#[actix_web::test]
async fn bad_list_parameters_answer_422_listing_each_field() {
    let (_m, app) = seeded().await;
    let a = call(
        &app,
        get(
            "/notifications?limit=0&status=lost&channel=fax&cursor=zzz",
            "sam",
            "staff",
        ),
    )
    .await;
    assert_problem(&a, 422);
    for field in ["limit", "status", "channel", "cursor"] {
        assert!(a.body["errors"][field].is_array(), "{field} in {}", a.body);
    }
}

#[actix_web::test]
async fn a_notification_is_visible_to_its_owner_and_staff_and_404_to_anyone_else() {
    let (_m, app) = seeded().await;
    let list = call(&app, get("/notifications", "alice", "customer")).await;
    let id = list.body["items"][0]["id"].as_str().unwrap().to_owned();
    let uri = format!("/notifications/{id}");

    let own = call(&app, get(&uri, "alice", "customer")).await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.body["id"], id.as_str());
    assert!(own.body["history"].as_array().unwrap().is_empty());
    assert!(
        own.body["body"]
            .as_str()
            .unwrap()
            .contains("Total: 29.99 EUR")
    );
    let by_staff = call(&app, get(&uri, "sam", "staff")).await;
    assert_eq!(by_staff.status, StatusCode::OK);

    let other = call(&app, get(&uri, "bob", "customer")).await;
    assert_problem(&other, 404);
    let nowhere = format!("/notifications/{}", Uuid::now_v7());
    let missing = call(&app, get(&nowhere, "alice", "customer")).await;
    assert_problem(&missing, 404);
    assert_eq!(
        other.body["detail"], missing.body["detail"],
        "indistinguishable"
    );
    let garbage = call(&app, get("/notifications/not-an-id", "alice", "customer")).await;
    assert_problem(&garbage, 404);
}

#[actix_web::test]
async fn without_a_principal_the_answer_is_401_and_a_service_caller_is_forbidden() {
    let (_m, app) = seeded().await;
    let a = call(&app, test::TestRequest::get().uri("/notifications")).await;
    assert_problem(&a, 401);
    let s = call(&app, get("/notifications", "service:order", "service")).await;
    assert_problem(&s, 403);
    let wrong = call(
        &app,
        as_who(
            test::TestRequest::delete().uri("/notifications"),
            "sam",
            "staff",
        ),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[actix_web::test]
async fn preferences_default_to_the_known_address_and_can_be_replaced() {
    let (m, app) = seeded().await;
    let fresh = call(&app, get("/notifications/preferences", "zoe", "customer")).await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(
        fresh.body,
        serde_json::json!({"email": "zoe@token.example", "channels": {"email": true, "sms": false, "push": false}}),
        "the token's e-mail claim when no event carried one"
    );
    let alice = call(&app, get("/notifications/preferences", "alice", "customer")).await;
    assert_eq!(
        alice.body["email"], "alice@example.com",
        "the address from order events"
    );

    let body = serde_json::json!({"email": "alice@new.example", "phone": "+4915123456789",
        "channels": {"email": false, "sms": true, "push": false}});
    let put = call(
        &app,
        put("/notifications/preferences", "alice", "customer").set_json(&body),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(put.body, body);
    let again = call(&app, get("/notifications/preferences", "alice", "customer")).await;
    assert_eq!(again.body, body);

    m.publish_order("order.shipped.v1", Uuid::now_v7(), "alice")
        .await;
    let list = call(&app, get("/notifications?limit=2", "alice", "customer")).await;
    let mut newest: Vec<(String, String)> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["channel"].as_str().unwrap().to_owned(),
                i["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    newest.sort();
    assert_eq!(
        newest,
        vec![
            ("email".into(), "skipped".into()),
            ("sms".into(), "pending".into())
        ]
    );
}

#[actix_web::test]
async fn bad_preferences_answer_422_listing_fields_and_staff_have_none() {
    let (_m, app) = seeded().await;
    let body = serde_json::json!({"email": "nope", "phone": "12", "channels": {"push": true}});
    let a = call(
        &app,
        put("/notifications/preferences", "alice", "customer").set_json(&body),
    )
    .await;
    assert_problem(&a, 422);
    for field in ["email", "phone", "channels.push"] {
        assert!(a.body["errors"][field].is_array(), "{field} in {}", a.body);
    }
    let malformed = call(
        &app,
        put("/notifications/preferences", "alice", "customer")
            .insert_header(("content-type", "application/json"))
            .set_payload("{"),
    )
    .await;
    assert_problem(&malformed, 400);
    let staff = call(&app, get("/notifications/preferences", "sam", "staff")).await;
    assert_problem(&staff, 403);
}

#[actix_web::test]
async fn staff_put_a_dead_notification_back_in_the_queue() {
    let fake = FakeChannel::new().always(Err(DeliveryError::Permanent("550 no such user".into())));
    let m = TestModule::with_fake(&fake).await;
    m.publish_order("order.confirmed.v1", Uuid::now_v7(), "alice")
        .await;
    m.module.service().deliver_due().await.unwrap();
    let app = app(m.module.clone()).await;
    let list = call(&app, get("/notifications", "alice", "customer")).await;
    let item = &list.body["items"][0];
    assert_eq!(item["status"], "dead");
    assert_eq!(item["last_error"], "550 no such user");
    let id = item["id"].as_str().unwrap().to_owned();
    let detail = call(
        &app,
        get(&format!("/notifications/{id}"), "alice", "customer"),
    )
    .await;
    assert_eq!(detail.body["history"][0]["outcome"], "rejected");
    assert_eq!(detail.body["history"][0]["error"], "550 no such user");

    let uri = format!("/notifications/{id}/retry");
    let by_customer = call(&app, post(&uri, "alice", "customer")).await;
    assert_problem(&by_customer, 403);
    let ok = call(&app, post(&uri, "sam", "staff")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.body["status"], "pending");
    let twice = call(&app, post(&uri, "sam", "staff")).await;
    assert_problem(&twice, 409);
    let nowhere = format!("/notifications/{}/retry", Uuid::now_v7());
    let missing = call(&app, post(&nowhere, "sam", "staff")).await;
    assert_problem(&missing, 404);
}
