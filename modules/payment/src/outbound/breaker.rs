//! [`GuardedProvider`]: the payment-provider port behind the kernel's circuit
//! breaker. Faults are time-outs, transport errors, 5xx and other provider
//! failures; a decline is an answer from a healthy provider.

use std::sync::Arc;

use async_trait::async_trait;

pub use agora_kernel::breaker::{
    BreakerConfig, BreakerState, CircuitBreaker, Clock, ManualClock, SystemClock,
};

use crate::domain::models::{ChargeResult, RefundResult};
use crate::domain::ports::{
    PaymentProvider, ProviderChargeRequest, ProviderError, ProviderRefundRequest,
};

/// A provider behind a circuit breaker: open → [`ProviderError::Unavailable`]
/// without calling it; faults count, answers (declines included) do not.
pub struct GuardedProvider {
    inner: Arc<dyn PaymentProvider>,
    breaker: Arc<CircuitBreaker>,
}

impl GuardedProvider {
    pub fn new(inner: Arc<dyn PaymentProvider>, breaker: Arc<CircuitBreaker>) -> Self {
        Self { inner, breaker }
    }

    /// Run `call` under a permit of the breaker, counting its outcome: any
    /// answer is a success, any error a fault. An open breaker fails fast
    /// without running it.
    async fn guarded<T>(
        &self,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let permit = self
            .breaker
            .acquire()
            .map_err(|r| ProviderError::Unavailable {
                retry_after: r.retry_after,
            })?;
        let result = call.await;
        match &result {
            Ok(_) => permit.success(),
            Err(_) => permit.fault(),
        }
        result
    }
}

#[async_trait]
impl PaymentProvider for GuardedProvider {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn charge(&self, req: &ProviderChargeRequest) -> Result<ChargeResult, ProviderError> {
        self.guarded(self.inner.charge(req)).await
    }

    async fn refund(&self, req: &ProviderRefundRequest) -> Result<RefundResult, ProviderError> {
        self.guarded(self.inner.refund(req)).await
    }
}
