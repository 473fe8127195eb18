//! The payment module: takes payments for orders and refunds them through a payment-provider port.
//!
//! Its public face is [`PaymentModule`] (routes, OpenAPI fragment, background
//! tasks, readiness) and [`openapi`]. It owns its database and talks to other
//! modules only through ports and integration events.

use std::sync::Arc;

use agora_kernel::db::SqlModuleBase;
use agora_kernel::{BackgroundTask, EventBus, Module, ModuleInfo};
use async_trait::async_trait;

/// The module's settings: the `[payment]` section, `AGORA__PAYMENT__*` variables.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Settings {
    /// Empty = the embedded SQLite default (`sqlite://<data_dir>/payment.db`); the
    /// host resolves it and passes the URL to [`PaymentModule::build`].
    pub database_url: secrecy::SecretString,
}

/// The module's name: metric label, outbox source, event prefix.
pub const NAME: &str = "payment";

/// Path prefixes under `/api/v1` this module serves.
pub const ROUTES: &[&str] = &[];

/// The payment module, wired to its own database.
pub struct PaymentModule {
    base: SqlModuleBase,
}

impl PaymentModule {
    /// Connect the module's database (creating its tables) and its outbox relay.
    ///
    /// # Errors
    /// The database is unreachable or cannot be migrated.
    pub async fn build(
        _settings: &Settings,
        database_url: &str,
        bus: Arc<dyn EventBus>,
    ) -> anyhow::Result<Self> {
        let base = SqlModuleBase::connect(NAME, database_url, bus).await?;
        Ok(Self { base })
    }
}

/// The module's OpenAPI fragment.
pub fn openapi() -> utoipa::openapi::OpenApi {
    utoipa::openapi::OpenApiBuilder::new().build()
}

#[async_trait]
impl Module for PaymentModule {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            name: NAME.to_owned(),
            store: self.base.db.backend().as_str().to_owned(),
            routes: ROUTES.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn configure(&self, _cfg: &mut actix_web::web::ServiceConfig) {}

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        openapi()
    }

    fn background_tasks(&self) -> Vec<BackgroundTask> {
        vec![self.base.relay_task()]
    }

    async fn ready(&self) -> anyhow::Result<()> {
        self.base.ready().await
    }

    async fn shutdown(&self) {
        self.base.db.close().await;
    }
}
