//! Reservation throughput on each store backend: `N` single-unit reservations
//! through the module's `api` handle (role check, allocation, guarded update,
//! movement, outbox event) at 1 and 64 concurrent callers, each run on a fresh
//! database. Not a test: run it in release mode and read the figures.
//!
//! ```text
//! cargo run --release -p agora-inventory --example reservation_bench -- [sqlite|mongodb] [reservations]
//! ```
//! MongoDB needs `AGORA_TEST_MONGODB_URL` (a fresh database is used per run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use agora_inventory::domain::models::{
    LineRequest, NewProduct, NewReservation, NewWarehouse, OrderRef, ProductName, Quantity,
    Receipt, ReservationId, Sku, Threshold, WarehouseCode,
};
use agora_inventory::{InventoryModule, InventoryService, Settings};
use agora_kernel::testing::with_database;
use agora_kernel::{CallContext, Currency, InMemoryBus, Money, Principal, Role, Wiring};
use uuid::Uuid;

fn ctx(role: Role) -> CallContext {
    CallContext::new(Principal::new("bench", [role]), "bench")
}

/// A million units of `sku` in one warehouse, for the runs to reserve from.
async fn stock(api: &InventoryService, sku: &Sku) {
    let staff = ctx(Role::Staff);
    let wh = WarehouseCode::parse("W1").unwrap();
    let product = NewProduct {
        sku: sku.clone(),
        name: ProductName::parse("Bench").unwrap(),
        description: None,
        price: Money::new(100, Currency::parse("EUR").unwrap()),
        low_stock_threshold: Threshold::new(0).unwrap(),
    };
    let warehouse = NewWarehouse {
        code: wh.clone(),
        name: ProductName::parse("W1").unwrap(),
    };
    let receipt = Receipt {
        sku: sku.clone(),
        warehouse: wh,
        quantity: Quantity::new(1_000_000).unwrap(),
        reference: None,
    };
    api.create_product(&staff, product).await.unwrap();
    api.create_warehouse(&staff, warehouse).await.unwrap();
    api.receive(&staff, receipt).await.unwrap();
}

async fn run(url: &str, reservations: usize, callers: usize) -> f64 {
    let module = InventoryModule::build(
        &Settings::with_url(url),
        Wiring::new(url, Arc::new(InMemoryBus::new())),
    )
    .await
    .expect("the module builds");
    let api = module.api();
    let sku = Sku::parse("BENCH-1").unwrap();
    stock(&api, &sku).await;

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..callers {
        let (api, next, sku) = (api.clone(), next.clone(), sku.clone());
        workers.push(tokio::spawn(async move {
            let service = ctx(Role::Service);
            while next.fetch_add(1, Ordering::Relaxed) < reservations {
                let r = NewReservation {
                    id: ReservationId(Uuid::now_v7()),
                    order_id: OrderRef::parse("bench-order").unwrap(),
                    lines: vec![LineRequest {
                        sku: sku.clone(),
                        quantity: Quantity::new(1).unwrap(),
                    }],
                    ttl: None,
                };
                api.reserve(&service, r)
                    .await
                    .expect("the reservation succeeds");
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let rate = reservations as f64 / started.elapsed().as_secs_f64();
    let (_, reserved) = {
        let s = api.stock(&ctx(Role::Staff), &sku).await.unwrap();
        (s.on_hand(), s.reserved())
    };
    assert_eq!(
        reserved, reservations as i64,
        "every reservation counted once"
    );
    agora_kernel::Module::shutdown(&module).await;
    rate
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend = args.get(1).map_or("sqlite", String::as_str).to_owned();
    let reservations: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(2000);
    for callers in [1, 64] {
        let dir = tempfile::tempdir().unwrap();
        let url = match backend.as_str() {
            "sqlite" => format!("sqlite://{}/bench.db", dir.path().display()),
            "mongodb" => with_database(
                &std::env::var("AGORA_TEST_MONGODB_URL").expect("set AGORA_TEST_MONGODB_URL"),
                &format!("bench_{}", Uuid::now_v7().simple()),
            ),
            other => panic!("unknown backend {other} (sqlite or mongodb)"),
        };
        let rate = run(&url, reservations, callers).await;
        println!(
            "{backend:8} callers={callers:3} reservations={reservations:6} -> {rate:8.0} reservations/s"
        );
    }
}
