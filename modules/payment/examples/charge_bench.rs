//! Charges per second through the payment module's `api` handle with the
//! simulated provider, on SQLite (a temporary file) and PostgreSQL (a fresh
//! database on the machine's server).
//!
//! ```text
//! cargo run --release -p agora-payment --example charge_bench -- \
//!     [--backend sqlite|postgres|all] [--charges 2000] [--concurrency 16] [--latency-ms 0]
//! ```
//!
//! Each charge is the full path: reserve the pending row (one per order),
//! call the provider through the circuit breaker, then finalise status, ledger
//! entry and outbox event in one transaction. The outbox relay is not running,
//! so publishing does not compete for the database. PostgreSQL: the admin URL
//! is `AGORA_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! the benchmark database is dropped afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_kernel::{CallContext, Currency, EventBus, InMemoryBus, Money, Wiring};
use agora_payment::domain::models::{
    ChargeRequest, CustomerId, OrderId, PaymentMethod, PaymentStatus,
};
use agora_payment::{PaymentModule, Settings};

struct Args {
    backends: Vec<String>,
    charges: usize,
    concurrency: usize,
    latency_ms: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        backends: vec!["sqlite".into(), "postgres".into()],
        charges: 2000,
        concurrency: 16,
        latency_ms: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" if value == "all" => {}
            "--backend" => args.backends = vec![value],
            "--charges" => args.charges = value.parse().expect("--charges is a number"),
            "--concurrency" => args.concurrency = value.parse().expect("--concurrency is a number"),
            "--latency-ms" => args.latency_ms = value.parse().expect("--latency-ms is a number"),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn admin_url() -> String {
    std::env::var("AGORA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn run(backend: &str, url: &str, args: &Args) {
    let mut settings = Settings::with_url(url);
    settings.simulated_latency_ms = args.latency_ms;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let module = PaymentModule::build(&settings, Wiring::new(url, bus))
        .await
        .expect("module builds");
    let api = module.api();
    let eur = Currency::parse("EUR").unwrap();

    // Warm the pools up.
    for _ in 0..20 {
        let req = ChargeRequest::new(
            OrderId::new(),
            CustomerId::parse("warmup").unwrap(),
            Money::new(100, eur),
            PaymentMethod::parse("tok_visa").unwrap(),
        )
        .unwrap();
        api.charge(&CallContext::service("bench", "warmup"), req)
            .await
            .unwrap();
    }

    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let per_worker =
            args.charges / args.concurrency + usize::from(w < args.charges % args.concurrency);
        let api = api.clone();
        workers.push(tokio::spawn(async move {
            let ctx = CallContext::service("bench", format!("bench-{w}"));
            let customer = CustomerId::parse(&format!("customer-{w}")).unwrap();
            let mut latencies = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let req = ChargeRequest::new(
                    OrderId::new(),
                    customer.clone(),
                    Money::new(4990, eur),
                    PaymentMethod::parse("tok_visa").unwrap(),
                )
                .unwrap();
                let t = Instant::now();
                let charged = api.charge(&ctx, req).await.expect("charge");
                assert_eq!(charged.payment.status, PaymentStatus::Succeeded);
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        latencies[i.min(latencies.len() - 1)].as_secs_f64() * 1000.0
    };
    println!(
        "| {backend} | {} | {} | {} | {:.2} s | {:.0} | {:.1} | {:.1} |",
        latencies.len(),
        args.concurrency,
        args.latency_ms,
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
    );
    module.database().close().await;
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    println!(
        "| store | charges | concurrency | provider latency (ms) | elapsed | charges/s | p50 (ms) | p99 (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for backend in args.backends.clone() {
        match backend.as_str() {
            "sqlite" => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/payment.db", dir.path().display());
                run("sqlite", &url, &args).await;
            }
            "postgres" => {
                let admin = admin_url();
                let pool = match sqlx::PgPool::connect(&admin).await {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("SKIPPED postgres: {admin} unreachable ({e})");
                        continue;
                    }
                };
                let name = format!("agora_bench_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&pool)
                    .await
                    .unwrap();
                let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
                run("postgres", &format!("{base}/{name}"), &args).await;
                sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            other => panic!("unknown backend {other} (sqlite, postgres or all)"),
        }
    }
}
