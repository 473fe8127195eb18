//! Throughput of the notification module through the `log` channel.
//!
//! ```text
//! cargo run --release -p agora-notification --example notify_bench -- [EVENTS] [DATABASE_URL]
//! ```
//!
//! Publishes EVENTS (default 5000) `order.confirmed.v1` events on the in-memory
//! bus (each: inbox row + one e-mail notification, one transaction), then runs
//! the module's delivery worker until every notification is `sent` through the
//! log channel (JSON log lines formatted and written to a sink, as in
//! production minus the I/O). Prints events/s ingested, notifications/s
//! delivered, and end to end. DATABASE_URL defaults to a fresh SQLite file;
//! pass `postgres://...` (a fresh, empty database) to measure PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_kernel::{EventBus, EventEnvelope, InMemoryBus, Module, Wiring};
use agora_notification::{NotificationModule, Settings};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn event(i: usize) -> EventEnvelope {
    EventEnvelope::new(
        "order.confirmed.v1",
        "order",
        "bench",
        &serde_json::json!({
            "order_id": Uuid::now_v7(),
            "customer_id": format!("customer-{}", i % 500),
            "customer_email": format!("customer-{}@example.com", i % 500),
            "status": "confirmed",
            "items": [
                {"sku": "MUG-BLUE", "quantity": 2, "unit_price_minor": 1250, "line_total_minor": 2500},
                {"sku": "TEA-GREEN", "quantity": 1, "unit_price_minor": 499, "line_total_minor": 499}
            ],
            "total_minor": 2999,
            "currency": "EUR",
            "reason": null
        }),
    )
    .unwrap()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The log channel's lines are formatted as JSON, then discarded.
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::INFO)
        .init();

    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(5000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let url = args
        .next()
        .unwrap_or_else(|| format!("sqlite://{}/notification.db", dir.path().display()));

    let mut settings = Settings::with_url(&url);
    settings.poll_interval_ms = 10;
    settings.batch_size = 64;
    let bus = Arc::new(InMemoryBus::new());
    let module = NotificationModule::build(
        &settings,
        Wiring::new(&url, bus.clone() as Arc<dyn EventBus>),
    )
    .await?;
    let store = module.service().store().clone();

    let events: Vec<EventEnvelope> = (0..n).map(event).collect();
    let started = Instant::now();
    for e in &events {
        bus.publish(e).await?;
    }
    let ingest = started.elapsed();

    let token = CancellationToken::new();
    let worker = module
        .background_tasks()
        .into_iter()
        .find(|t| t.name == "notification-delivery")
        .expect("the delivery worker");
    let delivering = Instant::now();
    let handle = tokio::spawn((worker.run)(token.clone()));
    loop {
        let counts = store.count_by_status().await?;
        let sent = counts
            .iter()
            .find(|(s, _)| s == "sent")
            .map_or(0, |(_, c)| *c);
        if sent as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deliver = delivering.elapsed();
    let total = started.elapsed();
    token.cancel();
    let _ = handle.await;

    let backend = url.split(':').next().unwrap_or("?");
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "notify_bench: {n} events, store {backend}, batch {}",
        settings.batch_size
    );
    println!(
        "  ingest  (bus -> inbox + notification): {:>8.0} events/s   ({:.2} s)",
        rate(ingest),
        ingest.as_secs_f64()
    );
    println!(
        "  deliver (worker -> log channel -> sent): {:>6.0} notifications/s ({:.2} s)",
        rate(deliver),
        deliver.as_secs_f64()
    );
    println!(
        "  end to end:                             {:>6.0} notifications/s ({:.2} s)",
        rate(total),
        total.as_secs_f64()
    );
    module.shutdown().await;
    Ok(())
}
