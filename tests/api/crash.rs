//! Crash safety: SIGKILL the process in the middle of a load of orders,
//! restart it on the same data, and check that every order settles, none is
//! charged twice, no stock stays reserved for a failed order, and the stock
//! totals reconcile.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agora_kernel::Role;
use serde_json::{Value, json};

struct Process {
    child: Child,
    base: String,
}

fn start(data: &std::path::Path) -> Process {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agora"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AGORA__")) {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .current_dir(data)
        .env_remove("AGORA_ENV")
        .env("AGORA__HTTP__ADDR", "127.0.0.1:0")
        .env("AGORA__ADMIN__ADDR", "127.0.0.1:0")
        .env("AGORA__DATA_DIR", data.join("data"))
        .env("AGORA__RATE_LIMIT__PER_SECOND", "100000")
        .env("AGORA__RATE_LIMIT__BURST", "100000")
        .env("AGORA__PAYMENT__SIMULATED_LATENCY_MS", "300")
        .env("AGORA__ORDER__LEASE_SECS", "2")
        .env("AGORA__ORDER__RECOVERY_EVERY_MS", "100")
        .env("AGORA__ORDER__RETRY_BASE_MS", "100")
        .env("AGORA__ORDER__RETRY_MAX_SECS", "1")
        .env("RUST_LOG", "warn,agora_order=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep the log (JSON lines on stdout) when AGORA_CRASH_LOG names a file.
    let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let log = std::env::var("AGORA_CRASH_LOG").ok();
    std::thread::spawn(move || {
        let mut out = log.and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        for line in stdout.map_while(Result::ok) {
            if let Some(f) = out.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
            }
        }
    });
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("agora exited before listening")
            .unwrap();
        if let Some(rest) = line.split("agora listening on http://").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse::<u16>()
                .unwrap();
        }
    };
    let log = std::env::var("AGORA_CRASH_LOG").ok();
    std::thread::spawn(move || {
        let mut out = log.and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        for line in lines.map_while(Result::ok) {
            if let Some(f) = out.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "stderr: {line}");
            }
        }
    });
    Process {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

fn token(sub: &str, roles: &[Role], dir: &std::path::Path) -> String {
    let settings = crate::helpers::test_settings(dir);
    agora::gateway::auth::mint(
        &settings.auth,
        sub,
        roles,
        Some("c@example.com"),
        Duration::from_secs(3600),
    )
    .unwrap()
}

async fn get(client: &reqwest::Client, base: &str, path: &str, token: &str) -> Value {
    client
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every order, following cursors.
async fn all_orders(client: &reqwest::Client, base: &str, staff: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/orders?limit=100&cursor={c}"),
            None => "/api/v1/orders?limit=100".to_owned(),
        };
        let page = get(client, base, &path, staff).await;
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test]
async fn a_sigkill_mid_load_loses_nothing_and_charges_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let staff = token("sam", &[Role::Staff], dir.path());
    let mut first = start(dir.path());
    let base = first.base.clone();
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&staff)
            .json(&body)
            .send()
    };
    assert_eq!(
        post(
            "/api/v1/warehouses",
            json!({"code": "BER", "name": "Berlin"})
        )
        .await
        .unwrap()
        .status(),
        201
    );
    assert_eq!(
        post(
            "/api/v1/products",
            json!({"sku": "MUG", "name": "Mug", "price_minor": 850, "currency": "EUR"})
        )
        .await
        .unwrap()
        .status(),
        201
    );
    let receipt = json!({"sku": "MUG", "warehouse": "BER", "quantity": 60});
    assert_eq!(
        post("/api/v1/stock/receipts", receipt)
            .await
            .unwrap()
            .status(),
        201
    );

    // 120 orders of one unit for 60 units, a third of them with a declining card.
    let mut tasks = Vec::new();
    for i in 0..120 {
        let client = client.clone();
        let base = first.base.clone();
        let customer = token(&format!("c{i}"), &[Role::Customer], dir.path());
        tasks.push(tokio::spawn(async move {
            let pm = if i % 3 == 0 { "tok_chargeDeclined" } else { "tok_visa" };
            let body = json!({
                "items": [{"sku": "MUG", "quantity": 1}],
                "shipping_address": {"name": "C", "line1": "1 St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
                "payment_method": pm,
            });
            let _ = client
                .post(format!("{base}/api/v1/orders"))
                .bearer_auth(&customer)
                .header("idempotency-key", format!("k{i}"))
                .json(&body)
                .send()
                .await;
        }));
    }
    // Kill it once some orders have settled and others are still in flight.
    for _ in 0..200 {
        let orders = all_orders(&client, &first.base, &staff).await;
        let settled = orders
            .iter()
            .filter(|o| !matches!(o["status"].as_str(), Some("pending" | "awaiting_payment")))
            .count();
        if settled >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    for t in tasks {
        let _ = t.await;
    }

    let second = start(dir.path());
    let base = second.base.clone();
    let at_restart = all_orders(&client, &base, &staff).await;
    let in_flight = at_restart
        .iter()
        .filter(|o| matches!(o["status"].as_str(), Some("pending" | "awaiting_payment")))
        .count();
    eprintln!(
        "after SIGKILL: {} orders stored, {in_flight} of them in flight",
        at_restart.len()
    );
    assert!(in_flight > 0, "the kill came too late to test recovery");
    // The recovery worker settles everything that was in flight.
    let mut orders = Vec::new();
    for _ in 0..600 {
        orders = all_orders(&client, &base, &staff).await;
        if orders
            .iter()
            .all(|o| !matches!(o["status"].as_str(), Some("pending" | "awaiting_payment")))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!orders.is_empty(), "no order survived the crash");
    let count = |s: &str| orders.iter().filter(|o| o["status"] == s).count() as i64;
    let unsettled: Vec<&Value> = orders
        .iter()
        .filter(|o| matches!(o["status"].as_str(), Some("pending" | "awaiting_payment")))
        .collect();
    assert!(unsettled.is_empty(), "orders left in flight: {unsettled:?}");
    let confirmed = count("confirmed");
    assert_eq!(
        confirmed + count("rejected") + count("payment_failed"),
        orders.len() as i64
    );

    // Nothing charged twice: one payment per order at most, and every
    // confirmed order's payment succeeded.
    for o in &orders {
        let id = o["id"].as_str().unwrap();
        let payments = get(
            &client,
            &base,
            &format!("/api/v1/payments?order_id={id}"),
            &staff,
        )
        .await;
        let items = payments["items"].as_array().unwrap();
        assert!(items.len() <= 1, "order {id} has {} payments", items.len());
        if o["status"] == "confirmed" {
            assert_eq!(items[0]["status"], "succeeded");
            assert_eq!(items[0]["id"], o["payment_id"]);
        }
    }
    // Stock reconciles: what is reserved is exactly what confirmed orders hold.
    let stock = get(&client, &base, "/api/v1/stock/MUG", &staff).await;
    assert_eq!(stock["on_hand"], 60);
    assert_eq!(stock["reserved"].as_i64(), Some(confirmed), "{stock}");
    assert_eq!(stock["available"].as_i64(), Some(60 - confirmed));
    let mut second = second;
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}
