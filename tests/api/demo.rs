//! `agora demo`: the catalogue arrives over the HTTP API (or through an
//! in-process agora when nothing serves), twice changes nothing, and the
//! printed tokens work.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use agora::demo::{PRODUCTS, WAREHOUSES};
use agora_kernel::Role;
use serde_json::Value;

use crate::helpers::{TestApp, agora_command, spawn_app_with, spawn_app_with_rate_limit};

/// Run the binary's `agora demo` with `args` and extra `env` (off the async
/// runtime: the app under test serves on it).
async fn demo(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = agora_command(dir);
    cmd.arg("demo").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// Exit 0, three token lines on stdout, two lines on stderr; the tokens.
fn succeeded(out: &Output) -> BTreeMap<String, String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agora demo failed: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        2,
        "two lines on stderr, got:\n{stderr}"
    );
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let tokens: BTreeMap<String, String> = stdout
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').expect("NAME=value lines");
            assert!(
                v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "not safe for eval: {l}"
            );
            (k.to_owned(), v.to_owned())
        })
        .collect();
    assert_eq!(
        tokens.keys().collect::<Vec<_>>(),
        ["ADMIN_TOKEN", "CUSTOMER_TOKEN", "STAFF_TOKEN"],
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 3);
    tokens
}

/// What the catalogue looks like through the API: warehouses, and per sku
/// whether it is active and its on-hand stock per warehouse, plus how many
/// stock movements it has.
async fn catalogue(app: &TestApp) -> (Vec<String>, BTreeMap<String, (bool, Vec<i64>, usize)>) {
    let staff = app.token("sam", &[Role::Staff]);
    let get = |path: String| {
        let staff = staff.clone();
        async move {
            let res = app.get_as(&path, &staff).await;
            assert_eq!(res.status(), 200, "{path}");
            res.json::<Value>().await.unwrap()
        }
    };
    let warehouses: Vec<String> = get("/api/v1/warehouses?limit=100".into()).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap().to_owned())
        .collect();
    let mut products = BTreeMap::new();
    for p in get("/api/v1/products?limit=100".into()).await["items"]
        .as_array()
        .unwrap()
    {
        let sku = p["sku"].as_str().unwrap().to_owned();
        let stock = get(format!("/api/v1/stock/{sku}")).await;
        let on_hand = warehouses
            .iter()
            .map(|code| {
                stock["warehouses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|w| w["warehouse"] == code.as_str())
                    .and_then(|w| w["on_hand"].as_i64())
                    .unwrap_or(0)
            })
            .collect();
        let movements = get(format!("/api/v1/stock/{sku}/movements?limit=100")).await["items"]
            .as_array()
            .unwrap()
            .len();
        products.insert(sku, (p["active"] == true, on_hand, movements));
    }
    (warehouses, products)
}

/// The demo's promises: two or more warehouses, eight or more active
/// products over several categories with stock in every warehouse, one
/// inactive product, one low on stock.
async fn check_the_catalogue(app: &TestApp) {
    let (warehouses, products) = catalogue(app).await;
    assert!(warehouses.len() >= 2, "{warehouses:?}");
    assert_eq!(products.len(), PRODUCTS.len(), "{products:?}");
    let stocked = products
        .values()
        .filter(|(active, on_hand, _)| *active && on_hand.iter().all(|n| *n > 0))
        .count();
    assert!(stocked >= 8, "{products:?}");
    let inactive: Vec<&String> = products
        .iter()
        .filter(|(_, p)| !p.0)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(inactive, ["MUG-2019"]);
    let categories: std::collections::BTreeSet<&str> =
        PRODUCTS.iter().map(|p| p.category).collect();
    assert!(categories.len() >= 4, "{categories:?}");
    let staff = app.token("sam", &[Role::Staff]);
    let low: Vec<&str> = {
        let mut low = vec![];
        for p in PRODUCTS.iter().filter(|p| p.active) {
            let product = app
                .get_json_as(&format!("/api/v1/products/{}", p.sku), &staff)
                .await;
            let stock = app
                .get_json_as(&format!("/api/v1/stock/{}", p.sku), &staff)
                .await;
            if stock["available"].as_i64() < product["low_stock_threshold"].as_i64() {
                low.push(p.sku);
            }
        }
        low
    };
    assert_eq!(low, ["POSTER-LIMITED"]);
    // Exactly the demo levels, whatever ran before.
    for p in PRODUCTS.iter().filter(|p| p.active) {
        assert_eq!(products[p.sku].1, p.stock, "{}", p.sku);
    }
    assert_eq!(warehouses, WAREHOUSES.map(|(c, _)| c.to_owned()));
}

#[tokio::test]
async fn the_demo_loads_over_the_http_api_and_a_second_run_duplicates_nothing() {
    let app = spawn_app_with_rate_limit(10_000, 10_000).await;
    let dir = tempfile::tempdir().unwrap();
    let url = app.address.clone();
    let first = demo(dir.path(), &["--url", &url], &[]).await;
    let tokens = succeeded(&first);
    check_the_catalogue(&app).await;
    let after_first = catalogue(&app).await;

    let second = demo(dir.path(), &["--url", &url], &[]).await;
    succeeded(&second);
    check_the_catalogue(&app).await;
    assert_eq!(
        catalogue(&app).await,
        after_first,
        "the second run changed something"
    );

    // The tokens are what they say, for this instance.
    for (name, role, sub) in [
        ("CUSTOMER_TOKEN", "customer", "alice"),
        ("STAFF_TOKEN", "staff", "sam"),
        ("ADMIN_TOKEN", "admin", "ada"),
    ] {
        let me = app.get_json_as("/api/v1/me", &tokens[name]).await;
        assert_eq!(
            (me["subject"].as_str(), me["roles"][0].as_str()),
            (Some(sub), Some(role)),
            "{name}"
        );
    }
    // And the customer can order what the demo stocked.
    let res = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&tokens["CUSTOMER_TOKEN"])
        .header("idempotency-key", "demo-order-1")
        .json(&serde_json::json!({
            "items": [{"sku": "TSHIRT-RED-M", "quantity": 2}],
            "shipping_address": {"name": "Alice", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
            "payment_method": "tok_visa",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "confirmed");
    // Stock is topped up to the demo level, not received again.
    succeeded(&demo(dir.path(), &["--url", &url], &[]).await);
    let (_, products) = catalogue(&app).await;
    assert_eq!(
        products["TSHIRT-RED-M"].1,
        [40, 25],
        "2 reserved, none received"
    );
}

#[tokio::test]
async fn with_nothing_serving_the_demo_loads_through_an_in_process_agora_and_can_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    // A loopback port nothing listens on.
    let port = crate::process::free_port();
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..2 {
        let out = demo(dir.path(), &[], &[("AGORA__HTTP__ADDR", addr.as_str())]).await;
        succeeded(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("nothing was serving"), "{stderr}");
    }
    let data = dir.path().join("data");
    let app = spawn_app_with(move |s| s.data_dir = data).await;
    check_the_catalogue(&app).await;
}

#[tokio::test]
async fn an_explicit_url_where_nothing_answers_is_an_error_not_a_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::process::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = demo(dir.path(), &["--url", &url], &[]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("nothing answers"), "{stderr}");
    assert!(out.stdout.is_empty(), "no tokens without a catalogue");
    assert!(!dir.path().join("data").exists(), "no database was touched");
}
