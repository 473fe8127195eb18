//! The `simulated` payment provider (the default): deterministic Stripe-style
//! test tokens, an optional delay, no network.
//!
//! | token | outcome |
//! |---|---|
//! | `tok_visa`, `tok_mastercard` | succeeds |
//! | `tok_chargeDeclined` | declined, `card_declined` |
//! | `tok_insufficient_funds` | declined, `insufficient_funds` |
//! | `tok_processing_error` | provider fault (retryable, counts toward the breaker) |
//! | anything else | declined, `invalid_payment_method` |
//!
//! Refunds always succeed. References derive from the idempotency subject
//! (`pi_sim_<payment id>`, `re_sim_<refund id>`), so a retry answers the same.

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::models::{ChargeResult, RefundResult};
use crate::domain::ports::{
    FaultKind, PaymentProvider, ProviderChargeRequest, ProviderError, ProviderRefundRequest,
};

pub struct SimulatedProvider {
    latency: Duration,
}

impl SimulatedProvider {
    pub fn new(latency: Duration) -> Self {
        Self { latency }
    }

    async fn delay(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}

#[async_trait]
impl PaymentProvider for SimulatedProvider {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn charge(&self, req: &ProviderChargeRequest) -> Result<ChargeResult, ProviderError> {
        self.delay().await;
        let reference = format!("pi_sim_{}", req.payment_id.as_uuid().simple());
        let declined = |code: &str| ChargeResult::Declined {
            code: code.to_owned(),
            provider_ref: Some(reference.clone()),
        };
        match req.payment_method.as_str() {
            "tok_visa" | "tok_mastercard" => Ok(ChargeResult::Succeeded {
                provider_ref: reference.clone(),
            }),
            "tok_chargeDeclined" => Ok(declined("card_declined")),
            "tok_insufficient_funds" => Ok(declined("insufficient_funds")),
            "tok_processing_error" => Err(ProviderError::fault(
                FaultKind::Processing,
                "simulated processing error",
            )),
            _ => Ok(declined("invalid_payment_method")),
        }
    }

    async fn refund(&self, req: &ProviderRefundRequest) -> Result<RefundResult, ProviderError> {
        self.delay().await;
        Ok(RefundResult::Succeeded {
            provider_ref: format!("re_sim_{}", req.refund_id.as_uuid().simple()),
        })
    }
}
