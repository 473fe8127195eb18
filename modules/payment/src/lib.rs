//! The payment module: takes payments for orders and refunds them through a payment-provider port.
//!
//! Its public face is [`PaymentModule`] (routes, OpenAPI fragment, background
//! tasks, readiness), its `api` handle [`PaymentService`] (what the order module's
//! adapter calls in the monolith), the domain types that handle speaks, the
//! HTTP bodies, and the integration events in [`events`]. It owns its database
//! (SQLite or PostgreSQL) and talks to other modules only through ports and
//! integration events. Every provider call goes through a circuit breaker.

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::db::SqlModuleBase;
use agora_kernel::idempotency::IdempotencyConfig;
use agora_kernel::outbox::OutboxRelay;
use agora_kernel::{BackgroundTask, InvalidSetting, Module, ModuleInfo, Wiring};
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

pub mod api;
pub mod domain;
pub mod events;
pub(crate) mod inbound;
pub(crate) mod outbound;
pub mod remote;
/// The adapters the module's own test suites drive directly.
#[cfg(feature = "testing")]
pub mod testing;

pub use api::{PaymentApi, PaymentSummary, RefundSummary};
pub use domain::service::PaymentService;
pub use outbound::breaker::{BreakerState, CircuitBreaker, Clock, ManualClock, SystemClock};
pub use remote::RemotePayments;

/// Which payment provider the module talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum ProviderKind {
    /// Deterministic `tok_*` test tokens, no network (the default).
    #[default]
    Simulated,
    /// A Stripe-compatible HTTP API at `provider_url`.
    Http,
}

impl TryFrom<String> for ProviderKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        agora_kernel::settings::one_of(&s, &[("simulated", Self::Simulated), ("http", Self::Http)])
    }
}

/// The circuit breaker around provider calls: `[payment.breaker]`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BreakerSettings {
    /// Consecutive provider faults that open the breaker.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// How long an open breaker fails fast before one trial call.
    #[serde(default = "default_recovery_timeout_secs")]
    pub recovery_timeout_secs: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: default_failure_threshold(),
            recovery_timeout_secs: default_recovery_timeout_secs(),
        }
    }
}

fn default_failure_threshold() -> u32 {
    5
}

fn default_recovery_timeout_secs() -> u64 {
    30
}

fn default_provider_timeout_ms() -> u64 {
    2000
}

fn empty_secret() -> SecretString {
    SecretString::from(String::new())
}

/// The module's settings: the `[payment]` section, `AGORA__PAYMENT__*` variables.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Settings {
    /// Empty = the embedded SQLite default (`sqlite://<data_dir>/payment.db`); the
    /// host resolves it and passes the URL to [`PaymentModule::build`].
    pub database_url: SecretString,
    /// `simulated` (default) or `http`.
    #[serde(default)]
    pub provider: ProviderKind,
    /// The `http` provider's base URL, e.g. `https://api.stripe.com`.
    #[serde(default)]
    pub provider_url: String,
    /// The `http` provider's secret key (`sk_test_...`), sent as a Bearer token.
    #[serde(default = "empty_secret")]
    pub provider_secret_key: SecretString,
    /// Time-out of one `http` provider call.
    #[serde(default = "default_provider_timeout_ms")]
    pub provider_timeout_ms: u64,
    /// Delay the `simulated` provider adds to each call.
    #[serde(default)]
    pub simulated_latency_ms: u64,
    #[serde(default)]
    pub breaker: BreakerSettings,
}

impl Settings {
    /// Settings for a given URL with every other key at its default (tests, tools).
    pub fn with_url(url: &str) -> Self {
        Self {
            database_url: url.to_owned().into(),
            provider: ProviderKind::Simulated,
            provider_url: String::new(),
            provider_secret_key: empty_secret(),
            provider_timeout_ms: default_provider_timeout_ms(),
            simulated_latency_ms: 0,
            breaker: BreakerSettings::default(),
        }
    }

    /// Checks serde cannot express, naming the key as `payment.<name>`.
    ///
    /// # Errors
    /// The first invalid key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.provider == ProviderKind::Http {
            let url = self.provider_url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(InvalidSetting::new(
                    "payment.provider_url",
                    "the http provider needs an http(s) URL",
                ));
            }
            if self.provider_secret_key.expose_secret().is_empty() {
                tracing::warn!(
                    "AGORA__PAYMENT__PROVIDER_SECRET_KEY is empty: the http provider sends no Authorization header"
                );
            }
        }
        agora_kernel::settings::at_least_one(&[
            ("payment.provider_timeout_ms", self.provider_timeout_ms),
            (
                "payment.breaker.failure_threshold",
                u64::from(self.breaker.failure_threshold),
            ),
            (
                "payment.breaker.recovery_timeout_secs",
                self.breaker.recovery_timeout_secs,
            ),
        ])
    }
}

/// The module's name: metric label, outbox source, event prefix.
pub const NAME: &str = "payment";

/// The breaker's label on `agora_circuit_breaker_state`.
pub const BREAKER_NAME: &str = "payment_provider";

/// Path prefixes under `/api/v1` this module serves.
pub const ROUTES: &[&str] = &["/payments"];

/// The payment module, wired to its own database.
pub struct PaymentModule {
    base: SqlModuleBase,
    api: PaymentService,
    breaker: Arc<CircuitBreaker>,
}

impl PaymentModule {
    /// Connect the module's database (creating its tables), its provider behind
    /// the circuit breaker, and its outbox relay.
    ///
    /// # Errors
    /// Invalid settings, an unreachable database, a failed migration.
    pub async fn build(settings: &Settings, wiring: Wiring) -> anyhow::Result<Self> {
        Self::build_with_breaker_clock(settings, wiring, Arc::new(SystemClock)).await
    }

    /// [`PaymentModule::build`] with the breaker reading `breaker_clock`, its
    /// monotonic clock (tests move a [`ManualClock`]).
    ///
    /// # Errors
    /// See [`PaymentModule::build`].
    pub async fn build_with_breaker_clock(
        settings: &Settings,
        wiring: Wiring,
        breaker_clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        settings.validate()?;
        let provider: Arc<dyn domain::ports::PaymentProvider> = match settings.provider {
            ProviderKind::Simulated => Arc::new(outbound::simulated::SimulatedProvider::new(
                Duration::from_millis(settings.simulated_latency_ms),
            )),
            ProviderKind::Http => Arc::new(outbound::http_provider::HttpProvider::new(
                settings.provider_url.trim(),
                settings.provider_secret_key.clone(),
                Duration::from_millis(settings.provider_timeout_ms),
            )?),
        };
        let base = SqlModuleBase::connect(NAME, &wiring).await?;
        outbound::sql::migrate(&base.db).await?;
        let store = outbound::sql::store_for(&base.db);
        let breaker = Arc::new(CircuitBreaker::new(
            BREAKER_NAME,
            outbound::breaker::BreakerConfig {
                failure_threshold: settings.breaker.failure_threshold,
                recovery_timeout: Duration::from_secs(settings.breaker.recovery_timeout_secs),
            },
            breaker_clock,
        ));
        let guarded = Arc::new(outbound::breaker::GuardedProvider::new(
            provider,
            breaker.clone(),
        ));
        // A provider call's lease is abandoned once it cannot be running any more.
        let lease = Duration::from_millis(
            settings
                .provider_timeout_ms
                .max(settings.simulated_latency_ms),
        ) + Duration::from_secs(5);
        let api = PaymentService::new(store, guarded, lease, Some(base.relay.waker()))
            .with_clock(wiring.clock);
        Ok(Self { base, api, breaker })
    }

    /// The handle other modules' adapters (and tests) call.
    pub fn api(&self) -> PaymentService {
        self.api.clone()
    }

    /// The circuit breaker around the provider.
    pub fn breaker(&self) -> Arc<CircuitBreaker> {
        self.breaker.clone()
    }

    /// The module's outbox relay (its background task runs it; tests drive it).
    pub fn outbox_relay(&self) -> OutboxRelay {
        self.base.relay.clone()
    }

    /// The module's database (tests inspect it).
    pub fn database(&self) -> &agora_kernel::db::SqlDatabase {
        &self.base.db
    }
}

/// The module's OpenAPI fragment (paths relative to `/api/v1`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    inbound::http::PaymentDoc::openapi()
}

#[async_trait]
impl Module for PaymentModule {
    fn info(&self) -> ModuleInfo {
        self.base.info(ROUTES)
    }

    fn configure(&self, cfg: &mut actix_web::web::ServiceConfig) {
        inbound::http::configure(
            cfg,
            self.api.clone(),
            self.base.db.idempotency(),
            IdempotencyConfig::default(),
        );
    }

    fn background_tasks(&self) -> Vec<BackgroundTask> {
        vec![self.base.relay_task(), self.base.idempotency_purge_task()]
    }

    async fn ready(&self) -> anyhow::Result<()> {
        self.base.ready().await
    }

    async fn shutdown(&self) {
        self.base.db.close().await;
    }
}
