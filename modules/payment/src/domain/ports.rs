//! The ports the payment service drives: its store and the payment provider.
//!
//! Both are picked at run time (`Arc<dyn …>`): the store by the database URL
//! (SQLite or PostgreSQL), the provider by `payment.provider` (`simulated` or
//! `http`), always behind the circuit breaker.

use std::time::Duration;

use agora_kernel::Money;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::models::{
    ChargeResult, CustomerId, LedgerEntry, NewPayment, NewRefund, OrderId, Payment, PaymentFilter,
    PaymentId, PaymentMethod, PaymentStatus, Refund, RefundId, RefundResult,
};

/// What a reserve found: a row it created, or the one that already existed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation<T> {
    Created(T),
    Existing(T),
}

/// Why a refund could not be reserved. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ReserveRefundError {
    #[error("no such payment")]
    NotFound,
    #[error("a {0} payment cannot be refunded")]
    NotRefundable(PaymentStatus),
    #[error("the refund exceeds what is left to refund ({refundable_minor} minor units)")]
    ExceedsRefundable { refundable_minor: i64 },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Where payments, refunds, the ledger and the module's outbox live. Every
/// state change that moves money writes its ledger entry and its outbox event
/// in the same transaction.
#[async_trait]
pub trait PaymentStore: Send + Sync {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Insert `new` as a `pending` payment with its provider-call lease taken,
    /// unless its order already has a payment: then that one is returned
    /// untouched. One order never has two payments, whatever the concurrency.
    ///
    /// # Errors
    /// Store failures.
    async fn reserve_charge(
        &self,
        new: &NewPayment,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Reservation<Payment>>;

    /// Take the provider-call lease of a `pending` payment when nobody holds it
    /// or its holder started before `stale_before` (crashed or gave up).
    /// Whether the lease was taken.
    ///
    /// # Errors
    /// Store failures.
    async fn lease_charge(
        &self,
        id: PaymentId,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> anyhow::Result<bool>;

    /// Give the lease of a still `pending` payment back (the provider call failed).
    ///
    /// # Errors
    /// Store failures.
    async fn release_charge(&self, id: PaymentId) -> anyhow::Result<()>;

    /// Record the provider's answer on `pending` (the payment as reserved or
    /// leased), with its ledger entry (a success) and its event
    /// (`payment.succeeded.v1` / `payment.failed.v1`) in one transaction; the
    /// payment as now stored ([`Payment::finished`]). `None` when the payment
    /// is not pending any more (another caller finished it).
    ///
    /// # Errors
    /// Store failures; then nothing was written.
    async fn finish_charge(
        &self,
        pending: &Payment,
        result: &ChargeResult,
        correlation_id: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<Payment>>;

    /// A payment with its refunds.
    ///
    /// # Errors
    /// Store failures.
    async fn get(&self, id: PaymentId) -> anyhow::Result<Option<Payment>>;

    /// Payments matching `filter`, newest first, strictly older than `after`.
    ///
    /// # Errors
    /// Store failures.
    async fn list(
        &self,
        filter: &PaymentFilter,
        after: Option<PaymentId>,
        limit: u32,
    ) -> anyhow::Result<Vec<Payment>>;

    /// Reserve `new.request.amount_minor` of the payment's refundable amount and
    /// insert a `pending` refund with its lease taken — unless a refund with the
    /// same key exists on this payment: then that one is returned untouched.
    /// Pending and succeeded refunds together never exceed the captured amount,
    /// whatever the concurrency.
    ///
    /// # Errors
    /// [`ReserveRefundError`]; nothing was changed.
    async fn reserve_refund(
        &self,
        new: &NewRefund,
        now: DateTime<Utc>,
    ) -> Result<Reservation<Refund>, ReserveRefundError>;

    /// See [`PaymentStore::lease_charge`].
    ///
    /// # Errors
    /// Store failures.
    async fn lease_refund(
        &self,
        id: RefundId,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> anyhow::Result<bool>;

    /// See [`PaymentStore::release_charge`].
    ///
    /// # Errors
    /// Store failures.
    async fn release_refund(&self, id: RefundId) -> anyhow::Result<()>;

    /// Record the provider's answer on a `pending` refund: a success adds to
    /// the payment's refunded amount, moves its status, appends the ledger
    /// entry and writes `payment.refunded.v1`; a rejection gives the reserved
    /// amount back. `None` when the refund is not pending any more.
    ///
    /// # Errors
    /// Store failures; then nothing was written.
    async fn finish_refund(
        &self,
        id: RefundId,
        result: &RefundResult,
        correlation_id: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<(Payment, Refund)>>;

    /// The payment's money movements, oldest first.
    ///
    /// # Errors
    /// Store failures.
    async fn ledger(&self, payment_id: PaymentId) -> anyhow::Result<Vec<LedgerEntry>>;
}

/// A charge as the provider sees it.
#[derive(Debug, Clone)]
pub struct ProviderChargeRequest {
    /// Sent as the provider's idempotency key: a retry with it never charges twice.
    pub idempotency_key: String,
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub amount: Money,
    pub payment_method: PaymentMethod,
}

/// A refund as the provider sees it.
#[derive(Debug, Clone)]
pub struct ProviderRefundRequest {
    pub idempotency_key: String,
    pub refund_id: RefundId,
    pub payment_id: PaymentId,
    /// The provider's reference of the charge (a PaymentIntent id).
    pub charge_ref: String,
    pub amount: Money,
    pub reason: Option<String>,
}

/// What kind of provider failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// No answer in time: the outcome is unknown.
    Timeout,
    /// The connection failed.
    Transport,
    /// The provider answered an error status (5xx, 429, 401, ...).
    Status(u16),
    /// The provider's answer could not be understood.
    Malformed,
    /// The provider reported a processing error on its side.
    Processing,
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("timeout"),
            Self::Transport => f.write_str("transport error"),
            Self::Status(s) => write!(f, "HTTP {s}"),
            Self::Malformed => f.write_str("malformed response"),
            Self::Processing => f.write_str("processing error"),
        }
    }
}

/// A provider call that did not produce an answer. Declines are answers, not
/// errors: they come back as [`ChargeResult::Declined`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The circuit breaker is open: the provider was not called.
    #[error("the payment provider is unavailable; retry in {} s", retry_after.as_secs().max(1))]
    Unavailable { retry_after: Duration },
    /// The call failed; it is retryable with the same idempotency key and
    /// counts toward the circuit breaker.
    #[error("the payment provider failed ({kind}): {detail}")]
    Fault { kind: FaultKind, detail: String },
}

impl ProviderError {
    pub fn fault(kind: FaultKind, detail: impl Into<String>) -> Self {
        Self::Fault {
            kind,
            detail: detail.into(),
        }
    }
}

/// The payment provider (Stripe-like).
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    /// `simulated` or `http`: recorded on each payment.
    fn name(&self) -> &'static str;

    /// Charge, idempotently under `req.idempotency_key`.
    ///
    /// # Errors
    /// [`ProviderError`]: the provider is unavailable or failed; a decline is
    /// an `Ok`.
    async fn charge(&self, req: &ProviderChargeRequest) -> Result<ChargeResult, ProviderError>;

    /// Refund (part of) a charge, idempotently under `req.idempotency_key`.
    ///
    /// # Errors
    /// [`ProviderError`]; a refusal is an `Ok(RefundResult::Rejected)`.
    async fn refund(&self, req: &ProviderRefundRequest) -> Result<RefundResult, ProviderError>;
}
