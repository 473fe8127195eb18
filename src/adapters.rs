//! In-process adapters: the order module's ports implemented over the
//! inventory and payment modules' `api` handles. This is the only place where
//! two modules meet; once a module is extracted, an HTTP client adapter
//! implements the same port and this file loses an impl.

use std::collections::BTreeMap;
use std::time::Duration;

use agora_inventory::InventoryApi;
use agora_inventory::domain::models as inv;
use agora_inventory::domain::ports::{ReadError, ReservationError, ReserveError};
use agora_kernel::{CallContext, Money};
use agora_order::domain::models::{OrderId, Sku};
use agora_order::domain::ports::{
    Catalogue, ChargeOutcome, ChargeRequest, PaymentState, Payments, PortError, Quote,
    ReserveOutcome, StockReservations,
};
use agora_payment::PaymentApi;
use agora_payment::domain::models as pay;
use agora_payment::domain::service::{ChargeError, GetPaymentError, RefundError};
use async_trait::async_trait;

/// Catalogue prices and stock reservations, from the inventory module.
pub struct InProcessInventory(pub InventoryApi);

fn refused(e: impl std::fmt::Display) -> PortError {
    PortError::Refused(e.to_string())
}

fn reservation_id(id: &str) -> Result<inv::ReservationId, PortError> {
    uuid::Uuid::parse_str(id)
        .map(inv::ReservationId)
        .map_err(refused)
}

/// Transitions that already happened count as done (every call is retried).
fn transition_result(
    r: Result<inv::Reservation, ReservationError>,
    done_states: &[&str],
) -> Result<(), PortError> {
    match r {
        Ok(_) => Ok(()),
        Err(ReservationError::InvalidTransition { from, .. }) if done_states.contains(&from) => {
            Ok(())
        }
        Err(ReservationError::Unexpected(e)) => {
            Err(PortError::Unavailable(format!("inventory: {e:#}")))
        }
        Err(e) => Err(refused(e)),
    }
}

#[async_trait]
impl Catalogue for InProcessInventory {
    async fn quote(
        &self,
        ctx: &CallContext,
        skus: &[Sku],
    ) -> Result<BTreeMap<String, Quote>, PortError> {
        let mut quotes = BTreeMap::new();
        for sku in skus {
            let Ok(parsed) = inv::Sku::parse(sku.as_str()) else {
                continue;
            };
            match self.0.product(ctx, &parsed).await {
                Ok(p) => {
                    quotes.insert(
                        sku.as_str().to_owned(),
                        Quote {
                            price: p.price,
                            active: p.active,
                        },
                    );
                }
                Err(ReadError::NotFound(_)) => {}
                Err(ReadError::Unexpected(e)) => {
                    return Err(PortError::Unavailable(format!("inventory: {e:#}")));
                }
                Err(e) => return Err(refused(e)),
            }
        }
        Ok(quotes)
    }
}

#[async_trait]
impl StockReservations for InProcessInventory {
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
            .map(|(sku, q)| {
                Ok(inv::LineRequest {
                    sku: inv::Sku::parse(sku.as_str()).map_err(refused)?,
                    quantity: inv::Quantity::new(i64::from(*q)).map_err(refused)?,
                })
            })
            .collect::<Result<Vec<_>, PortError>>()?;
        let request = inv::NewReservation {
            id: reservation_id(id)?,
            order_id: inv::OrderRef::parse(&order_id.to_string()).map_err(refused)?,
            lines,
            ttl: Some(inv::Ttl::from_secs(ttl.as_secs().max(1) as i64).map_err(refused)?),
        };
        match self.0.reserve(ctx, request).await {
            // A replay of a reservation that has since ended holds no stock.
            Ok(r) if r.reservation.status == inv::ReservationStatus::Released => Err(
                PortError::Refused("the reservation was released (expired)".into()),
            ),
            Ok(_) => Ok(ReserveOutcome::Reserved),
            Err(ReserveError::Insufficient(short)) => Ok(ReserveOutcome::Insufficient(
                short
                    .into_iter()
                    .map(|s| s.sku.as_str().to_owned())
                    .collect(),
            )),
            Err(ReserveError::Unexpected(e)) => {
                Err(PortError::Unavailable(format!("inventory: {e:#}")))
            }
            Err(e) => Err(refused(e)),
        }
    }

    async fn confirm(&self, ctx: &CallContext, id: &str) -> Result<(), PortError> {
        transition_result(
            self.0.confirm(ctx, reservation_id(id)?).await,
            &["confirmed"],
        )
    }

    async fn commit(&self, ctx: &CallContext, id: &str) -> Result<(), PortError> {
        transition_result(
            self.0.commit(ctx, reservation_id(id)?).await,
            &["committed"],
        )
    }

    async fn release(&self, ctx: &CallContext, id: &str) -> Result<(), PortError> {
        match self.0.release(ctx, reservation_id(id)?).await {
            // Never reserved (a rejected order): nothing to give back.
            Err(ReservationError::NotFound(_)) => Ok(()),
            other => transition_result(other, &["released"]),
        }
    }
}

/// Charges and refunds, from the payment module.
pub struct InProcessPayments(pub PaymentApi);

#[async_trait]
impl Payments for InProcessPayments {
    async fn find(
        &self,
        ctx: &CallContext,
        order_id: OrderId,
    ) -> Result<Option<(String, PaymentState)>, PortError> {
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
                Ok(Some((p.id.to_string(), state)))
            }
            Err(GetPaymentError::NotFound) => Ok(None),
            Err(GetPaymentError::Unexpected(e)) => {
                Err(PortError::Unavailable(format!("payment: {e:#}")))
            }
        }
    }

    async fn charge(
        &self,
        ctx: &CallContext,
        r: &ChargeRequest,
    ) -> Result<ChargeOutcome, PortError> {
        let request = pay::ChargeRequest::new(
            pay::OrderId(r.order_id.as_uuid()),
            pay::CustomerId::parse(&r.customer_id).map_err(refused)?,
            r.amount,
            pay::PaymentMethod::parse(&r.payment_method).map_err(refused)?,
        )
        .map_err(refused)?;
        match self.0.charge(ctx, request).await {
            Ok(c) if c.payment.status == pay::PaymentStatus::Failed => {
                Ok(ChargeOutcome::Declined {
                    payment_id: c.payment.id.to_string(),
                    code: c.payment.failure_code.unwrap_or_else(|| "declined".into()),
                })
            }
            Ok(c) => Ok(ChargeOutcome::Succeeded {
                payment_id: c.payment.id.to_string(),
            }),
            Err(e @ (ChargeError::ProviderUnavailable { .. } | ChargeError::InProgress { .. })) => {
                Err(PortError::Unavailable(e.to_string()))
            }
            Err(ChargeError::Unexpected(e)) => {
                Err(PortError::Unavailable(format!("payment: {e:#}")))
            }
            Err(e) => Err(refused(e)),
        }
    }

    async fn refund(
        &self,
        ctx: &CallContext,
        payment_id: &str,
        amount: Money,
        key: &str,
    ) -> Result<(), PortError> {
        let id = pay::PaymentId::parse(payment_id).map_err(refused)?;
        let request_key = pay::RequestKey::parse(key).map_err(refused)?;
        let mut amount = amount;
        for _ in 0..2 {
            let request = pay::RefundRequest::of_money(id, amount, None, request_key.clone())
                .map_err(refused)?;
            match self.0.refund(ctx, request).await {
                Ok(_) => return Ok(()),
                // Partly refunded already (by staff): refund what is left.
                Err(RefundError::ExceedsRefundable { refundable_minor })
                    if refundable_minor > 0 =>
                {
                    amount = Money::new(refundable_minor, amount.currency());
                }
                Err(RefundError::ExceedsRefundable { .. }) => return Ok(()),
                Err(RefundError::NotRefundable(pay::PaymentStatus::Refunded)) => return Ok(()),
                Err(
                    e @ (RefundError::ProviderUnavailable { .. } | RefundError::InProgress { .. }),
                ) => {
                    return Err(PortError::Unavailable(e.to_string()));
                }
                Err(RefundError::Unexpected(e)) => {
                    return Err(PortError::Unavailable(format!("payment: {e:#}")));
                }
                Err(e) => return Err(refused(e)),
            }
        }
        Err(PortError::Unavailable(
            "the refundable amount kept changing; retry".into(),
        ))
    }
}
