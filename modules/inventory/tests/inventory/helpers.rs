//! What every inventory test needs: a module on a fresh database (a new SQLite
//! file, or a new MongoDB database name), a clock the test moves, a recorder
//! of published events, and callers with each role.

use std::sync::Arc;

use agora_inventory::domain::models::{
    LineRequest, Movement, NewProduct, NewReservation, NewWarehouse, OrderRef, ProductName,
    Quantity, Receipt, Reservation, ReservationId, ReservationStatus, Sku, Threshold,
    WarehouseCode,
};
use agora_inventory::{InventoryModule, InventoryService, ManualClock, Settings};
use agora_kernel::{CallContext, Currency, InMemoryBus, Money, Principal, Role, Wiring};
use tempfile::TempDir;
use uuid::Uuid;

/// Records every event the outbox relay publishes (the kernel's).
pub use agora_kernel::testing::Recorder;

/// A module on its own fresh database.
pub struct Harness {
    pub module: InventoryModule,
    pub api: InventoryService,
    pub clock: Arc<ManualClock>,
    pub events: Arc<Recorder>,
    url: String,
    _dir: Option<TempDir>,
}

impl Harness {
    async fn build(url: &str, dir: Option<TempDir>) -> Self {
        let bus = Arc::new(InMemoryBus::new());
        let events = Arc::new(Recorder::of("inventory"));
        bus.subscribe(events.clone());
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let module = InventoryModule::build(
            &Settings::with_url(url),
            Wiring::new(url, bus).with_clock(clock.clone()),
        )
        .await
        .expect("the inventory module builds");
        Self {
            api: module.api(),
            module,
            clock,
            events,
            url: url.to_owned(),
            _dir: dir,
        }
    }

    /// A second instance of the module on the same database, as a second
    /// process would be (its own pool, its own in-process queues).
    pub async fn twin(&self) -> InventoryService {
        let bus = Arc::new(InMemoryBus::new());
        let settings = Settings::with_url(&self.url);
        let module = InventoryModule::build(
            &settings,
            Wiring::new(&self.url, bus).with_clock(self.clock.clone()),
        )
        .await
        .expect("a second inventory module builds");
        module.api()
    }

    /// A module on a new SQLite file.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}/inventory.db", dir.path().display());
        Self::build(&url, Some(dir)).await
    }

    /// A module on a new database of the MongoDB server named by
    /// `AGORA_TEST_MONGODB_URL`; `None` (skip) when unset outside CI.
    pub async fn mongo() -> Option<Self> {
        let url = mongo_url()?;
        Some(Self::build(&url, None).await)
    }

    /// Publish everything in the outbox.
    pub async fn publish_all(&self) {
        let relay = self.module.outbox_relay();
        while relay.run_once().await.expect("the outbox relay runs") > 0 {}
    }
}

/// `AGORA_TEST_MONGODB_URL` with a fresh database name (the kernel's helper).
pub fn mongo_url() -> Option<String> {
    agora_kernel::testing::fresh_mongodb_url("inv")
}

pub fn ctx(subject: &str, roles: &[Role]) -> CallContext {
    CallContext::new(
        Principal::new(subject, roles.iter().copied()),
        format!("corr-{}", Uuid::now_v7()),
    )
}

pub fn staff() -> CallContext {
    ctx("stella", &[Role::Staff])
}

pub fn customer() -> CallContext {
    ctx("carl", &[Role::Customer])
}

pub fn service() -> CallContext {
    ctx("service:order", &[Role::Service])
}

pub fn admin() -> CallContext {
    ctx("ada", &[Role::Admin])
}

pub fn sku(s: &str) -> Sku {
    Sku::parse(s).unwrap()
}

pub fn wh(s: &str) -> WarehouseCode {
    WarehouseCode::parse(s).unwrap()
}

pub fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap())
}

pub fn new_product(s: &str, threshold: i64) -> NewProduct {
    NewProduct {
        sku: sku(s),
        name: ProductName::parse(&format!("Product {s}")).unwrap(),
        description: None,
        price: eur(1999),
        low_stock_threshold: Threshold::new(threshold).unwrap(),
    }
}

/// Create products (threshold 0: no low-stock events unless a test wants them) and warehouses.
pub async fn catalogue(api: &InventoryService, skus: &[&str], warehouses: &[&str]) {
    for s in skus {
        api.create_product(&staff(), new_product(s, 0))
            .await
            .unwrap();
    }
    for w in warehouses {
        api.create_warehouse(
            &staff(),
            NewWarehouse {
                code: wh(w),
                name: ProductName::parse(&format!("Warehouse {w}")).unwrap(),
            },
        )
        .await
        .unwrap();
    }
}

/// `n` units of `s` arriving in `w`, without a reference.
pub fn receipt(s: &str, w: &str, n: i64) -> Receipt {
    Receipt {
        sku: sku(s),
        warehouse: wh(w),
        quantity: Quantity::new(n).unwrap(),
        reference: None,
    }
}

pub async fn receive(api: &InventoryService, s: &str, w: &str, n: i64) {
    api.receive(&staff(), receipt(s, w, n)).await.unwrap();
}

pub fn reservation(lines: &[(&str, i64)]) -> NewReservation {
    NewReservation {
        id: ReservationId(Uuid::now_v7()),
        order_id: OrderRef::parse(&Uuid::now_v7().to_string()).unwrap(),
        lines: lines
            .iter()
            .map(|(s, n)| LineRequest::parse(s, *n).unwrap())
            .collect(),
        ttl: None,
    }
}

/// A reservation of `lines` that `who` must be able to make.
pub async fn reserve(
    api: &InventoryService,
    who: &CallContext,
    lines: &[(&str, i64)],
) -> Reservation {
    api.reserve(who, reservation(lines))
        .await
        .unwrap()
        .reservation
}

/// Where a reservation stands now.
pub async fn status(api: &InventoryService, id: ReservationId) -> ReservationStatus {
    api.reservation(&service(), id).await.unwrap().status
}

/// Every movement of a sku, newest first (at most 100).
pub async fn movements(api: &InventoryService, s: &str) -> Vec<Movement> {
    api.movements(&staff(), &sku(s), None, 100)
        .await
        .unwrap()
        .items
}

/// (on_hand, reserved, available) of a sku over every warehouse.
pub async fn totals(api: &InventoryService, s: &str) -> (i64, i64, i64) {
    let st = api.stock(&staff(), &sku(s)).await.unwrap();
    (st.on_hand(), st.reserved(), st.available())
}
