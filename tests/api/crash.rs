//! Crash safety: SIGKILL the process in the middle of a load of orders,
//! restart it on the same data, and check that every order settles, none is
//! charged twice, no stock stays reserved for a failed order, and the stock
//! totals reconcile.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use agora_kernel::Role;
use serde_json::{Value, json};

use crate::helpers::{AgoraProcess, agora_command};
use crate::process::{Api, address, in_flight, token};

/// The file `AGORA_CRASH_LOG` names, if any, opened for appending.
fn crash_log() -> Option<std::fs::File> {
    let path = std::env::var("AGORA_CRASH_LOG").ok()?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ok()
}

/// Serve on `data` with short leases and retries and a slow provider; its
/// output (JSON lines on stdout, and stderr) kept in the `AGORA_CRASH_LOG` file.
fn start(data: &std::path::Path) -> AgoraProcess {
    let mut cmd = agora_command(data);
    cmd.env("AGORA__RATE_LIMIT__PER_SECOND", "100000")
        .env("AGORA__RATE_LIMIT__BURST", "100000")
        .env("AGORA__PAYMENT__SIMULATED_LATENCY_MS", "300")
        .env("AGORA__ORDER__LEASE_SECS", "2")
        .env("AGORA__ORDER__RECOVERY_EVERY_MS", "100")
        .env("AGORA__ORDER__RETRY_BASE_MS", "100")
        .env("AGORA__ORDER__RETRY_MAX_SECS", "1")
        .env("RUST_LOG", "warn,agora_order=info")
        .stdout(match crash_log() {
            Some(f) => Stdio::from(f),
            None => Stdio::null(),
        });
    let mut log = crash_log();
    AgoraProcess::start_with_stderr(cmd, move |line| {
        if let Some(f) = log.as_mut() {
            let _ = writeln!(f, "stderr: {line}");
        }
    })
}

#[tokio::test]
async fn a_sigkill_mid_load_loses_nothing_and_charges_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path());
    let api = Api::new(&first.url(""));
    for (path, body) in [
        (
            "/api/v1/warehouses",
            json!({"code": "BER", "name": "Berlin"}),
        ),
        (
            "/api/v1/products",
            json!({"sku": "MUG", "name": "Mug", "price_minor": 850, "currency": "EUR"}),
        ),
    ] {
        let (s, b) = api.post(&api.staff, path, body).await;
        assert_eq!(s, 201, "{b}");
    }
    api.receive("MUG", 60).await;

    // 120 orders of one unit for 60 units, a third of them with a declining card.
    let mut tasks = Vec::new();
    for i in 0..120 {
        let api = api.clone();
        let customer = token(&format!("c{i}"), &[Role::Customer]);
        tasks.push(tokio::spawn(async move {
            let pm = if i % 3 == 0 {
                "tok_chargeDeclined"
            } else {
                "tok_visa"
            };
            let body = json!({
                "items": [{"sku": "MUG", "quantity": 1}],
                "shipping_address": address(),
                "payment_method": pm,
            });
            // The kill cuts some of these off: no answer is expected.
            let _ = api
                .client
                .post(format!("{}/api/v1/orders", api.base))
                .bearer_auth(&customer)
                .header("idempotency-key", format!("k{i}"))
                .json(&body)
                .send()
                .await;
        }));
    }
    // Kill it once some orders have settled and others are still in flight.
    for _ in 0..200 {
        let orders = api.all("/api/v1/orders").await;
        if orders.iter().filter(|o| !in_flight(o)).count() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    for t in tasks {
        let _ = t.await;
    }

    let mut second = start(dir.path());
    let api = Api::new(&second.url(""));
    let at_restart = api.all("/api/v1/orders").await;
    let in_flight_at_restart = at_restart.iter().filter(|o| in_flight(o)).count();
    eprintln!(
        "after SIGKILL: {} orders stored, {in_flight_at_restart} of them in flight",
        at_restart.len()
    );
    assert!(
        in_flight_at_restart > 0,
        "the kill came too late to test recovery"
    );
    // The recovery worker settles everything that was in flight.
    let orders = api
        .orders_until(Duration::from_secs(60), |os| !os.iter().any(in_flight))
        .await;
    assert!(!orders.is_empty(), "no order survived the crash");
    let count = |s: &str| orders.iter().filter(|o| o["status"] == s).count() as i64;
    let unsettled: Vec<&Value> = orders.iter().filter(|o| in_flight(o)).collect();
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
        let (status, payments) = api
            .get(&api.staff, &format!("/api/v1/payments?order_id={id}"))
            .await;
        assert_eq!(status, 200, "{payments}");
        let items = payments["items"].as_array().unwrap();
        assert!(items.len() <= 1, "order {id} has {} payments", items.len());
        if o["status"] == "confirmed" {
            assert_eq!(items[0]["status"], "succeeded");
            assert_eq!(items[0]["id"], o["payment_id"]);
        }
    }
    // Stock reconciles: what is reserved is exactly what confirmed orders hold.
    let (status, stock) = api.get(&api.staff, "/api/v1/stock/MUG").await;
    assert_eq!(status, 200, "{stock}");
    assert_eq!(stock["on_hand"], 60);
    assert_eq!(stock["reserved"].as_i64(), Some(confirmed), "{stock}");
    assert_eq!(stock["available"].as_i64(), Some(60 - confirmed));
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}
