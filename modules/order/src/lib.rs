//! The order module: owns orders and orchestrates placing one across
//! inventory and payment (the order saga).
//!
//! Its public face is [`OrderModule`] (routes, OpenAPI fragment, the recovery
//! worker and outbox relay, readiness), [`openapi`], its [`Settings`], and the
//! ports it needs from other modules ([`domain::ports::Catalogue`],
//! [`domain::ports::StockReservations`], [`domain::ports::Payments`]), which the
//! host implements over the other modules' `api` handles. The order module
//! never depends on another module's crate.

pub mod domain;
pub mod events;
mod inbound;
mod outbound;

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::db::SqlModuleBase;
use agora_kernel::{BackgroundTask, InvalidSetting, Module, ModuleInfo, Wiring};
use async_trait::async_trait;
use serde::Deserialize;
use utoipa::OpenApi;

pub use domain::models::{Order, OrderId, OrderStatus};
pub use domain::ports::{Catalogue, Payments, StockReservations};
pub use domain::service::{OrderService, SagaConfig};
pub use events::OrderEventPayload;

/// The module's name: metric label, outbox source, event prefix.
pub const NAME: &str = "order";

/// Path prefixes under `/api/v1` this module serves.
pub const ROUTES: &[&str] = &["/orders"];

fn default_deadline() -> u64 {
    900
}
fn default_retry_base_ms() -> u64 {
    1000
}
fn default_retry_max_secs() -> u64 {
    60
}
fn default_recovery_every_ms() -> u64 {
    1000
}
fn default_lease_secs() -> u64 {
    3
}

/// The `[order]` section, `AGORA__ORDER__*` variables.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Empty = `sqlite://<data_dir>/order.db`; or `postgres://…`.
    pub database_url: secrecy::SecretString,
    /// An order not paid by then becomes `payment_failed` (stock released).
    #[serde(default = "default_deadline")]
    pub payment_deadline_secs: u64,
    /// First back-off of a payment retry; doubles up to `retry_max_secs`.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    #[serde(default = "default_retry_max_secs")]
    pub retry_max_secs: u64,
    /// How often the recovery worker looks for orders to resume.
    #[serde(default = "default_recovery_every_ms")]
    pub recovery_every_ms: u64,
    /// How long one saga step may hold an order; after a crash the recovery
    /// worker takes the order over once this has passed.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

/// How much longer than the payment deadline a reservation is held, so the
/// stock outlives every payment retry.
const RESERVATION_MARGIN_SECS: u64 = 300;

impl Settings {
    /// Values deserialisation cannot check, naming the key as `order.<name>`.
    /// `longest_reservation_secs` is the longest reservation the inventory
    /// module holds (it owns that limit); the deadline plus the margin must fit.
    ///
    /// # Errors
    /// The first bad value.
    pub fn validate(&self, longest_reservation_secs: u64) -> Result<(), InvalidSetting> {
        let max_deadline = longest_reservation_secs.saturating_sub(RESERVATION_MARGIN_SECS);
        if !(1..=max_deadline).contains(&self.payment_deadline_secs) {
            return Err(InvalidSetting::new(
                "order.payment_deadline_secs",
                format!("must be between 1 and {max_deadline}"),
            ));
        }
        agora_kernel::settings::at_least_one(&[
            ("order.lease_secs", self.lease_secs),
            ("order.recovery_every_ms", self.recovery_every_ms),
        ])
    }

    fn saga(&self) -> SagaConfig {
        let deadline = Duration::from_secs(self.payment_deadline_secs);
        SagaConfig {
            payment_deadline: deadline,
            // Longer than the deadline, so a reservation outlives every retry.
            reservation_ttl: deadline + Duration::from_secs(RESERVATION_MARGIN_SECS),
            lease: Duration::from_secs(self.lease_secs.max(1)),
            retry_base: Duration::from_millis(self.retry_base_ms.max(1)),
            retry_max: Duration::from_secs(self.retry_max_secs.max(1)),
        }
    }
}

/// What the order module needs from the rest of the system.
#[derive(Clone)]
pub struct OrderPorts {
    pub catalogue: Arc<dyn Catalogue>,
    pub stock: Arc<dyn StockReservations>,
    pub payments: Arc<dyn Payments>,
}

/// The order module, wired to its own database.
pub struct OrderModule {
    base: SqlModuleBase,
    service: Arc<OrderService>,
    recovery_every: Duration,
}

impl OrderModule {
    /// Connect the module's database (creating its tables), its outbox relay and
    /// the saga over `ports`.
    ///
    /// # Errors
    /// The database is unreachable or cannot be migrated.
    pub async fn build(
        settings: &Settings,
        wiring: Wiring,
        ports: OrderPorts,
    ) -> anyhow::Result<Self> {
        let base = SqlModuleBase::connect(NAME, &wiring).await?;
        outbound::sql::migrate(&base.db).await?;
        let store = outbound::sql::store_for(&base.db);
        let service = OrderService::new(
            store,
            ports.catalogue,
            ports.stock,
            ports.payments,
            settings.saga(),
        )
        .with_clock(wiring.clock)
        .with_relay(base.relay.waker());
        Ok(Self {
            base,
            service: Arc::new(service),
            recovery_every: Duration::from_millis(settings.recovery_every_ms.max(10)),
        })
    }

    /// The saga service (for in-process callers and tests).
    pub fn service(&self) -> Arc<OrderService> {
        self.service.clone()
    }
}

/// The module's OpenAPI fragment.
pub fn openapi() -> utoipa::openapi::OpenApi {
    inbound::http::OrderApiDoc::openapi()
}

#[async_trait]
impl Module for OrderModule {
    fn info(&self) -> ModuleInfo {
        self.base.info(ROUTES)
    }

    fn configure(&self, cfg: &mut actix_web::web::ServiceConfig) {
        inbound::http::configure(cfg, self.service.clone(), self.base.db.idempotency());
    }

    fn background_tasks(&self) -> Vec<BackgroundTask> {
        let service = self.service.clone();
        let every = self.recovery_every;
        vec![
            self.base.relay_task(),
            self.base.idempotency_purge_task(),
            BackgroundTask::new("order-recovery", move |token| {
                inbound::worker::run(service, every, token)
            }),
        ]
    }

    async fn ready(&self) -> anyhow::Result<()> {
        self.base.ready().await
    }

    async fn shutdown(&self) {
        self.base.db.close().await;
    }
}
#[cfg(test)]
mod tests;
