//! The inventory module: owns products, warehouses, stock levels and stock reservations.
//!
//! Its public face is [`InventoryModule`] (routes, OpenAPI fragment, background
//! tasks, readiness), its `api` handle [`InventoryService`] (what the order module's
//! adapter calls in the monolith), the domain types that handle speaks, the HTTP
//! bodies, and the integration events in [`events`]. It owns its database
//! (SQLite or MongoDB, picked by the URL's scheme) and talks to other modules
//! only through ports and integration events.

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::db::{Backend, SqlDatabase};
use agora_kernel::outbox::{OutboxRelay, OutboxStore, RelayConfig};
use agora_kernel::{
    BackgroundTask, InvalidSetting, Module, ModuleInfo, Round, Wiring, periodically,
};
use anyhow::Context;
use async_trait::async_trait;

pub mod api;
pub mod domain;
pub mod events;
pub(crate) mod inbound;
pub(crate) mod outbound;
pub mod remote;

pub use api::{InventoryApi, Quote, ReservationState};
pub use domain::models::MAX_TTL_SECS;
pub use domain::ports::{Clock, ManualClock, ReservationStep, SystemClock};
pub use domain::service::InventoryService;
pub use remote::RemoteInventory;

/// The module's settings: the `[inventory]` section, `AGORA__INVENTORY__*` variables.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Settings {
    /// Empty = the embedded SQLite default (`sqlite://<data_dir>/inventory.db`); the
    /// host resolves it and passes the URL to [`InventoryModule::build`].
    /// `mongodb://…` switches to MongoDB.
    pub database_url: secrecy::SecretString,
    /// How long a reservation is held when the caller names no TTL (1 to 604800 s).
    #[serde(default = "default_reservation_ttl_secs")]
    pub reservation_ttl_secs: u64,
    /// How often the sweeper looks for expired reservations.
    #[serde(default = "default_sweep_interval_secs")]
    pub sweep_interval_secs: u64,
}

fn default_reservation_ttl_secs() -> u64 {
    900
}

fn default_sweep_interval_secs() -> u64 {
    5
}

impl Settings {
    /// Checks deserialisation cannot express, naming the key as
    /// `inventory.<name>`.
    ///
    /// # Errors
    /// The first invalid key and why.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !(1..=MAX_TTL_SECS).contains(&self.reservation_ttl_secs) {
            return Err(InvalidSetting::new(
                "inventory.reservation_ttl_secs",
                format!("must be between 1 and {MAX_TTL_SECS} seconds"),
            ));
        }
        agora_kernel::settings::at_least_one(&[(
            "inventory.sweep_interval_secs",
            self.sweep_interval_secs,
        )])
    }

    /// Settings for a given URL with every other key at its default (tests, tools).
    pub fn with_url(url: &str) -> Self {
        Self {
            database_url: url.to_owned().into(),
            reservation_ttl_secs: default_reservation_ttl_secs(),
            sweep_interval_secs: default_sweep_interval_secs(),
        }
    }
}

/// The module's name: metric label, outbox source, event prefix.
pub const NAME: &str = "inventory";

/// Path prefixes under `/api/v1` this module serves.
pub const ROUTES: &[&str] = &["/products", "/warehouses", "/stock", "/reservations"];

/// How many expired reservations one sweep releases before looking again.
const SWEEP_BATCH: u32 = 100;

enum Store {
    Sql(SqlDatabase),
    Mongo(mongodb::Client),
}

/// The inventory module, wired to its own database.
pub struct InventoryModule {
    api: InventoryService,
    relay: OutboxRelay,
    store: Store,
    sweep_every: Duration,
}

impl InventoryModule {
    /// Connect the module's database (creating its tables or collections and
    /// indexes) and its outbox relay. `sqlite:` or `mongodb://` URLs.
    ///
    /// # Errors
    /// Invalid settings, an unreachable database, a failed migration.
    pub async fn build(settings: &Settings, wiring: Wiring) -> anyhow::Result<Self> {
        settings.validate()?;
        let database_url = wiring.database_url.as_str();
        let ttl = domain::models::Ttl::from_secs(settings.reservation_ttl_secs as i64)
            .map_err(|e| InvalidSetting::new("inventory.reservation_ttl_secs", e.to_string()))?;
        let (store, port, outbox): (
            Store,
            Arc<dyn domain::ports::InventoryStore>,
            Arc<dyn OutboxStore>,
        ) = match Backend::of_url(database_url) {
            Some(Backend::Sqlite) => {
                let db = SqlDatabase::connect(database_url).await?;
                let SqlDatabase::Sqlite(sqlite) = &db else {
                    anyhow::bail!("not an SQLite URL");
                };
                outbound::sqlite::migrate(sqlite).await?;
                let port = Arc::new(outbound::sqlite::SqliteStore::new(sqlite.clone()));
                let outbox = db.outbox();
                (Store::Sql(db), port, outbox)
            }
            Some(Backend::Mongo) => {
                let (client, port, outbox) = outbound::mongo::connect(database_url).await?;
                (Store::Mongo(client), port, outbox)
            }
            _ => anyhow::bail!(
                "the inventory module stores its data in sqlite: or mongodb:// databases"
            ),
        };
        let relay = OutboxRelay::new(NAME, outbox, wiring.bus, RelayConfig::default());
        Ok(Self {
            api: InventoryService::new(port, wiring.clock, ttl),
            relay,
            store,
            sweep_every: Duration::from_secs(settings.sweep_interval_secs),
        })
    }

    /// The handle other modules' adapters (and tests) call.
    pub fn api(&self) -> InventoryService {
        self.api.clone()
    }

    /// The module's outbox relay (its background task runs it; tests drive it).
    pub fn outbox_relay(&self) -> OutboxRelay {
        self.relay.clone()
    }

    /// Release every held reservation whose TTL has run out; how many were released.
    ///
    /// # Errors
    /// Store failures.
    pub async fn sweep_expired(&self) -> anyhow::Result<usize> {
        sweep_all(&self.api).await
    }
}

async fn sweep_all(api: &InventoryService) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let n = api.sweep_expired(SWEEP_BATCH).await?;
        total += n;
        if n < SWEEP_BATCH as usize {
            return Ok(total);
        }
    }
}

/// The module's OpenAPI fragment (paths relative to `/api/v1`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    inbound::http::InventoryDoc::openapi()
}

#[async_trait]
impl Module for InventoryModule {
    fn info(&self) -> ModuleInfo {
        ModuleInfo::new(NAME, self.api.backend(), ROUTES)
    }

    fn configure(&self, cfg: &mut actix_web::web::ServiceConfig) {
        inbound::http::configure(cfg, self.api.clone());
    }

    fn background_tasks(&self) -> Vec<BackgroundTask> {
        let relay = self.relay.clone();
        let api = self.api.clone();
        let every = self.sweep_every;
        vec![
            BackgroundTask::new(format!("{NAME}-outbox-relay"), move |token| {
                relay.run(token)
            }),
            BackgroundTask::new(
                format!("{NAME}-reservation-sweeper"),
                move |token| async move {
                    periodically(&token, every, None, || async {
                        match sweep_all(&api).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(released = n, "released expired reservations"),
                            Err(e) => {
                                tracing::error!(error = %format!("{e:#}"), "reservation sweep failed")
                            }
                        }
                        Round::Idle
                    })
                    .await;
                },
            ),
        ]
    }

    async fn ready(&self) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(2), self.api.store().ping())
            .await
            .with_context(|| format!("the {} store did not answer in time", self.api.backend()))?
    }

    async fn shutdown(&self) {
        match &self.store {
            Store::Sql(db) => db.close().await,
            Store::Mongo(client) => client.clone().shutdown().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_to_a_fifteen_minute_ttl_and_refuse_out_of_range_values() {
        let mut s = Settings::with_url("sqlite::memory:");
        assert_eq!(s.reservation_ttl_secs, 900);
        assert!(s.validate().is_ok());
        s.reservation_ttl_secs = 0;
        assert_eq!(
            s.validate().err().map(|e| e.0),
            Some("inventory.reservation_ttl_secs")
        );
        s.reservation_ttl_secs = MAX_TTL_SECS + 1;
        assert!(s.validate().is_err());
        s.reservation_ttl_secs = 60;
        s.sweep_interval_secs = 0;
        assert_eq!(
            s.validate().err().map(|e| e.0),
            Some("inventory.sweep_interval_secs")
        );
    }
}
