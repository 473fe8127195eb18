//! Request ids round-trip; metrics are exposed on the admin listener.

use agora_kernel::Role;

use crate::helpers::{header, spawn_app};
use crate::process::token;

#[tokio::test]
async fn a_given_request_id_is_returned_and_a_missing_one_is_generated() {
    let app = spawn_app().await;
    let res = app
        .get_with("/health/live", ("x-request-id", "req-abc-123"))
        .await;
    assert_eq!(res.headers()["x-request-id"], "req-abc-123");

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = app.get_with("/nowhere", ("traceparent", traceparent)).await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.headers()["x-request-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );

    let res = app.get("/health/live").await;
    let id = header(&res, "x-request-id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

#[tokio::test]
async fn made_up_methods_share_one_metric_series_and_every_request_is_counted() {
    let app = spawn_app().await;
    for method in ["BREW", "X-PROBE-1", "X-PROBE-2"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let res = app
            .client
            .request(method, app.url("/no-such-page"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
    }
    // Scraped at once: the requests counted on the workers' own shards are
    // all in it.
    let m = app.metrics().await;
    let line = "agora_http_requests_total{module=\"host\",route=\"unmatched\",method=\"other\",status=\"404\"} 3";
    assert!(m.lines().any(|l| l == line), "missing {line} in\n{m}");
    assert!(!m.contains("BREW") && !m.contains("X-PROBE"), "{m}");
}

#[tokio::test]
async fn requests_show_up_in_the_prometheus_metrics() {
    let app = spawn_app().await;
    let token = app.token("alice", &[Role::Customer]);
    assert_eq!(app.get_as("/api/v1/me", &token).await.status(), 200);
    assert_eq!(app.get("/api/v1/me").await.status(), 401);
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
    assert!(header(&res, "content-type").starts_with("text/plain"));
}

#[tokio::test]
async fn swagger_ui_and_the_spec_are_served_offline() {
    let app = spawn_app().await;
    let res = app.get("/swagger-ui/").await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("swagger"));
    let spec: serde_json::Value = app
        .get("/api-docs/openapi.json")
        .await
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
async fn the_root_and_swagger_ui_without_a_slash_redirect_to_swagger_ui() {
    let app = spawn_app().await;
    for path in ["/", "/swagger-ui"] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 302, "{path}");
        assert_eq!(res.headers()["location"], "/swagger-ui/", "{path}");
    }
    // Following it lands on Swagger UI.
    let follow = reqwest::Client::new();
    let res = follow.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("swagger"));
}

#[tokio::test]
async fn stopping_the_application_drains_and_returns() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health/live").await.status(), 200);
    let url = app.url("/health/live");
    app.stop.cancel();
    let result = tokio::time::timeout(std::time::Duration::from_secs(15), app.handle).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
    assert!(
        app.client.get(url).send().await.is_err(),
        "still accepting after stop"
    );
}

/// Every line the process logs while it handles a request — the access line
/// and the order transitions deep inside the saga — carries the request's id.
#[tokio::test]
async fn every_log_line_written_inside_a_request_carries_its_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agora.log");
    let mut cmd = crate::helpers::agora_command(dir.path());
    cmd.stdout(std::fs::File::create(&log).unwrap());
    let mut agora = crate::helpers::AgoraProcess::start(cmd);
    let (staff, alice) = (
        token("sam", &[Role::Staff]),
        token("alice", &[Role::Customer]),
    );
    let client = reqwest::Client::new();
    let post = |token: &str, path: &str, body: serde_json::Value, request_id: &str| {
        client
            .post(agora.url(path))
            .bearer_auth(token)
            .header("x-request-id", request_id)
            .header("idempotency-key", request_id)
            .json(&body)
            .send()
    };
    for (path, body) in [
        (
            "/api/v1/warehouses",
            serde_json::json!({"code": "BER", "name": "Berlin"}),
        ),
        (
            "/api/v1/products",
            serde_json::json!({"sku": "MUG", "name": "Mug", "price_minor": 850, "currency": "EUR"}),
        ),
        (
            "/api/v1/stock/receipts",
            serde_json::json!({"sku": "MUG", "warehouse": "BER", "quantity": 5}),
        ),
    ] {
        let res = post(&staff, path, body, "req-setup").await.unwrap();
        assert_eq!(res.status(), 201);
    }
    let res = post(
        &alice,
        "/api/v1/orders",
        serde_json::json!({
            "items": [{"sku": "MUG", "quantity": 1}],
            "shipping_address": {"name": "Alice", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
            "payment_method": "tok_visa",
        }),
        "req-place-1",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    let order: serde_json::Value = res.json().await.unwrap();
    assert_eq!(order["status"], "confirmed");
    let order_id = order["id"].as_str().unwrap();
    assert!(agora.stop().success());

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of_the_order: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["order_id"] == order_id).collect();
    let transitions: Vec<&str> = of_the_order
        .iter()
        .filter(|l| l["message"] == "order transition")
        .map(|l| l["to"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        transitions,
        ["awaiting_payment", "confirmed"],
        "{of_the_order:?}"
    );
    for line in &of_the_order {
        assert_eq!(line["request_id"], "req-place-1", "{line}");
        assert_eq!(line["route"], "/api/v1/orders", "{line}");
    }
    let completed: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "request completed")
        .collect();
    assert_eq!(completed.len(), 4);
    assert!(
        completed
            .iter()
            .all(|l| l["request_id"].is_string() && l["status"].is_u64())
    );
}

/// `pretty` is for people at a terminal: into a file or a pipe it writes no
/// ANSI colour codes.
#[test]
fn pretty_logs_carry_no_colour_codes_when_stdout_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agora.log");
    let mut cmd = crate::helpers::agora_command(dir.path());
    cmd.env("AGORA__LOG__FORMAT", "pretty")
        .stdout(std::fs::File::create(&log).unwrap());
    let mut agora = crate::helpers::AgoraProcess::start(cmd);
    agora.get_live();
    assert!(agora.stop().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("request completed"), "{text}");
    assert!(!text.contains('\u{1b}'), "ANSI escapes in a file:\n{text}");
}
