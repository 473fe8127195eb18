//! `http::OptionalJson` and `http::NoBody`: an absent body is fine, a bad one
//! is refused with the status that names it and never reaches the handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use actix_web::{App, HttpResponse, test, web};
use agora_kernel::http::{NoBody, OptionalJson};
use agora_kernel::problem::{PROBLEM_JSON, Problem};
use serde::Deserialize;

use crate::helpers::content_type;

const LIMIT: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cancel {
    reason: Option<String>,
}

/// The app counts handler runs, so a test can tell that nothing acted.
async fn call(req: test::TestRequest) -> (StatusCode, Option<String>, String, usize) {
    let runs = Arc::new(AtomicUsize::new(0));
    let (cancel_runs, ship_runs) = (runs.clone(), runs.clone());
    let app = test::init_service(
        App::new()
            .app_data(agora_kernel::http::payload_config(LIMIT))
            .route(
                "/cancel",
                web::post().to(move |body: OptionalJson<Cancel>| {
                    let runs = cancel_runs.clone();
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let reason = body.into_inner().and_then(|b| b.reason);
                        HttpResponse::Ok().body(reason.unwrap_or_else(|| "-".to_owned()))
                    }
                }),
            )
            .route(
                "/ship",
                web::post().to(move |_: NoBody| {
                    let runs = ship_runs.clone();
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        HttpResponse::Ok().body("shipped")
                    }
                }),
            ),
    )
    .await;
    let res = test::call_service(&app, req.to_request()).await;
    let status = res.status();
    let content_type = content_type(&res);
    let body = String::from_utf8_lossy(&test::read_body(res).await).into_owned();
    (status, content_type, body, runs.load(Ordering::SeqCst))
}

fn post(path: &str, body: &str) -> test::TestRequest {
    test::TestRequest::post()
        .uri(path)
        .insert_header(ContentType::json())
        .set_payload(body.to_owned())
}

/// A refused request: problem+json with `status`, and the handler never ran.
async fn refused(req: test::TestRequest, status: u16) -> Problem {
    let (got, content_type, body, runs) = call(req).await;
    assert_eq!(got.as_u16(), status, "{body}");
    assert_eq!(content_type.as_deref(), Some(PROBLEM_JSON));
    assert_eq!(runs, 0, "the handler ran on a bad body");
    serde_json::from_str(&body).unwrap()
}

#[actix_web::test]
async fn no_body_or_a_good_one_reaches_the_handler() {
    let (status, _, body, runs) = call(test::TestRequest::post().uri("/cancel")).await;
    assert_eq!((status, body.as_str(), runs), (StatusCode::OK, "-", 1));
    let (status, _, body, _) = call(post("/cancel", "  \n")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "-"));
    let (status, _, body, _) = call(post("/cancel", r#"{"reason":"too late"}"#)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "too late"));
    let (status, _, body, _) = call(post("/cancel", "{}")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "-"));
    // JSON `null` is no body too (an `Option<T>` body, as the spec says).
    let (status, _, body, _) = call(post("/cancel", "null")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "-"));
}

#[actix_web::test]
async fn a_malformed_optional_body_is_a_400_and_nothing_runs() {
    let p = refused(post("/cancel", r#"{"reason":"#), 400).await;
    assert_eq!(p.problem_type, "urn:agora:problem:bad-request");
}

#[actix_web::test]
async fn an_optional_body_of_the_wrong_shape_or_with_an_unknown_field_is_a_422() {
    let p = refused(post("/cancel", r#"{"reason":5}"#), 422).await;
    assert_eq!(p.problem_type, "urn:agora:problem:validation");
    let p = refused(post("/cancel", r#"{"reasno":"typo"}"#), 422).await;
    assert_eq!(p.errors.keys().collect::<Vec<_>>(), ["reasno"]);
    refused(post("/cancel", "[]"), 422).await;
    refused(post("/cancel", r#""cancel""#), 422).await;
}

#[actix_web::test]
async fn an_optional_body_in_another_media_type_is_a_415_and_one_too_large_a_413() {
    let req = test::TestRequest::post()
        .uri("/cancel")
        .insert_header(ContentType::plaintext())
        .set_payload(r#"{"reason":"x"}"#);
    refused(req, 415).await;
    let without_type = test::TestRequest::post()
        .uri("/cancel")
        .set_payload(r#"{"reason":"x"}"#);
    refused(without_type, 415).await;
    let big = format!(r#"{{"reason":"{}"}}"#, "x".repeat(LIMIT));
    refused(post("/cancel", &big), 413).await;
}

#[actix_web::test]
async fn a_body_less_action_takes_nothing_or_an_empty_object_and_refuses_the_rest() {
    let (status, _, _, runs) = call(test::TestRequest::post().uri("/ship")).await;
    assert_eq!((status, runs), (StatusCode::OK, 1));
    let (status, _, _, runs) = call(post("/ship", "{}")).await;
    assert_eq!((status, runs), (StatusCode::OK, 1));
    refused(post("/ship", "{"), 400).await;
    let p = refused(post("/ship", r#"{"carrier":"dhl"}"#), 422).await;
    assert_eq!(p.errors.keys().collect::<Vec<_>>(), ["carrier"]);
}
