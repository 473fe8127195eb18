//! The module's background tasks as the host runs them: the outbox relay
//! publishes, and the sweeper releases expired reservations on its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_inventory::domain::models::{ReservationStatus, Ttl};
use agora_inventory::events::{STOCK_RELEASED, STOCK_RESERVED};
use agora_inventory::{InventoryModule, ManualClock, Settings};
use agora_kernel::{InMemoryBus, Module, Wiring};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_sweeper_releases_expired_reservations_and_the_relay_publishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/inventory.db", dir.path().display());
    let mut settings = Settings::with_url(&url);
    settings.sweep_interval_secs = 1;
    let bus = Arc::new(InMemoryBus::new());
    let events = Arc::new(Recorder::of("inventory"));
    bus.subscribe(events.clone());
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let module =
        InventoryModule::build(&settings, Wiring::new(&url, bus).with_clock(clock.clone()))
            .await
            .unwrap();
    let api = module.api();
    catalogue(&api, &["A"], &["W1"]).await;
    receive(&api, "A", "W1", 5).await;
    let mut req = reservation(&[("A", 2)]);
    req.ttl = Some(Ttl::from_secs(30).unwrap());
    let r = api.reserve(&service(), req).await.unwrap().reservation;

    let token = CancellationToken::new();
    let names: Vec<String> = module
        .background_tasks()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(
        names,
        vec!["inventory-outbox-relay", "inventory-reservation-sweeper"]
    );
    let handles: Vec<_> = module
        .background_tasks()
        .into_iter()
        .map(|t| tokio::spawn((t.run)(token.clone())))
        .collect();
    clock.advance(chrono::Duration::seconds(31));

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let released =
            api.reservation(&service(), r.id).await.unwrap().status == ReservationStatus::Released;
        if released && events.of_type(STOCK_RELEASED).len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sweeper and relay did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(events.of_type(STOCK_RESERVED).len(), 1);
    assert_eq!(totals(&api, "A").await, (5, 0, 5));
    assert_eq!(module.info().store, "sqlite");
    assert!(module.ready().await.is_ok());
    token.cancel();
    for h in handles {
        tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .unwrap()
            .unwrap();
    }
    module.shutdown().await;
}
