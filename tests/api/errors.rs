//! Every error class answers RFC 9457 problem+json with the right status.

use crate::helpers::{assert_problem, each, header, spawn_app};
use agora_kernel::Role;

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() {
    let app = spawn_app().await;
    let body = assert_problem(app.get("/no/such/thing").await, 404).await;
    assert!(body["detail"].as_str().unwrap().contains("/no/such/thing"));
    assert_problem(app.get("/api/v1/nothing-here").await, 404).await;
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 405).await;
    let token = app.token("alice", &[Role::Customer]);
    let res = app
        .client
        .delete(app.url("/api/v1/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_problem(res, 405).await;
}

#[tokio::test]
async fn a_missing_token_is_a_401_problem_with_a_challenge() {
    let app = spawn_app().await;
    let res = app.get("/api/v1/me").await;
    assert!(header(&res, "www-authenticate").starts_with("Bearer"));
    assert_problem(res, 401).await;
}

#[tokio::test]
async fn a_missing_role_is_a_403_problem() {
    let app = spawn_app().await;
    for roles in [&[Role::Customer][..], &[Role::Staff], &[Role::Service]] {
        let token = app.token("bob", roles);
        let res = app.get_as("/api/v1/system/modules", &token).await;
        assert_problem(res, 403).await;
    }
    let admin = app.token("root", &[Role::Admin]);
    let res = app.get_as("/api/v1/system/modules", &admin).await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        each(&body, "name"),
        ["order", "inventory", "payment", "notification"]
    );
    assert!(each(&body, "store").iter().all(|s| *s == "sqlite"));
}

/// The body error classes, through a real JSON endpoint (`POST /api/v1/products`).
#[tokio::test]
async fn every_body_mistake_is_a_problem_with_its_own_status() {
    let app = crate::helpers::spawn_app_with(|s| s.http.body_limit_bytes = 1024).await;
    let staff = app.token("sam", &[Role::Staff]);
    let post = |body: &'static str, ct: &'static str| {
        app.client
            .post(app.url("/api/v1/products"))
            .bearer_auth(&staff)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    // Malformed JSON → 400.
    assert_problem(post("{\"sku\": ", "application/json").await.unwrap(), 400).await;
    // Wrong content type → 415.
    assert_problem(
        post("sku=A", "application/x-www-form-urlencoded")
            .await
            .unwrap(),
        415,
    )
    .await;
    // Well-formed but invalid → 422 listing each bad field, and nothing is created.
    let res = post(
        r#"{"sku": "bad sku!", "name": "", "price_minor": -5, "currency": "eur"}"#,
        "application/json",
    )
    .await
    .unwrap();
    let body = assert_problem(res, 422).await;
    let fields: Vec<&str> = body["errors"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for f in ["sku", "name", "price_minor", "currency"] {
        assert!(fields.contains(&f), "{f} not listed in {fields:?}");
    }
    let res = app.get_as("/api/v1/products", &staff).await;
    let list: serde_json::Value = res.json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    // Too large → 413.
    let big = format!(
        r#"{{"sku": "A", "name": "{}", "price_minor": 1, "currency": "EUR"}}"#,
        "x".repeat(4096)
    );
    let res = app
        .client
        .post(app.url("/api/v1/products"))
        .bearer_auth(&staff)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_problem(res, 413).await;
    // And a good one still works, with the module label on its metric.
    let res = post(
        r#"{"sku": "MUG-1", "name": "Mug", "price_minor": 850, "currency": "EUR"}"#,
        "application/json",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    let m = app.metrics().await;
    assert!(m.contains("agora_http_requests_total{module=\"inventory\",route=\"/api/v1/products\",method=\"POST\",status=\"201\"}"), "{m}");
}
