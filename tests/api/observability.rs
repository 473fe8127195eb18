//! Request ids round-trip; metrics are exposed on the admin listener.

use agora_kernel::Role;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_given_request_id_is_returned_and_a_missing_one_is_generated() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-abc-123");

    let res = app
        .client
        .get(app.url("/nowhere"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.headers()["x-request-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );

    let res = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

#[tokio::test]
async fn requests_show_up_in_the_prometheus_metrics() {
    let app = spawn_app().await;
    let token = app.token("alice", &[Role::Customer]);
    assert_eq!(app.get_as("/api/v1/me", &token).await.status(), 200);
    assert_eq!(
        app.client
            .get(app.url("/api/v1/me"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let m = app.metrics().await;
    for needle in [
        "agora_http_requests_total{module=\"host\",route=\"/api/v1/me\",method=\"GET\",status=\"200\"}",
        "agora_http_requests_total{module=\"host\",route=\"/api/v1/me\",method=\"GET\",status=\"401\"}",
        "agora_http_request_duration_seconds_bucket{module=\"host\",route=\"/api/v1/me\",method=\"GET\",le=\"0.1\"}",
        "agora_http_request_duration_seconds_count{module=\"host\",route=\"/api/v1/me\",method=\"GET\"}",
        "agora_http_requests_in_flight",
        "agora_outbox_backlog{module=\"order\"}",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    let res = app
        .client
        .get(format!("{}/metrics", app.admin_address))
        .send()
        .await
        .unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
}

#[tokio::test]
async fn swagger_ui_and_the_spec_are_served_offline() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/swagger-ui/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("swagger"));
    let spec: serde_json::Value = app
        .client
        .get(app.url("/api-docs/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(spec["paths"]["/api/v1/me"].is_object());
}

#[tokio::test]
async fn stopping_the_application_drains_and_returns() {
    let app = spawn_app().await;
    assert_eq!(
        app.client
            .get(app.url("/health/live"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let url = app.url("/health/live");
    app.stop.cancel();
    let result = tokio::time::timeout(std::time::Duration::from_secs(15), app.handle).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
    assert!(
        app.client.get(url).send().await.is_err(),
        "still accepting after stop"
    );
}
