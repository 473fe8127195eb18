//! Rate limits admit the burst, then answer 429 with headers, and recover.

use std::time::Duration;

use agora::settings::RouteQuota;
use agora_kernel::Role;

use crate::helpers::{assert_problem, header, spawn_app_with, spawn_app_with_rate_limit};

#[tokio::test]
async fn the_burst_is_admitted_then_429_with_headers_then_it_recovers() {
    let app = spawn_app_with_rate_limit(1, 3).await;
    let token = app.token("alice", &[Role::Customer]);
    for remaining in [2, 1, 0] {
        let res = app.get_as("/api/v1/me", &token).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["ratelimit-policy"], "\"default\";q=3;w=3");
        let rl = header(&res, "ratelimit");
        assert!(
            rl.starts_with(&format!("\"default\";r={remaining};t=")),
            "{rl}"
        );
    }
    let res = app.get_as("/api/v1/me", &token).await;
    let retry_after: u64 = header(&res, "retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry_after));
    assert!(header(&res, "ratelimit").contains("r=0"));
    assert!(res.headers().contains_key("ratelimit-policy"));
    assert_problem(res, 429).await;

    // Another principal has its own bucket.
    let other = app.token("bob", &[Role::Customer]);
    assert_eq!(app.get_as("/api/v1/me", &other).await.status(), 200);

    // One token refills every second (slow enough that a loaded CI machine
    // cannot refill one between the burst and the refused request).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.get_as("/api/v1/me", &token).await.status(), 200);

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("agora_rate_limit_rejections_total{route=\"/api/v1/me\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn anonymous_callers_are_limited_by_ip_and_routes_can_have_their_own_quota() {
    let app = spawn_app_with(|s| {
        s.rate_limit.per_second = 1000;
        s.rate_limit.burst = 1000;
        s.rate_limit.routes = vec![RouteQuota {
            method: "GET".into(),
            route: "/api/v1/me".into(),
            per_second: 1,
            burst: 2,
        }];
    })
    .await;
    // Anonymous: keyed by IP, even though each answer is a 401.
    for _ in 0..2 {
        let res = app.get("/api/v1/me").await;
        assert_eq!(res.status(), 401);
        assert_eq!(
            res.headers()["ratelimit-policy"],
            "\"GET /api/v1/me\";q=2;w=2"
        );
    }
    assert_problem(app.get("/api/v1/me").await, 429).await;
    // The route's quota does not touch other routes.
    let admin = app.token("root", &[Role::Admin]);
    let res = app.get_as("/api/v1/system/modules", &admin).await;
    assert_eq!(res.status(), 200);
    assert!(header(&res, "ratelimit-policy").starts_with("\"default\""));
}

/// `agora_rate_limit_keys` follows the key table as requests arrive (a
/// process of its own, so no other test's limiter touches the gauge).
#[tokio::test]
async fn the_key_gauge_is_live_and_not_only_set_at_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = crate::helpers::agora_command(dir.path());
    cmd.env("AGORA__RATE_LIMIT__PER_SECOND", "1")
        .env("AGORA__RATE_LIMIT__BURST", "2")
        .env("AGORA__RATE_LIMIT__EVICT_EVERY_SECS", "3600")
        .stdout(std::process::Stdio::null());
    let mut agora = crate::helpers::AgoraProcess::start(cmd);
    let client = reqwest::Client::new();
    let mut rejected = 0;
    for sub in ["alice", "bob", "carol"] {
        let token = crate::process::token(sub, &[Role::Customer]);
        for _ in 0..20 {
            let res = client
                .get(agora.url("/api/v1/me"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            rejected += u32::from(res.status() == 429);
        }
    }
    assert!(rejected >= 3 * 17, "the limiter refused only {rejected}");
    let metrics = agora.metrics(&client).await;
    let keys = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agora_rate_limit_keys "))
        .unwrap_or("missing");
    assert_eq!(keys, "3", "{metrics}");
    assert!(agora.stop().success(), "agora did not stop cleanly");
}
