//! `http::json_config`: every way a JSON body can be wrong is answered with
//! problem+json and the status that names it.

use actix_web::body::MessageBody;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{App, HttpResponse, test, web};
use agora_kernel::problem::{PROBLEM_JSON, Problem};
use agora_kernel::testing::TestApp;
use serde::Deserialize;

use crate::helpers::content_type;

const LIMIT: usize = 64;

#[derive(Deserialize)]
struct NewItem {
    sku: String,
    quantity: u32,
}

async fn add_item(item: web::Json<NewItem>) -> HttpResponse {
    HttpResponse::Created().json(serde_json::json!({ "sku": item.sku, "quantity": item.quantity }))
}

async fn app() -> impl TestApp<Body = impl MessageBody> {
    test::init_service(
        App::new()
            .app_data(agora_kernel::http::json_config(LIMIT))
            .route("/items", web::post().to(add_item)),
    )
    .await
}

fn post_json(body: &str) -> actix_http::Request {
    test::TestRequest::post()
        .uri("/items")
        .insert_header(ContentType::json())
        .set_payload(body.to_owned())
        .to_request()
}

/// Send `req` and read the answer as a problem, checking its media type.
async fn problem_for(req: actix_http::Request) -> Problem {
    let app = app().await;
    let res = test::call_service(&app, req).await;
    let status = res.status();
    let content_type = content_type(&res);
    let problem: Problem = test::read_body_json(res).await;
    assert_eq!(content_type.as_deref(), Some(PROBLEM_JSON));
    assert_eq!(
        problem.status,
        status.as_u16(),
        "the body repeats the status"
    );
    problem
}

#[actix_web::test]
async fn a_well_formed_body_reaches_the_handler() {
    let app = app().await;

    let res = test::call_service(&app, post_json(r#"{"sku":"KET-1","quantity":2}"#)).await;

    assert_eq!(res.status(), StatusCode::CREATED);
    let body: serde_json::Value = test::read_body_json(res).await;
    assert_eq!(body, serde_json::json!({ "sku": "KET-1", "quantity": 2 }));
}

#[actix_web::test]
async fn malformed_json_is_a_400_problem() {
    let problem = problem_for(post_json(r#"{"sku": "KET-1", "#)).await;

    assert_eq!(problem.status, 400);
    assert_eq!(problem.problem_type, "urn:agora:problem:bad-request");
}

#[actix_web::test]
async fn json_missing_a_field_is_a_422_naming_that_field() {
    let problem = problem_for(post_json(r#"{"sku":"KET-1"}"#)).await;

    assert_eq!(problem.status, 422);
    assert_eq!(problem.problem_type, "urn:agora:problem:validation");
    assert_eq!(problem.errors.keys().collect::<Vec<_>>(), ["quantity"]);
}

#[actix_web::test]
async fn json_with_a_value_of_the_wrong_type_is_a_422() {
    let problem = problem_for(post_json(r#"{"sku":"KET-1","quantity":"two"}"#)).await;

    assert_eq!(problem.status, 422);
    assert_eq!(problem.problem_type, "urn:agora:problem:validation");
    assert_eq!(
        problem.errors.keys().collect::<Vec<_>>(),
        ["body"],
        "serde does not say which field"
    );
}

#[actix_web::test]
async fn a_rejected_value_is_never_reported_as_if_it_were_a_field_name() {
    let problem = problem_for(post_json(r#"{"sku":"KET-1","quantity":-1}"#)).await;

    assert_eq!(problem.status, 422);
    assert_eq!(
        problem.errors.keys().collect::<Vec<_>>(),
        ["body"],
        "errors are keyed by field, not by the offending value `-1`"
    );
    assert!(
        problem.errors["body"][0].contains("-1"),
        "the message still quotes the value"
    );
}

#[actix_web::test]
async fn a_body_sent_as_another_media_type_is_a_415_problem() {
    let req = test::TestRequest::post()
        .uri("/items")
        .insert_header(ContentType::plaintext())
        .set_payload(r#"{"sku":"KET-1","quantity":2}"#)
        .to_request();

    let problem = problem_for(req).await;

    assert_eq!(problem.status, 415);
    assert_eq!(
        problem.problem_type,
        "urn:agora:problem:unsupported-media-type"
    );
}

#[actix_web::test]
async fn a_body_over_the_limit_is_a_413_problem() {
    let long_sku = "K".repeat(LIMIT);
    let problem = problem_for(post_json(&format!(
        r#"{{"sku":"{long_sku}","quantity":2}}"#
    )))
    .await;

    assert_eq!(problem.status, 413);
    assert_eq!(problem.problem_type, "urn:agora:problem:payload-too-large");
}

#[actix_web::test]
async fn a_body_over_the_limit_without_a_content_length_is_a_413_problem() {
    let long_sku = "K".repeat(LIMIT);
    let mut req = post_json(&format!(r#"{{"sku":"{long_sku}","quantity":2}}"#));
    req.headers_mut().remove(header::CONTENT_LENGTH);

    let problem = problem_for(req).await;

    assert_eq!(problem.status, 413);
    assert_eq!(problem.problem_type, "urn:agora:problem:payload-too-large");
}
