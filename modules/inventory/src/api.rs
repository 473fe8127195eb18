//! The inventory module's `api`: what other modules may ask of it, as a trait
//! with two implementations shipped here — in process ([`InventoryService`])
//! and over HTTP ([`crate::remote::RemoteInventory`], a client of this
//! module's own REST API for when it runs in another process). One contract
//! suite (`tests/api/api_contracts.rs` at the root) runs against both.

use agora_kernel::{CallContext, Money};
use async_trait::async_trait;

use crate::domain::models::{NewReservation, Reservation, ReservationId, ReservationStatus, Sku};
use crate::domain::ports::{ReadError, ReservationError, ReservationStep, ReserveError};
use crate::domain::service::InventoryService;

/// A catalogue price.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub sku: Sku,
    pub price: Money,
    pub active: bool,
}

/// Where a reservation stands after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationState {
    pub id: ReservationId,
    pub status: ReservationStatus,
    /// Whether this call made it (`false`: a replay, or a transition).
    pub created: bool,
}

impl ReservationState {
    fn of(r: &Reservation, created: bool) -> Self {
        Self {
            id: r.id,
            status: r.status,
            created,
        }
    }
}

/// The inventory module as other modules see it.
#[async_trait]
pub trait InventoryApi: Send + Sync {
    /// The prices of these skus (at most 100); unknown skus are absent, and so
    /// are inactive ones unless the caller is staff.
    ///
    /// # Errors
    /// [`ReadError`].
    async fn quote(&self, ctx: &CallContext, skus: &[Sku]) -> Result<Vec<Quote>, ReadError>;

    /// Reserve every line or none (service); idempotent on the reservation id.
    ///
    /// # Errors
    /// [`ReserveError`]; `Insufficient` lists the short lines.
    async fn reserve(
        &self,
        ctx: &CallContext,
        request: NewReservation,
    ) -> Result<ReservationState, ReserveError>;

    /// Take `step` on a reservation (service): confirm (it stops expiring),
    /// commit (the stock leaves) or release (the units become available
    /// again). A step already taken answers where the reservation stands.
    ///
    /// # Errors
    /// [`ReservationError`]; `InvalidTransition` names the current status.
    async fn transition(
        &self,
        ctx: &CallContext,
        id: ReservationId,
        step: ReservationStep,
    ) -> Result<ReservationState, ReservationError>;
}

#[async_trait]
impl InventoryApi for InventoryService {
    async fn quote(&self, ctx: &CallContext, skus: &[Sku]) -> Result<Vec<Quote>, ReadError> {
        Ok(InventoryService::quote(self, ctx, skus)
            .await?
            .into_iter()
            .map(|p| Quote {
                sku: p.sku,
                price: p.price,
                active: p.active,
            })
            .collect())
    }

    async fn reserve(
        &self,
        ctx: &CallContext,
        request: NewReservation,
    ) -> Result<ReservationState, ReserveError> {
        let outcome = InventoryService::reserve(self, ctx, request).await?;
        Ok(ReservationState::of(&outcome.reservation, outcome.created))
    }

    async fn transition(
        &self,
        ctx: &CallContext,
        id: ReservationId,
        step: ReservationStep,
    ) -> Result<ReservationState, ReservationError> {
        let r = InventoryService::transition(self, ctx, id, step).await?;
        Ok(ReservationState::of(&r, false))
    }
}
