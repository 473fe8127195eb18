//! The order module's ports over the inventory and payment modules' `api`
//! traits. This is the only place where two modules meet, and it only
//! translates types: it does not care whether the `api` it was given runs in
//! this process or in another one (`InventoryService` / `RemoteInventory`,
//! `PaymentService` / `RemotePayments`), and what to do about an outcome (a
//! replayed reservation that ended, a partly refunded payment) is the order
//! saga's business.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agora_inventory::domain::models as inv;
use agora_inventory::domain::ports::{ReadError, ReservationError, ReserveError};
use agora_inventory::{InventoryApi, ReservationStep};
use agora_kernel::{CallContext, Money};
use agora_order::domain::models::{OrderId, Sku};
use agora_order::domain::ports::{
    Catalogue, ChargeOutcome, ChargeRequest, PaymentRef, PaymentState, Payments, PortError, Quote,
    RefundOutcome, Refusal, ReserveOutcome, StockReservations,
};
use agora_payment::PaymentApi;
use agora_payment::domain::models as pay;
use agora_payment::domain::service::{ChargeError, GetPaymentError, RefundError};
use async_trait::async_trait;

/// Catalogue prices and stock reservations, from the inventory module.
pub struct InventoryPorts(pub Arc<dyn InventoryApi>);

fn refused(e: impl std::fmt::Display) -> PortError {
    PortError::Refused(Refusal::new(e))
}

/// Ports over one module's `api`, and what its errors mean to them.
trait ModulePorts {
    /// The module, as its unavailability is reported.
    const MODULE: &'static str;

    /// The module could not answer: `e` is its `Unexpected`, shown with its
    /// causes.
    fn unavailable(e: impl std::fmt::Display) -> PortError {
        PortError::Unavailable(format!("{}: {e:#}", Self::MODULE))
    }

    /// An error of the module that no arm of the port handles: the module's
    /// `Unexpected` (`unexpected`) leaves it unavailable; anything else
    /// refuses the request.
    fn error(unexpected: bool, e: impl std::fmt::Display) -> PortError {
        if unexpected {
            Self::unavailable(e)
        } else {
            refused(e)
        }
    }
}

impl ModulePorts for InventoryPorts {
    const MODULE: &'static str = "inventory";
}

fn reservation_id(id: &str) -> Result<inv::ReservationId, PortError> {
    uuid::Uuid::parse_str(id)
        .map(inv::ReservationId)
        .map_err(refused)
}

impl InventoryPorts {
    /// Ask inventory for `step`. A step that already happened counts as done
    /// (every call is retried).
    async fn transition(
        &self,
        ctx: &CallContext,
        id: &str,
        step: ReservationStep,
    ) -> Result<(), PortError> {
        match self.0.transition(ctx, reservation_id(id)?, step).await {
            Ok(_) => Ok(()),
            // Never reserved (a rejected order): nothing to give back.
            Err(ReservationError::NotFound(_)) if step == ReservationStep::Release => Ok(()),
            Err(ReservationError::InvalidTransition { from, .. })
                if from == step.target().as_str() =>
            {
                Ok(())
            }
            Err(e) => Err(Self::error(matches!(e, ReservationError::Unexpected(_)), e)),
        }
    }
}

#[async_trait]
impl Catalogue for InventoryPorts {
    async fn quote(
        &self,
        ctx: &CallContext,
        skus: &[Sku],
    ) -> Result<BTreeMap<String, Quote>, PortError> {
        // A sku inventory would not accept is unknown to it.
        let parsed: Vec<inv::Sku> = skus
            .iter()
            .filter_map(|s| inv::Sku::parse(s.as_str()).ok())
            .collect();
        match self.0.quote(ctx, &parsed).await {
            Ok(quotes) => Ok(quotes
                .into_iter()
                .map(|q| {
                    (
                        q.sku.as_str().to_owned(),
                        Quote {
                            price: q.price,
                            active: q.active,
                        },
                    )
                })
                .collect()),
            Err(e) => Err(Self::error(matches!(e, ReadError::Unexpected(_)), e)),
        }
    }
}

#[async_trait]
impl StockReservations for InventoryPorts {
    async fn reserve(
        &self,
        ctx: &CallContext,
        id: &str,
        order_id: OrderId,
        lines: &[(Sku, u32)],
        ttl: Duration,
    ) -> Result<ReserveOutcome, PortError> {
        let lines = lines
            .iter()
            .map(|(sku, q)| inv::LineRequest::parse(sku.as_str(), i64::from(*q)).map_err(refused))
            .collect::<Result<Vec<_>, PortError>>()?;
        let request = inv::NewReservation {
            id: reservation_id(id)?,
            order_id: inv::OrderRef::parse(&order_id.to_string()).map_err(refused)?,
            lines,
            ttl: Some(inv::Ttl::from_secs(ttl.as_secs().max(1) as i64).map_err(refused)?),
        };
        match self.0.reserve(ctx, request).await {
            Ok(r) if r.status == inv::ReservationStatus::Released => Ok(ReserveOutcome::Ended),
            Ok(_) => Ok(ReserveOutcome::Reserved),
            Err(ReserveError::Insufficient(short)) => Ok(ReserveOutcome::Insufficient(
                short
                    .into_iter()
                    .map(|s| s.sku.as_str().to_owned())
                    .collect(),
            )),
            Err(e) => Err(Self::error(matches!(e, ReserveError::Unexpected(_)), e)),
        }
    }

    async fn confirm(&self, ctx: &CallContext, id: &str) -> Result<(), PortError> {
        self.transition(ctx, id, ReservationStep::Confirm).await
    }

    async fn commit(&self, ctx: &CallContext, id: &str) -> Result<(), PortError> {
        self.transition(ctx, id, ReservationStep::Commit).await
    }

    async fn release(&self, ctx: &CallContext, id: &str) -> Result<(), PortError> {
        self.transition(ctx, id, ReservationStep::Release).await
    }
}

/// Charges and refunds, from the payment module.
pub struct PaymentPorts(pub Arc<dyn PaymentApi>);

impl ModulePorts for PaymentPorts {
    const MODULE: &'static str = "payment";
}

#[async_trait]
impl Payments for PaymentPorts {
    async fn find(
        &self,
        ctx: &CallContext,
        order_id: OrderId,
    ) -> Result<Option<(PaymentRef, PaymentState)>, PortError> {
        match self
            .0
            .find_by_order(ctx, pay::OrderId(order_id.as_uuid()))
            .await
        {
            Ok(p) => {
                let state = match p.status {
                    pay::PaymentStatus::Pending => PaymentState::Pending,
                    pay::PaymentStatus::Succeeded | pay::PaymentStatus::PartiallyRefunded => {
                        PaymentState::Captured
                    }
                    pay::PaymentStatus::Failed | pay::PaymentStatus::Refunded => {
                        PaymentState::Settled
                    }
                };
                Ok(Some((PaymentRef::new(p.id.to_string()), state)))
            }
            Err(GetPaymentError::NotFound) => Ok(None),
            Err(GetPaymentError::Unexpected(e)) => Err(Self::unavailable(e)),
        }
    }

    async fn charge(
        &self,
        ctx: &CallContext,
        r: &ChargeRequest,
    ) -> Result<ChargeOutcome, PortError> {
        let request = pay::ChargeRequest::new(
            pay::OrderId(r.order_id.as_uuid()),
            pay::CustomerId::parse(r.customer_id.as_str()).map_err(refused)?,
            r.amount,
            pay::PaymentMethod::parse(&r.payment_method).map_err(refused)?,
        )
        .map_err(refused)?;
        match self.0.charge(ctx, request, &r.idempotency_key).await {
            Ok(p) if p.status == pay::PaymentStatus::Failed => Ok(ChargeOutcome::Declined {
                payment_id: PaymentRef::new(p.id.to_string()),
                code: p.failure_code.unwrap_or_else(|| "declined".into()),
            }),
            Ok(p) => Ok(ChargeOutcome::Succeeded {
                payment_id: PaymentRef::new(p.id.to_string()),
            }),
            Err(e @ (ChargeError::ProviderUnavailable { .. } | ChargeError::InProgress { .. })) => {
                Err(PortError::Unavailable(e.to_string()))
            }
            Err(e) => Err(Self::error(matches!(e, ChargeError::Unexpected(_)), e)),
        }
    }

    async fn refund(
        &self,
        ctx: &CallContext,
        payment_id: &PaymentRef,
        amount: Money,
        key: &str,
    ) -> Result<RefundOutcome, PortError> {
        let id = pay::PaymentId::parse(payment_id.as_str()).map_err(refused)?;
        let request_key = pay::RequestKey::parse(key).map_err(refused)?;
        let request =
            pay::RefundRequest::of_money(id, amount, None, request_key).map_err(refused)?;
        match self.0.refund(ctx, request).await {
            Ok(_) => Ok(RefundOutcome::Refunded),
            Err(RefundError::ExceedsRefundable { refundable_minor }) if refundable_minor > 0 => Ok(
                RefundOutcome::OnlyLeft(Money::new(refundable_minor, amount.currency())),
            ),
            Err(RefundError::ExceedsRefundable { .. })
            | Err(RefundError::NotRefundable(pay::PaymentStatus::Refunded)) => {
                Ok(RefundOutcome::NothingLeft)
            }
            Err(e @ (RefundError::ProviderUnavailable { .. } | RefundError::InProgress { .. })) => {
                Err(PortError::Unavailable(e.to_string()))
            }
            Err(e) => Err(Self::error(matches!(e, RefundError::Unexpected(_)), e)),
        }
    }
}
