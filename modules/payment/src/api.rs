//! The payment module's `api`: what other modules may ask of it, as a trait
//! with two implementations shipped here — in process ([`PaymentService`])
//! and over HTTP ([`crate::remote::RemotePayments`], a client of this module's
//! own REST API for when it runs in another process). One contract suite
//! (`tests/api/payment_api.rs` at the root) runs against both.

use agora_kernel::CallContext;
use async_trait::async_trait;

use crate::domain::models::{
    ChargeRequest, OrderId, PaymentId, PaymentStatus, RefundId, RefundRequest, RefundStatus,
};
use crate::domain::service::{ChargeError, GetPaymentError, PaymentService, RefundError};

/// What a caller learns of a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentSummary {
    pub id: PaymentId,
    pub status: PaymentStatus,
    pub amount_minor: i64,
    /// Sum of succeeded refunds.
    pub refunded_minor: i64,
    /// The decline code of a `failed` payment.
    pub failure_code: Option<String>,
}

impl From<&crate::domain::models::Payment> for PaymentSummary {
    fn from(p: &crate::domain::models::Payment) -> Self {
        Self {
            id: p.id,
            status: p.status,
            amount_minor: p.amount.minor(),
            refunded_minor: p.refunded_minor,
            failure_code: p.failure_code.clone(),
        }
    }
}

/// What a caller learns of a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundSummary {
    pub id: RefundId,
    pub payment_id: PaymentId,
    pub status: RefundStatus,
    pub amount_minor: i64,
}

impl From<&crate::domain::models::Refund> for RefundSummary {
    fn from(r: &crate::domain::models::Refund) -> Self {
        Self {
            id: r.id,
            payment_id: r.payment_id,
            status: r.status,
            amount_minor: r.amount.minor(),
        }
    }
}

/// The payment module as other modules see it.
#[async_trait]
pub trait PaymentApi: Send + Sync {
    /// The order's payment (service, staff; a customer only their own).
    ///
    /// # Errors
    /// [`GetPaymentError::NotFound`] when the order was never charged.
    async fn find_by_order(
        &self,
        ctx: &CallContext,
        order_id: OrderId,
    ) -> Result<PaymentSummary, GetPaymentError>;

    /// Charge an order once, whatever is retried: the same request again
    /// returns its payment (a decline is a `failed` payment, not an error).
    /// `idempotency_key` is stable across the caller's retries.
    ///
    /// # Errors
    /// [`ChargeError`]; `ProviderUnavailable` and `InProgress` mean "retry".
    async fn charge(
        &self,
        ctx: &CallContext,
        request: ChargeRequest,
        idempotency_key: &str,
    ) -> Result<PaymentSummary, ChargeError>;

    /// Refund (part of) a payment once per request key.
    ///
    /// # Errors
    /// [`RefundError`]; `ExceedsRefundable` says how much is left.
    async fn refund(
        &self,
        ctx: &CallContext,
        request: RefundRequest,
    ) -> Result<RefundSummary, RefundError>;
}

#[async_trait]
impl PaymentApi for PaymentService {
    async fn find_by_order(
        &self,
        ctx: &CallContext,
        order_id: OrderId,
    ) -> Result<PaymentSummary, GetPaymentError> {
        PaymentService::find_by_order(self, ctx, order_id)
            .await
            .map(|p| PaymentSummary::from(&p))
    }

    async fn charge(
        &self,
        ctx: &CallContext,
        request: ChargeRequest,
        _idempotency_key: &str,
    ) -> Result<PaymentSummary, ChargeError> {
        // In process the order id is the idempotency key (one payment per order).
        PaymentService::charge(self, ctx, request)
            .await
            .map(|c| PaymentSummary::from(&c.payment))
    }

    async fn refund(
        &self,
        ctx: &CallContext,
        request: RefundRequest,
    ) -> Result<RefundSummary, RefundError> {
        PaymentService::refund(self, ctx, request)
            .await
            .map(|r| RefundSummary::from(&r.refund))
    }
}
