//! What every payment test needs: a module on a fresh database (a new SQLite
//! file or a new PostgreSQL database), a recorder of published events, callers
//! with each role, and scriptable fake providers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_kernel::db::SqlDatabase;
use agora_kernel::{CallContext, Currency, EventBus, InMemoryBus, Money, Principal, Role, Wiring};
use agora_payment::domain::models::{
    ChargeRequest, ChargeResult, CustomerId, OrderId, Payment, PaymentMethod, RefundResult,
};
use agora_payment::domain::ports::{
    PaymentProvider, PaymentStore, ProviderChargeRequest, ProviderError, ProviderRefundRequest,
};
use agora_payment::domain::service::{ChargeError, Charged};
use agora_payment::{ManualClock, PaymentModule, PaymentService, Settings};
use async_trait::async_trait;
use tempfile::TempDir;

/// Which store a contract test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Records every event the outbox relay publishes (the kernel's).
pub use agora_kernel::testing::Recorder;

/// A fresh PostgreSQL database, or `None` (skip, with a message) outside CI
/// (the kernel's).
pub async fn fresh_postgres_database() -> Option<String> {
    agora_kernel::testing::fresh_postgres_url().await
}

/// A payment module on its own fresh database.
pub struct Harness {
    pub module: PaymentModule,
    pub api: PaymentService,
    pub events: Arc<Recorder>,
    pub clock: Arc<ManualClock>,
    _dir: Option<TempDir>,
}

impl Harness {
    /// A module with default settings on `backend`; `None` when PostgreSQL is
    /// unreachable outside CI (the test then skips, saying so).
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(
        backend: Backend,
        configure: impl FnOnce(&mut Settings),
    ) -> Option<Self> {
        let (url, dir) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                (
                    format!("sqlite://{}/payment.db", dir.path().display()),
                    Some(dir),
                )
            }
            Backend::Postgres => (fresh_postgres_database().await?, None),
        };
        let mut settings = Settings::with_url(&url);
        configure(&mut settings);
        let bus = Arc::new(InMemoryBus::new());
        let events = Arc::new(Recorder::of("payment"));
        bus.subscribe(events.clone());
        let clock = Arc::new(ManualClock::new());
        let module = PaymentModule::build_with_breaker_clock(
            &settings,
            Wiring::new(&url, bus as Arc<dyn EventBus>),
            clock.clone(),
        )
        .await
        .expect("the payment module builds");
        let api = module.api();
        Some(Self {
            module,
            api,
            events,
            clock,
            _dir: dir,
        })
    }

    pub fn db(&self) -> &SqlDatabase {
        self.module.database()
    }

    pub fn store(&self) -> Arc<dyn PaymentStore> {
        agora_payment::testing::store_for(self.db())
    }

    /// A service on this module's store talking to `provider` directly (no breaker).
    pub fn api_with(&self, provider: Arc<dyn PaymentProvider>) -> PaymentService {
        PaymentService::new(self.store(), provider, Duration::from_secs(5), None)
    }

    /// Publish everything in the outbox now.
    pub async fn drain_outbox(&self) {
        let relay = self.module.outbox_relay();
        while relay.run_once().await.unwrap() > 0 {}
    }
}

pub fn service() -> CallContext {
    CallContext::new(Principal::service("order"), "corr-service")
}

pub fn staff() -> CallContext {
    CallContext::new(Principal::new("sam", [Role::Staff]), "corr-staff")
}

pub fn admin() -> CallContext {
    CallContext::new(Principal::new("ada", [Role::Admin]), "corr-admin")
}

pub fn customer(sub: &str) -> CallContext {
    CallContext::new(Principal::new(sub, [Role::Customer]), format!("corr-{sub}"))
}

pub fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap())
}

/// A charge of `minor` EUR cents for a new order of `customer` with `method`.
pub fn charge_request(customer: &str, minor: i64, method: &str) -> ChargeRequest {
    ChargeRequest::new(
        OrderId::new(),
        CustomerId::parse(customer).unwrap(),
        eur(minor),
        PaymentMethod::parse(method).unwrap(),
    )
    .unwrap()
}

/// Charge a new order of `customer` for `minor` EUR cents with `method`, as
/// the order module does.
pub async fn charge(
    api: &PaymentService,
    customer: &str,
    minor: i64,
    method: &str,
) -> Result<Charged, ChargeError> {
    api.charge(&service(), charge_request(customer, minor, method))
        .await
}

/// The payment of a charge that got an answer (succeeded or declined).
pub async fn payment(api: &PaymentService, customer: &str, minor: i64, method: &str) -> Payment {
    charge(api, customer, minor, method)
        .await
        .expect("the charge is answered")
        .payment
}

/// Assert that a provider reference is there and starts with `prefix`.
pub fn assert_ref(provider_ref: Option<&str>, prefix: &str) {
    assert!(
        provider_ref.is_some_and(|r| r.starts_with(prefix)),
        "{provider_ref:?} is not a {prefix}… reference"
    );
}

/// Assert that `err` says the provider is unavailable, retrying in `secs`.
pub fn assert_unavailable_for(err: &ChargeError, secs: u64) {
    assert!(
        matches!(err, ChargeError::ProviderUnavailable { retry_after_secs, .. } if *retry_after_secs == secs),
        "{err:?}"
    );
}

/// A provider that answers from a script (then succeeds), recording every call.
#[derive(Default)]
pub struct ScriptedProvider {
    pub charges: Mutex<VecDeque<Result<ChargeResult, ProviderError>>>,
    pub refunds: Mutex<VecDeque<Result<RefundResult, ProviderError>>>,
    pub charge_keys: Mutex<Vec<String>>,
    pub refund_keys: Mutex<Vec<String>>,
}

impl ScriptedProvider {
    pub fn then_charge(self, r: Result<ChargeResult, ProviderError>) -> Self {
        self.charges.lock().unwrap().push_back(r);
        self
    }

    pub fn then_refund(self, r: Result<RefundResult, ProviderError>) -> Self {
        self.refunds.lock().unwrap().push_back(r);
        self
    }

    pub fn charge_keys(&self) -> Vec<String> {
        self.charge_keys.lock().unwrap().clone()
    }

    pub fn refund_keys(&self) -> Vec<String> {
        self.refund_keys.lock().unwrap().clone()
    }
}

/// Record `key`, then give the next scripted answer, or `otherwise`.
fn answer<T>(
    keys: &Mutex<Vec<String>>,
    script: &Mutex<VecDeque<Result<T, ProviderError>>>,
    key: &str,
    otherwise: impl FnOnce() -> T,
) -> Result<T, ProviderError> {
    keys.lock().unwrap().push(key.to_owned());
    let next = script.lock().unwrap().pop_front();
    next.unwrap_or_else(|| Ok(otherwise()))
}

#[async_trait]
impl PaymentProvider for ScriptedProvider {
    fn name(&self) -> &'static str {
        "scripted"
    }

    async fn charge(&self, req: &ProviderChargeRequest) -> Result<ChargeResult, ProviderError> {
        answer(
            &self.charge_keys,
            &self.charges,
            &req.idempotency_key,
            || ChargeResult::Succeeded {
                provider_ref: format!("pi_{}", req.payment_id.as_uuid().simple()),
            },
        )
    }

    async fn refund(&self, req: &ProviderRefundRequest) -> Result<RefundResult, ProviderError> {
        answer(
            &self.refund_keys,
            &self.refunds,
            &req.idempotency_key,
            || RefundResult::Succeeded {
                provider_ref: format!("re_{}", req.refund_id.as_uuid().simple()),
            },
        )
    }
}
