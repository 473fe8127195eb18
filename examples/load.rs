//! Load harness: places orders through the full HTTP stack (gateway on: JWT
//! auth, rate limits, idempotency keys) with real tokens, and reports
//! throughput and latency percentiles.
//!
//! ```sh
//! cargo run --release --example load -- [--orders 5000] [--concurrency 64] [--stores sqlite|production]
//! cargo run --release --example load -- --url http://127.0.0.1:8080 --rate 500 --seconds 10
//! ```
//!
//! `--rate R` is open-loop (wrk2-style): a request is started every 1/R s
//! whether or not the earlier ones have answered, and each latency is taken
//! from when its request was *due*, so a stall is not hidden by the load
//! generator waiting (no coordinated omission).
//!
//! By default it starts agora in-process on the embedded SQLite stores in a
//! temporary directory. `--stores production` puts order, payment and
//! notification on fresh PostgreSQL databases (`AGORA_TEST_POSTGRES_URL`,
//! default `postgres://postgres@127.0.0.1:5432/postgres`) and inventory on
//! `AGORA_TEST_MONGODB_URL`. `--url http://host:port` drives a running agora
//! instead (it must use the development HS256 key).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora::Settings;
use agora::gateway::auth;
use agora_kernel::Role;
use serde_json::json;

struct Args {
    orders: usize,
    concurrency: usize,
    stores: String,
    url: Option<String>,
    rate: Option<u32>,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        orders: 5000,
        concurrency: 64,
        stores: "sqlite".into(),
        url: None,
        rate: None,
        seconds: 10,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--orders" => a.orders = value.parse().expect("--orders N"),
            "--concurrency" => a.concurrency = value.parse().expect("--concurrency N"),
            "--stores" => a.stores = value,
            "--url" => a.url = Some(value),
            "--rate" => a.rate = Some(value.parse().expect("--rate N per second")),
            "--seconds" => a.seconds = value.parse().expect("--seconds N"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

async fn fresh_postgres() -> String {
    let admin = std::env::var("AGORA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pool = sqlx::PgPool::connect(&admin)
        .await
        .expect("PostgreSQL reachable");
    let name = format!("agora_load_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap();
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The latency percentiles of `sorted` (in ms) and how the orders ended.
fn report(what: &str, sorted: &[Duration], statuses: &BTreeMap<String, usize>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what} p50: {:.1} ms  p95: {:.1} ms  p99: {:.1} ms  max: {:.1} ms",
        ms(percentile(sorted, 50.0)),
        ms(percentile(sorted, 95.0)),
        ms(percentile(sorted, 99.0)),
        ms(sorted.last().copied().unwrap_or_default()),
    );
    println!("outcomes: {statuses:?}");
}

#[tokio::main]
async fn main() {
    let a = args();
    let data = tempfile::tempdir().unwrap();
    let mut settings = Settings::load_from(
        Path::new("config"),
        &std::env::vars().filter(|(k, _)| k == "AGORA_ENV").collect(),
    )
    .expect("settings");
    let (base, _app_stop) = match &a.url {
        Some(url) => (url.clone(), None),
        None => {
            settings.data_dir = data.path().to_path_buf();
            settings.http.addr = "127.0.0.1:0".into();
            settings.admin.addr = "127.0.0.1:0".into();
            if a.stores == "production" {
                settings.order.database_url = fresh_postgres().await.into();
                settings.payment.database_url = fresh_postgres().await.into();
                settings.notification.database_url = fresh_postgres().await.into();
                let mongo =
                    std::env::var("AGORA_TEST_MONGODB_URL").expect("set AGORA_TEST_MONGODB_URL");
                let host = mongo
                    .trim_start_matches("mongodb://")
                    .split('/')
                    .next()
                    .unwrap()
                    .to_owned();
                settings.inventory.database_url = format!(
                    "mongodb://{host}/agora_load_{}?directConnection=true",
                    uuid::Uuid::new_v4().simple()
                )
                .into();
            }
            let app = agora::Application::build(settings.clone())
                .await
                .expect("agora starts");
            let base = format!("http://127.0.0.1:{}", app.port());
            let stop = app.stop_token();
            tokio::spawn(app.run_until_stopped());
            (base, Some(stop))
        }
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency)
        .build()
        .unwrap();
    let staff = auth::mint(
        &settings.auth,
        "load-staff",
        &[Role::Staff],
        None,
        Duration::from_secs(3600),
    )
    .unwrap();

    // Seed a catalogue: 20 skus with plenty of stock.
    let post = |path: &str, body: serde_json::Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&staff)
            .json(&body)
            .send()
    };
    let s = post(
        "/api/v1/warehouses",
        json!({"code": "LOAD", "name": "Load"}),
    )
    .await
    .unwrap()
    .status();
    assert!(s.is_success() || s.as_u16() == 409, "warehouse: {s}");
    let skus: Vec<String> = (0..20).map(|i| format!("LOAD-{i}")).collect();
    for sku in &skus {
        let s = post(
            "/api/v1/products",
            json!({"sku": sku, "name": sku, "price_minor": 1000, "currency": "EUR"}),
        )
        .await
        .unwrap()
        .status();
        assert!(s.is_success() || s.as_u16() == 409, "product: {s}");
        let s = post(
            "/api/v1/stock/receipts",
            json!({"sku": sku, "warehouse": "LOAD", "quantity": 1_000_000}),
        )
        .await
        .unwrap()
        .status();
        assert!(s.is_success(), "receipt: {s}");
    }
    // One customer per 10 orders, so per-principal rate limits are exercised
    // but not the bottleneck.
    let customers: Vec<String> = (0..a.orders.div_ceil(10))
        .map(|i| {
            auth::mint(
                &settings.auth,
                &format!("load-{i}"),
                &[Role::Customer],
                Some("load@example.com"),
                Duration::from_secs(3600),
            )
            .unwrap()
        })
        .collect();
    let customers = Arc::new(customers);
    let skus = Arc::new(skus);

    if let Some(rate) = a.rate {
        open_loop(&client, &base, &customers, &skus, rate, a.seconds).await;
        return;
    }
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..a.concurrency {
        let (client, base, customers, skus, next) = (
            client.clone(),
            base.clone(),
            customers.clone(),
            skus.clone(),
            next.clone(),
        );
        let total = a.orders;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                let key = place(
                    &client,
                    &base,
                    &customers[i / 10],
                    format!("load-{i}"),
                    &skus[i % skus.len()],
                )
                .await;
                latencies.push(t.elapsed());
                *statuses.entry(key).or_default() += 1;
            }
            (latencies, statuses)
        }));
    }
    let mut latencies = Vec::with_capacity(a.orders);
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for w in workers {
        let (l, s) = w.await.unwrap();
        latencies.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "stores: {}  orders: {}  concurrency: {}",
        if a.url.is_some() { "remote" } else { &a.stores },
        a.orders,
        a.concurrency
    );
    println!(
        "elapsed: {:.2} s  throughput: {:.0} orders/s",
        elapsed.as_secs_f64(),
        a.orders as f64 / elapsed.as_secs_f64()
    );
    report("latency", &latencies, &statuses);
}

fn order_body(sku: &str) -> serde_json::Value {
    json!({
        "items": [{"sku": sku, "quantity": 1}],
        "shipping_address": {"name": "Load", "line1": "1 St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "payment_method": "tok_visa",
    })
}

/// Place one order of `sku`; what came of it: the order's status on a 201,
/// else `http <status>` or `error <why>`.
async fn place(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    idempotency_key: String,
    sku: &str,
) -> String {
    let res = client
        .post(format!("{base}/api/v1/orders"))
        .bearer_auth(token)
        .header("idempotency-key", idempotency_key)
        .json(&order_body(sku))
        .send()
        .await;
    match res {
        Ok(r) if r.status().as_u16() == 201 => {
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            v["status"].as_str().unwrap_or("?").to_owned()
        }
        Ok(r) => format!("http {}", r.status().as_u16()),
        Err(e) => format!("error {e}"),
    }
}

/// A fixed offered rate: one order due every 1/rate s for `seconds`, each
/// sent at its due time on its own task; latency counted from the due time.
async fn open_loop(
    client: &reqwest::Client,
    base: &str,
    customers: &Arc<Vec<String>>,
    skus: &Arc<Vec<String>>,
    rate: u32,
    seconds: u64,
) {
    let total = (u64::from(rate) * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let (client, base, customers, skus, run) = (
            client.clone(),
            base.to_owned(),
            customers.clone(),
            skus.clone(),
            run.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let outcome = place(
                &client,
                &base,
                &customers[i % customers.len()],
                format!("open-{run}-{i}"),
                &skus[i % skus.len()],
            )
            .await;
            (due.elapsed(), outcome)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        let (l, s) = t.await.unwrap();
        latencies.push(l);
        *statuses.entry(s).or_default() += 1;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!("open loop: offered {rate} orders/s for {seconds} s ({total} orders)");
    println!(
        "achieved: {:.0} orders/s",
        total as f64 / elapsed.as_secs_f64()
    );
    report("latency from due time", &latencies, &statuses);
}
