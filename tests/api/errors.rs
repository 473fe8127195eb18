//! Every error class answers RFC 9457 problem+json with the right status.

use crate::helpers::{assert_problem, spawn_app};
use agora_kernel::Role;

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/no/such/thing"))
        .send()
        .await
        .unwrap();
    let body = assert_problem(res, 404).await;
    assert!(body["detail"].as_str().unwrap().contains("/no/such/thing"));
    let res = app
        .client
        .get(app.url("/api/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 404).await;
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
    let res = app.client.get(app.url("/api/v1/me")).send().await.unwrap();
    assert!(
        res.headers()
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
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
    let names: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["order", "inventory", "payment", "notification"]);
    assert!(
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["store"] == "sqlite")
    );
}
