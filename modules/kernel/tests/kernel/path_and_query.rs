//! `http::path_config` and `http::query_config`: a path segment that does not
//! parse names no resource (404); a query string that does not parse is a 422.

use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, test, web};
use agora_kernel::problem::{PROBLEM_JSON, Problem};
use serde::Deserialize;

use crate::helpers::content_type;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: u32,
}

async fn show(id: web::Path<u32>, page: web::Query<Page>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "id": id.into_inner(), "limit": page.limit }))
}

/// A GET of `uri` from an app with the kernel's path and query configs.
async fn get(uri: &str) -> ServiceResponse {
    let app = test::init_service(
        App::new()
            .app_data(agora_kernel::http::path_config())
            .app_data(agora_kernel::http::query_config())
            .route("/things/{id}", web::get().to(show)),
    )
    .await;
    test::call_service(&app, test::TestRequest::get().uri(uri).to_request()).await
}

async fn problem_for(uri: &str) -> Problem {
    let res = get(uri).await;
    assert_eq!(content_type(&res).as_deref(), Some(PROBLEM_JSON));
    test::read_body_json(res).await
}

#[actix_web::test]
async fn a_path_and_query_that_parse_reach_the_handler() {
    let res = get("/things/7?limit=5").await;

    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value = test::read_body_json(res).await;
    assert_eq!(body, serde_json::json!({ "id": 7, "limit": 5 }));
}

#[actix_web::test]
async fn a_path_segment_that_does_not_parse_is_a_404_problem() {
    let problem = problem_for("/things/seven?limit=5").await;

    assert_eq!(problem.status, 404);
    assert_eq!(problem.problem_type, "urn:agora:problem:not-found");
}

#[actix_web::test]
async fn a_query_string_that_does_not_parse_is_a_422_problem() {
    let problem = problem_for("/things/7?limit=many").await;

    assert_eq!(problem.status, 422);
    assert_eq!(problem.problem_type, "urn:agora:problem:validation");
    assert!(problem.errors.contains_key("query"));
}

#[actix_web::test]
async fn an_unknown_or_repeated_query_parameter_is_a_422_naming_it() {
    let problem = problem_for("/things/7?limit=5&lmit=6").await;

    assert_eq!(problem.status, 422);
    assert!(problem.errors.contains_key("lmit"), "{problem:?}");

    let problem = problem_for("/things/7?limit=5&limit=6").await;
    assert_eq!(problem.status, 422);
    assert!(problem.errors.contains_key("limit"), "{problem:?}");
}
