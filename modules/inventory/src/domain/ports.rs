//! What the inventory domain needs from the outside world: a store (SQLite or
//! MongoDB, chosen at run time) and a clock. Also the errors each operation
//! can end in, which both the service and the store speak.

pub use agora_kernel::clock::{Clock, ManualClock, SystemClock};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::models::{
    Adjustment, ChangeMeta, Movement, NewProduct, NewReservation, NewWarehouse, Product,
    ProductPatch, Receipt, ReleaseReason, Reservation, ReservationId, ReservationStatus, Shortage,
    Sku, StockSummary, Warehouse, WarehouseCode,
};

/// Creating or changing a catalogue entry.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("a product with sku {0} already exists")]
    DuplicateSku(Sku),
    #[error("no product with sku {0}")]
    NotFound(Sku),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Creating a warehouse.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("a warehouse with code {0} already exists")]
    Duplicate(WarehouseCode),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Receiving or adjusting stock.
#[derive(Debug, thiserror::Error)]
pub enum StockError {
    #[error("no product with sku {0}")]
    UnknownProduct(Sku),
    #[error("no warehouse with code {0}")]
    UnknownWarehouse(WarehouseCode),
    /// The result would be below zero or below what is reserved.
    #[error("adjusting by {delta} would leave {} on hand with {reserved} reserved", on_hand + delta)]
    WouldUnderflow {
        on_hand: i64,
        reserved: i64,
        delta: i64,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Reading products, stock, movements or reservations.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    NotFound(String),
    /// A pagination cursor this module did not hand out.
    #[error("not a cursor this collection handed out")]
    BadCursor,
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Reserving stock.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// The lines are empty, too many or name a sku twice.
    #[error("{0}")]
    InvalidLines(String),
    /// Lines naming skus that are unknown or inactive: (line index, sku).
    #[error("unknown or inactive products")]
    UnknownProducts(Vec<(usize, Sku)>),
    /// Lines short of stock; nothing was reserved.
    #[error("insufficient stock")]
    Insufficient(Vec<Shortage>),
    /// The id is taken by a reservation with different lines or order.
    #[error("reservation {0} already exists with a different order or lines")]
    IdConflict(ReservationId),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Confirming, committing or releasing a reservation.
#[derive(Debug, thiserror::Error)]
pub enum ReservationError {
    #[error("no reservation {0}")]
    NotFound(ReservationId),
    #[error("reservation {id} is {from} and cannot be {to}")]
    InvalidTransition {
        id: ReservationId,
        from: &'static str,
        to: &'static str,
    },
    #[error("reservation {0} has expired")]
    Expired(ReservationId),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A reservation and whether this call created it (`false`: idempotent replay).
#[derive(Debug, Clone)]
pub struct ReserveOutcome {
    pub reservation: Reservation,
    pub created: bool,
}

/// A transition a caller may ask of a reservation (the `api`, the HTTP
/// routes `/reservations/{id}/confirm|commit|release`). Only the sweeper
/// releases for expiry ([`ReleaseReason::Expired`]); a caller's release is
/// always [`ReleaseReason::Requested`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStep {
    /// Held → confirmed: the TTL no longer applies. Fails once expired.
    Confirm,
    /// The stock leaves (shipment): on hand and reserved both drop.
    Commit,
    /// The reserved units become available again.
    Release,
}

impl ReservationStep {
    /// The step as its route names it: `confirm`, `commit` or `release`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirm => "confirm",
            Self::Commit => "commit",
            Self::Release => "release",
        }
    }

    /// Where the reservation stands once the step is taken.
    pub fn target(self) -> ReservationStatus {
        Transition::from(self).target()
    }
}

impl From<ReservationStep> for Transition {
    fn from(step: ReservationStep) -> Self {
        match step {
            ReservationStep::Confirm => Self::Confirm,
            ReservationStep::Commit => Self::Commit,
            ReservationStep::Release => Self::Release(ReleaseReason::Requested),
        }
    }
}

/// The state change a reservation transition asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Confirm,
    Commit,
    Release(ReleaseReason),
}

impl Transition {
    pub fn target(self) -> ReservationStatus {
        match self {
            Self::Confirm => ReservationStatus::Confirmed,
            Self::Commit => ReservationStatus::Committed,
            Self::Release(_) => ReservationStatus::Released,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Confirm => "confirmed",
            Self::Commit => "committed",
            Self::Release(ReleaseReason::Requested) => "released",
            Self::Release(ReleaseReason::Expired) => "expired",
        }
    }

    /// Whether `r` may take this transition at `now`: `Ok(true)` apply it,
    /// `Ok(false)` it already happened (idempotent), `Err` it may not.
    /// [`Transition::decide`] asks this of the row a store read inside its
    /// transaction (and guards its update on).
    ///
    /// # Errors
    /// [`ReservationError::Expired`] for a held reservation past its TTL;
    /// [`ReservationError::InvalidTransition`] otherwise.
    pub fn check(self, r: &Reservation, now: DateTime<Utc>) -> Result<bool, ReservationError> {
        use ReservationStatus as S;
        let invalid = || ReservationError::InvalidTransition {
            id: r.id,
            from: r.status.as_str(),
            to: self.verb(),
        };
        match (self, r.status) {
            (Self::Confirm, S::Held) | (Self::Commit, S::Held) if r.is_expired(now) => {
                Err(ReservationError::Expired(r.id))
            }
            (Self::Confirm, S::Held) => Ok(true),
            (Self::Confirm, S::Confirmed) => Ok(false),
            (Self::Commit, S::Held | S::Confirmed) => Ok(true),
            (Self::Commit, S::Committed) => Ok(false),
            (Self::Release(ReleaseReason::Requested), S::Held | S::Confirmed) => Ok(true),
            (Self::Release(ReleaseReason::Requested), S::Released) => Ok(false),
            (Self::Release(ReleaseReason::Expired), S::Held) if r.is_expired(now) => Ok(true),
            _ => Err(invalid()),
        }
    }
}

/// Where inventory keeps its state. Every write that changes stock records a
/// movement and writes its events to the module's outbox atomically with the
/// change; no write may ever leave `reserved > on_hand` or `on_hand < 0`.
#[async_trait]
pub trait InventoryStore: Send + Sync {
    /// `sqlite` or `mongodb`.
    fn backend(&self) -> &'static str;

    /// # Errors
    /// [`CatalogueError::DuplicateSku`]; store failures.
    async fn create_product(
        &self,
        p: &NewProduct,
        at: DateTime<Utc>,
    ) -> Result<Product, CatalogueError>;

    /// # Errors
    /// Store failures.
    async fn product(&self, sku: &Sku) -> anyhow::Result<Option<Product>>;

    /// Products by sku, after `after`; inactive ones only when asked.
    ///
    /// # Errors
    /// Store failures.
    async fn products(
        &self,
        after: Option<&Sku>,
        limit: u32,
        include_inactive: bool,
    ) -> anyhow::Result<Vec<Product>>;

    /// Apply `patch` (a soft delete included), as [`ProductPatch::apply`] does.
    ///
    /// # Errors
    /// [`CatalogueError::NotFound`]; store failures.
    async fn update_product(
        &self,
        sku: &Sku,
        patch: &ProductPatch,
        at: DateTime<Utc>,
    ) -> Result<Product, CatalogueError>;

    /// # Errors
    /// [`WarehouseError::Duplicate`]; store failures.
    async fn create_warehouse(
        &self,
        w: &NewWarehouse,
        at: DateTime<Utc>,
    ) -> Result<Warehouse, WarehouseError>;

    /// # Errors
    /// Store failures.
    async fn warehouses(
        &self,
        after: Option<&WarehouseCode>,
        limit: u32,
    ) -> anyhow::Result<Vec<Warehouse>>;

    /// Add on-hand stock, as [`super::stock::receive`] decides.
    ///
    /// # Errors
    /// [`StockError::UnknownProduct`], [`StockError::UnknownWarehouse`]; store failures.
    async fn receive(&self, r: &Receipt, meta: &ChangeMeta) -> Result<Movement, StockError>;

    /// Correct on-hand stock, as [`super::stock::adjust`] decides: refused
    /// when the result would be below zero or below what is reserved.
    ///
    /// # Errors
    /// As [`InventoryStore::receive`], plus [`StockError::WouldUnderflow`].
    async fn adjust(&self, a: &Adjustment, meta: &ChangeMeta) -> Result<Movement, StockError>;

    /// Stock of a sku per warehouse (warehouses by code); `None` for an unknown sku.
    ///
    /// # Errors
    /// Store failures.
    async fn stock(&self, sku: &Sku) -> anyhow::Result<Option<StockSummary>>;

    /// Movements of a sku, newest first, older than `before`.
    ///
    /// # Errors
    /// Store failures.
    async fn movements(
        &self,
        sku: &Sku,
        before: Option<Uuid>,
        limit: u32,
    ) -> anyhow::Result<Vec<Movement>>;

    /// Reserve every line or none, as [`super::stock::replay`] and
    /// [`super::stock::hold`] decide from what the store read inside its
    /// transaction: a second call with the same id and request returns the
    /// first result.
    ///
    /// # Errors
    /// [`ReserveError::UnknownProducts`], [`ReserveError::Insufficient`],
    /// [`ReserveError::IdConflict`]; store failures.
    async fn reserve(
        &self,
        r: &NewReservation,
        expires_at: DateTime<Utc>,
        meta: &ChangeMeta,
    ) -> Result<ReserveOutcome, ReserveError>;

    /// # Errors
    /// Store failures.
    async fn reservation(&self, id: ReservationId) -> anyhow::Result<Option<Reservation>>;

    /// Apply what [`Transition::decide`] makes of the stored reservation at `meta.at`.
    ///
    /// # Errors
    /// [`ReservationError::NotFound`] and those of [`Transition::check`]; store failures.
    async fn transition(
        &self,
        id: ReservationId,
        t: Transition,
        meta: &ChangeMeta,
    ) -> Result<Reservation, ReservationError>;

    /// Held reservations whose TTL ran out by `now`, oldest first.
    ///
    /// # Errors
    /// Store failures.
    async fn expired(&self, now: DateTime<Utc>, limit: u32) -> anyhow::Result<Vec<ReservationId>>;

    /// A round trip to the store.
    ///
    /// # Errors
    /// The store does not answer.
    async fn ping(&self) -> anyhow::Result<()>;
}
