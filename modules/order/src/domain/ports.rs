//! The ports the order module owns: its store, and what it needs from the
//! catalogue, stock and payments. The host wires the last three to the other
//! modules' `api` handles in the monolith, and to HTTP clients once they are
//! extracted; the order module never names another module's crate.

use std::collections::BTreeMap;
use std::time::Duration;

use agora_kernel::{CallContext, EventEnvelope, Money};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use super::models::{CustomerRef, PaymentRef};
use super::models::{Order, OrderFilter, OrderId, OrderStatus, ShippingAddress, Sku, Transition};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The order's version moved on: someone else changed it first.
    #[error("the order was changed concurrently")]
    Conflict,
    #[error("no such order")]
    NotFound,
    /// The customer already placed an order with this idempotency key.
    #[error("an order with this idempotency key exists")]
    DuplicateKey,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// What one state change writes, atomically with its history row and events.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// A new status and the transition that records it; `None` keeps the status.
    pub status: Option<(OrderStatus, Transition)>,
    /// A transition the saga made in memory and did not store on its own
    /// (`pending` → `awaiting_payment` when the charge follows in the same
    /// run): its history row goes in this write, before `status`'s. The
    /// order passed to [`OrderStore::apply`] already shows its effect.
    pub earlier: Option<Transition>,
    pub payment_id: Option<PaymentRef>,
    pub failure_reason: Option<String>,
    pub attempts: Option<u32>,
    /// `Some(None)` clears the retry time.
    pub next_attempt_at: Option<Option<DateTime<Utc>>>,
    pub shipping_address: Option<ShippingAddress>,
    pub events: Vec<EventEnvelope>,
    /// When set, the change applies only while this owner holds the order's
    /// lease: a saga step that outlived its lease cannot finish.
    pub lease_owner: Option<String>,
    /// Free the lease in the same write (the saga's last step of a request).
    pub release_lease: bool,
}

/// A lease on an order: who holds it, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The holding instance (one id per running order service).
    pub owner: String,
    pub until: DateTime<Utc>,
}

/// Where orders live.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// Store a new order with its first history row and events, leased to the
    /// caller.
    ///
    /// # Errors
    /// [`StoreError::DuplicateKey`] when the customer used its idempotency key before.
    async fn insert(
        &self,
        order: &Order,
        transition: &Transition,
        events: &[EventEnvelope],
        lease: &Lease,
    ) -> Result<(), StoreError>;

    /// # Errors
    /// Store failures.
    async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError>;

    /// The customer's order placed with this idempotency key.
    ///
    /// # Errors
    /// Store failures.
    async fn find_by_key(&self, customer_id: &str, key: &str) -> Result<Option<Order>, StoreError>;

    /// Newest first; `before` is the id of the last order of the previous page.
    ///
    /// # Errors
    /// Store failures.
    async fn list(
        &self,
        filter: &OrderFilter,
        before: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError>;

    /// Apply `change` to `current` (the order as the caller read it) if the
    /// stored order is still at `current.version` (and, when
    /// `change.lease_owner` is set, still leased to that owner); bumps the
    /// version. One conditional write: the version guard makes the caller's
    /// copy the stored one, so nothing is read first.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the version moved or the lease was lost,
    /// [`StoreError::NotFound`].
    async fn apply(&self, current: &Order, change: &Change) -> Result<Order, StoreError>;

    /// # Errors
    /// Store failures.
    async fn history(&self, id: OrderId) -> Result<Vec<Transition>, StoreError>;

    /// Take the order's lease when it is free (or expired); `false` when held.
    ///
    /// # Errors
    /// Store failures.
    async fn try_lease(
        &self,
        id: OrderId,
        now: DateTime<Utc>,
        lease: &Lease,
    ) -> Result<bool, StoreError>;

    /// Extend a lease its owner still holds; `false` when it was lost (it ran
    /// out and another instance took the order).
    ///
    /// # Errors
    /// Store failures.
    async fn renew_lease(&self, id: OrderId, lease: &Lease) -> Result<bool, StoreError>;

    /// Free the lease if `owner` still holds it.
    ///
    /// # Errors
    /// Store failures.
    async fn release_lease(&self, id: OrderId, owner: &str) -> Result<(), StoreError>;

    /// Lease up to `limit` in-flight orders whose next step is due, for the
    /// recovery worker (of any instance: a crashed one's orders included).
    ///
    /// # Errors
    /// Store failures.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: &Lease,
        limit: u32,
    ) -> Result<Vec<OrderId>, StoreError>;

    /// How many orders are in `status` (for gauges; an index range, not a scan).
    ///
    /// # Errors
    /// Store failures.
    async fn count_in_status(&self, status: OrderStatus) -> Result<i64, StoreError>;
}

/// Another module's refusal. What it said is kept for the logs and retry
/// notes; it never reaches an order's `failure_reason` or an API answer, which
/// the order module words itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(String);

impl Refusal {
    pub fn new(said: impl std::fmt::Display) -> Self {
        Self(said.to_string())
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a call to another module did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Try again later (breaker open, time-out, provider fault).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// It will never succeed as asked.
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A catalogue price for a sku.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub price: Money,
    pub active: bool,
}

/// Prices at order time.
#[async_trait]
pub trait Catalogue: Send + Sync {
    /// Quotes for the skus that exist (unknown skus are absent from the map).
    ///
    /// # Errors
    /// [`PortError`].
    async fn quote(
        &self,
        ctx: &CallContext,
        skus: &[Sku],
    ) -> Result<BTreeMap<String, Quote>, PortError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved,
    /// All or nothing: nothing was reserved; these skus are short.
    Insufficient(Vec<String>),
    /// A replay of a reservation made earlier that has since ended (expired
    /// or released): it holds no stock.
    Ended,
}

/// Stock reservations, keyed by a reservation id the order derives from its id.
#[async_trait]
pub trait StockReservations: Send + Sync {
    /// Reserve every line or none; idempotent on `reservation_id`.
    ///
    /// # Errors
    /// [`PortError`].
    async fn reserve(
        &self,
        ctx: &CallContext,
        reservation_id: &str,
        order_id: OrderId,
        lines: &[(Sku, u32)],
        ttl: Duration,
    ) -> Result<ReserveOutcome, PortError>;

    /// The order is paid: the reservation stops expiring.
    ///
    /// # Errors
    /// [`PortError::Refused`] when the reservation expired or was released.
    async fn confirm(&self, ctx: &CallContext, reservation_id: &str) -> Result<(), PortError>;

    /// Stock leaves on shipment.
    ///
    /// # Errors
    /// [`PortError`].
    async fn commit(&self, ctx: &CallContext, reservation_id: &str) -> Result<(), PortError>;

    /// Give the stock back; a no-op for an unknown or already released reservation.
    ///
    /// # Errors
    /// [`PortError`].
    async fn release(&self, ctx: &CallContext, reservation_id: &str) -> Result<(), PortError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub order_id: OrderId,
    pub customer_id: CustomerRef,
    pub amount: Money,
    pub payment_method: String,
    pub idempotency_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded {
        payment_id: PaymentRef,
    },
    /// Final: the card was declined.
    Declined {
        payment_id: PaymentRef,
        code: String,
    },
}

/// How a refund request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundOutcome {
    Refunded,
    /// Less is left to refund than asked (staff refunded part already):
    /// nothing happened; this much is left.
    OnlyLeft(Money),
    /// Nothing is left to refund (refunded in full already).
    NothingLeft,
}

/// Where an order's payment stands, as the payment module knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentState {
    /// The outcome is not known yet (a provider call in flight or timed out).
    Pending,
    /// Money was taken (possibly partly refunded since).
    Captured,
    /// Declined, or already refunded in full: nothing to give back.
    Settled,
}

/// Charges and refunds.
#[async_trait]
pub trait Payments: Send + Sync {
    /// The order's payment, if any was ever started.
    ///
    /// # Errors
    /// [`PortError`].
    async fn find(
        &self,
        ctx: &CallContext,
        order_id: OrderId,
    ) -> Result<Option<(PaymentRef, PaymentState)>, PortError>;

    /// Charge once per idempotency key, whatever is retried.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when the outcome is not known yet.
    async fn charge(
        &self,
        ctx: &CallContext,
        request: &ChargeRequest,
    ) -> Result<ChargeOutcome, PortError>;

    /// Refund `amount` of the payment, once per idempotency key.
    ///
    /// # Errors
    /// [`PortError`].
    async fn refund(
        &self,
        ctx: &CallContext,
        payment_id: &PaymentRef,
        amount: Money,
        idempotency_key: &str,
    ) -> Result<RefundOutcome, PortError>;
}
