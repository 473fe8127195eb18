//! The `Idempotency-Key` middleware in front of a handler that creates things,
//! with its keys in a real SQLite store, and the store's own contract.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpMessage, HttpResponse, test, web};
use agora_kernel::idempotency::{
    self, Begin, Idempotency, IdempotencyConfig, IdempotencyScope, IdempotencyStore, StoredResponse,
};
use agora_kernel::problem::PROBLEM_JSON;
use agora_kernel::testing::{Answer, TestApp, call};
use agora_kernel::{Principal, Role};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::helpers::TestDb;

/// What the handler behind the middleware does and how often it ran.
#[derive(Default)]
struct Things {
    calls: AtomicUsize,
    delay_ms: AtomicU64,
    fail_next: AtomicBool,
}

impl Things {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[derive(Deserialize)]
struct NewThing {
    name: String,
}

async fn create_thing(things: web::Data<Things>, body: web::Json<NewThing>) -> HttpResponse {
    things.calls.fetch_add(1, Ordering::SeqCst);
    let delay = things.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if things.fail_next.swap(false, Ordering::SeqCst) {
        return HttpResponse::InternalServerError()
            .json(serde_json::json!({ "error": "the database went away" }));
    }
    let id = Uuid::new_v4();
    HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/things/{id}")))
        .json(serde_json::json!({ "id": id, "name": body.name }))
}

async fn pay_order(things: web::Data<Things>, order: web::Path<u32>) -> HttpResponse {
    things.calls.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created()
        .json(serde_json::json!({ "order": order.into_inner(), "payment": Uuid::new_v4() }))
}

/// Stands in for the gateway: the caller named by `x-test-sub` is authenticated.
async fn principal_from_test_header(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let subject = req
        .headers()
        .get("x-test-sub")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(subject) = subject {
        req.extensions_mut()
            .insert(Principal::new(subject, [Role::Customer]));
    }
    next.call(req).await
}

/// A POST to pay `order` by alice with `key` and an empty JSON body.
fn pay(order: u32, key: &str) -> actix_http::Request {
    test::TestRequest::post()
        .uri(&format!("/orders/{order}/pay"))
        .insert_header(("x-test-sub", "alice"))
        .insert_header(header::ContentType::json())
        .insert_header((idempotency::IDEMPOTENCY_KEY, key))
        .set_payload("{}")
        .to_request()
}

fn config() -> IdempotencyConfig {
    IdempotencyConfig {
        lock_timeout: Duration::from_secs(60),
        ..IdempotencyConfig::default()
    }
}

/// A fresh key store, and the handlers as `things` says behind the middleware
/// with `config`; the database lives as long as the returned `TestDb`.
async fn start(
    config: IdempotencyConfig,
    things: Things,
) -> (
    TestDb,
    web::Data<Things>,
    impl TestApp<Body = impl MessageBody>,
) {
    let db = TestDb::new().await;
    let things = web::Data::new(things);
    let store = Arc::new(idempotency::sqlite::Store::new(db.pool.clone()));
    let app = test::init_service(
        App::new()
            .wrap(from_fn(principal_from_test_header))
            .app_data(things.clone())
            .app_data(agora_kernel::http::json_config(64 * 1024))
            .service(
                web::resource("/things")
                    .wrap(Idempotency::new(store.clone(), config.clone()))
                    .route(web::post().to(create_thing)),
            )
            .service(
                web::resource("/orders/{id}/pay")
                    .wrap(Idempotency::new(store, config))
                    .route(web::post().to(pay_order)),
            ),
    )
    .await;
    (db, things, app)
}

/// A POST of `body` to /things by `subject`, with `key` when given.
fn post(subject: &str, key: Option<&str>, body: &str) -> actix_http::Request {
    let mut req = test::TestRequest::post()
        .uri("/things")
        .insert_header(("x-test-sub", subject))
        .insert_header(header::ContentType::json())
        .set_payload(body.to_owned());
    if let Some(key) = key {
        req = req.insert_header((idempotency::IDEMPOTENCY_KEY, key));
    }
    req.to_request()
}

/// Alice's POST of `body` to /things with the key `order-1`.
fn alices_order(body: &str) -> actix_http::Request {
    post("alice", Some("order-1"), body)
}

/// What these tests read off an answer of the middleware.
trait Idempotent {
    fn replayed(&self) -> bool;
    /// The `type` of a problem+json body.
    fn problem_type(&self) -> String;
    /// A problem+json answer with `status` and `urn:agora:problem:<name>`.
    fn assert_problem(&self, status: StatusCode, name: &str);
}

impl Idempotent for Answer {
    fn replayed(&self) -> bool {
        self.header(idempotency::REPLAYED_HEADER) == Some("true")
    }

    fn problem_type(&self) -> String {
        assert_eq!(self.header("content-type"), Some(PROBLEM_JSON));
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }

    fn assert_problem(&self, status: StatusCode, name: &str) {
        assert_eq!(self.status, status);
        assert_eq!(self.problem_type(), format!("urn:agora:problem:{name}"));
    }
}

const BODY: &str = r#"{"name":"kettle"}"#;

/// Malformed: longer than 255 characters, or not visible ASCII.
#[actix_web::test]
async fn a_post_with_a_missing_or_malformed_key_is_rejected_when_keys_are_required() {
    let (_db, things, app) = start(config(), Things::default()).await;

    let too_long = "k".repeat(256);
    for key in [None, Some(too_long.as_str()), Some("two words")] {
        let answer = call(&app, post("alice", key, BODY)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "key {key:?}");
        answer.assert_problem(StatusCode::BAD_REQUEST, "bad-request");
    }
    assert_eq!(things.calls(), 0);
}

#[actix_web::test]
async fn a_post_without_a_key_runs_unprotected_when_keys_are_optional() {
    let optional = IdempotencyConfig {
        required: false,
        ..config()
    };
    let (_db, things, app) = start(optional, Things::default()).await;

    let first = call(&app, post("alice", None, BODY)).await;
    let second = call(&app, post("alice", None, BODY)).await;

    assert_eq!(
        (first.status, second.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_ne!(first.json()["id"], second.json()["id"]);
    assert_eq!(things.calls(), 2);
}

#[actix_web::test]
async fn repeating_a_request_with_the_same_key_and_body_replays_the_first_answer() {
    let (_db, things, app) = start(config(), Things::default()).await;

    let first = call(&app, alices_order(BODY)).await;
    let again = call(&app, alices_order(BODY)).await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(
        first.json()["name"],
        "kettle",
        "the handler read the body the middleware had read"
    );
    assert!(!first.replayed());
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(again.header("content-type"), Some("application/json"));
    assert_eq!(things.calls(), 1);
}

#[actix_web::test]
async fn reusing_a_key_with_a_different_body_is_rejected() {
    let (_db, things, app) = start(config(), Things::default()).await;

    let first = call(&app, alices_order(BODY)).await;
    let other = call(&app, alices_order(r#"{"name":"toaster"}"#)).await;

    assert_eq!(first.status, StatusCode::CREATED);
    other.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
    assert_eq!(things.calls(), 1);
}

#[actix_web::test]
async fn the_same_key_sent_by_another_principal_is_another_request() {
    let (_db, things, app) = start(config(), Things::default()).await;

    let alices = call(&app, alices_order(BODY)).await;
    let bobs = call(&app, post("bob", Some("order-1"), BODY)).await;
    let alices_again = call(&app, alices_order(BODY)).await;

    assert_eq!(bobs.status, StatusCode::CREATED);
    assert!(!bobs.replayed());
    assert_ne!(bobs.json()["id"], alices.json()["id"]);
    assert!(alices_again.replayed());
    assert_eq!(
        alices_again.body, alices.body,
        "bob did not overwrite alice's answer"
    );
    assert_eq!(things.calls(), 2);
}

#[actix_web::test]
async fn reusing_a_key_on_another_resource_of_the_same_route_never_replays_the_first_resources_answer()
 {
    let (_db, things, app) = start(config(), Things::default()).await;

    let first = call(&app, pay(1, "pay-1")).await;
    let other = call(&app, pay(2, "pay-1")).await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.json()["order"], 1);
    assert!(
        !other.replayed(),
        "order 2 must not be answered with order 1's payment"
    );
    other.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
    assert_eq!(things.calls(), 1);
}

#[actix_web::test]
async fn a_second_request_while_the_first_is_still_running_gets_409() {
    let slow = Things {
        delay_ms: AtomicU64::new(300),
        ..Things::default()
    };
    let (_db, things, app) = start(config(), slow).await;

    let (a, b) = futures_util::future::join(
        call(&app, alices_order(BODY)),
        call(&app, alices_order(BODY)),
    )
    .await;

    let (done, busy) = if a.status == StatusCode::CREATED {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(done.status, StatusCode::CREATED);
    busy.assert_problem(StatusCode::CONFLICT, "idempotency-key-in-flight");
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert_eq!(things.calls(), 1);

    let retry = call(&app, alices_order(BODY)).await;
    assert!(retry.replayed());
    assert_eq!(retry.body, done.body);
}

#[actix_web::test]
async fn a_server_error_releases_the_key_so_a_retry_runs_the_handler_again() {
    let failing = Things {
        fail_next: AtomicBool::new(true),
        ..Things::default()
    };
    let (_db, things, app) = start(config(), failing).await;

    let failed = call(&app, alices_order(BODY)).await;
    let retried = call(&app, alices_order(BODY)).await;

    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(retried.status, StatusCode::CREATED);
    assert!(!retried.replayed());
    assert_eq!(things.calls(), 2);
}

#[actix_web::test]
async fn a_client_error_answer_is_kept_and_replayed_like_any_other() {
    let (_db, things, app) = start(config(), Things::default()).await;
    let no_name = r#"{"title":"kettle"}"#;

    let rejected = call(&app, alices_order(no_name)).await;
    let again = call(&app, alices_order(no_name)).await;

    assert_eq!(rejected.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(again.replayed());
    assert_eq!(again.body, rejected.body);
    assert_eq!(again.header("content-type"), Some(PROBLEM_JSON));
    assert_eq!(things.calls(), 0);
}

#[actix_web::test]
async fn a_key_older_than_its_ttl_is_forgotten() {
    let short = IdempotencyConfig {
        ttl: Duration::from_millis(50),
        ..config()
    };
    let (_db, things, app) = start(short, Things::default()).await;

    let first = call(&app, alices_order(BODY)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let later = call(&app, alices_order(BODY)).await;

    assert_eq!(later.status, StatusCode::CREATED);
    assert!(!later.replayed());
    assert_ne!(later.json()["id"], first.json()["id"]);
    assert_eq!(things.calls(), 2);
}

fn scope(key: &str) -> IdempotencyScope {
    IdempotencyScope {
        principal: "alice".to_owned(),
        method: "POST".to_owned(),
        route: "/things".to_owned(),
        key: key.to_owned(),
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);
const MINUTE: Duration = Duration::from_secs(60);

/// `store.begin` with a day's TTL: what the store found for `k` at `now`.
async fn begin(
    store: &impl IdempotencyStore,
    k: &IdempotencyScope,
    hash: &str,
    now: DateTime<Utc>,
    lock_timeout: Duration,
) -> Begin {
    store.begin(k, hash, now, DAY, lock_timeout).await.unwrap()
}

/// A fresh SQLite key store; the database lives as long as the `TestDb`.
async fn key_store() -> (TestDb, idempotency::sqlite::Store) {
    let db = TestDb::new().await;
    let store = idempotency::sqlite::Store::new(db.pool.clone());
    (db, store)
}

#[tokio::test]
async fn an_unfinished_key_older_than_the_lock_timeout_is_taken_over() {
    let (_db, store) = key_store().await;
    let k = scope("order-1");

    assert_eq!(
        begin(&store, &k, "h", Utc::now(), Duration::ZERO).await,
        Begin::Started
    );
    assert_eq!(
        begin(&store, &k, "h", Utc::now(), MINUTE).await,
        Begin::InFlight
    );

    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        begin(&store, &k, "h", Utc::now(), Duration::ZERO).await,
        Begin::Started
    );
    assert_eq!(
        begin(&store, &k, "h", Utc::now(), MINUTE).await,
        Begin::InFlight,
        "the new owner holds the key for a fresh lock timeout"
    );
}

#[tokio::test]
async fn a_completed_key_replays_its_answer_and_cannot_be_released() {
    let (_db, store) = key_store().await;
    let k = scope("order-1");
    let answer = StoredResponse {
        status: 201,
        content_type: Some("application/json".to_owned()),
        location: Some("/things/1".to_owned()),
        body: r#"{"id":1}"#.to_owned(),
    };

    assert_eq!(
        begin(&store, &k, "h", Utc::now(), MINUTE).await,
        Begin::Started
    );
    store.complete(&k, &answer, Utc::now()).await.unwrap();
    store.release(&k).await.unwrap();

    assert_eq!(
        begin(&store, &k, "h", Utc::now(), MINUTE).await,
        Begin::Replay(answer)
    );
    assert_eq!(
        begin(&store, &k, "other", Utc::now(), MINUTE).await,
        Begin::Mismatch
    );
}

#[tokio::test]
async fn purging_deletes_only_the_keys_created_before_the_cutoff() {
    let (_db, store) = key_store().await;
    let now = Utc::now();
    let (old, new) = (scope("old"), scope("new"));
    let two_hours_ago = now - chrono::Duration::hours(2);
    assert_eq!(
        begin(&store, &old, "h", two_hours_ago, DAY).await,
        Begin::Started
    );
    assert_eq!(begin(&store, &new, "h", now, DAY).await, Begin::Started);

    for (cutoff_hours_ago, purged) in [(3, 0), (1, 1)] {
        let cutoff = now - chrono::Duration::hours(cutoff_hours_ago);
        assert_eq!(store.purge_older_than(cutoff).await.unwrap(), purged);
    }

    assert_eq!(
        begin(&store, &old, "h", now, DAY).await,
        Begin::Started,
        "the old key is gone"
    );
    assert_eq!(
        begin(&store, &new, "h", now, DAY).await,
        Begin::InFlight,
        "the new key stays"
    );
}
