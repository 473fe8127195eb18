//! The integration events inventory publishes through its outbox, and their
//! payloads. Consumers keep their own copies of these shapes (see
//! `docs/events.md`); these are the publisher's.

use agora_kernel::EventEnvelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::models::{ReleaseReason, Reservation, ReservedLine, Sku};

pub const STOCK_RESERVED: &str = "inventory.stock_reserved.v1";
pub const STOCK_RELEASED: &str = "inventory.stock_released.v1";
pub const STOCK_COMMITTED: &str = "inventory.stock_committed.v1";
pub const LOW_STOCK: &str = "inventory.low_stock.v1";

/// One warehouse's share of a line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationPayload {
    pub warehouse: String,
    pub quantity: i64,
}

/// A line of a reservation as events carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinePayload {
    pub sku: String,
    pub quantity: i64,
    pub allocations: Vec<AllocationPayload>,
}

/// `inventory.stock_reserved.v1`, `inventory.stock_committed.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationPayload {
    pub reservation_id: uuid::Uuid,
    pub order_id: String,
    pub status: String,
    pub lines: Vec<LinePayload>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// `inventory.stock_released.v1`: `reason` is `requested` or `expired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedPayload {
    pub reservation_id: uuid::Uuid,
    pub order_id: String,
    pub reason: String,
    pub lines: Vec<LinePayload>,
}

/// `inventory.low_stock.v1`: available stock of a sku fell below its threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowStockPayload {
    pub sku: String,
    pub available: i64,
    pub threshold: i64,
}

fn lines(lines: &[ReservedLine]) -> Vec<LinePayload> {
    lines
        .iter()
        .map(|l| LinePayload {
            sku: l.sku.as_str().to_owned(),
            quantity: l.quantity,
            allocations: l
                .allocations
                .iter()
                .map(|a| AllocationPayload {
                    warehouse: a.warehouse.as_str().to_owned(),
                    quantity: a.quantity,
                })
                .collect(),
        })
        .collect()
}

pub(crate) fn reserved(r: &Reservation, correlation_id: &str) -> anyhow::Result<EventEnvelope> {
    EventEnvelope::publishable(
        STOCK_RESERVED,
        crate::NAME,
        correlation_id,
        &reservation_payload(r),
    )
}

pub(crate) fn committed(r: &Reservation, correlation_id: &str) -> anyhow::Result<EventEnvelope> {
    EventEnvelope::publishable(
        STOCK_COMMITTED,
        crate::NAME,
        correlation_id,
        &reservation_payload(r),
    )
}

pub(crate) fn released(
    r: &Reservation,
    reason: ReleaseReason,
    correlation_id: &str,
) -> anyhow::Result<EventEnvelope> {
    let payload = ReleasedPayload {
        reservation_id: r.id.0,
        order_id: r.order_id.as_str().to_owned(),
        reason: reason.as_str().to_owned(),
        lines: lines(&r.lines),
    };
    EventEnvelope::publishable(STOCK_RELEASED, crate::NAME, correlation_id, &payload)
}

/// A low-stock event when a change took available stock from at or above the
/// threshold to below it (so one event per crossing, not per change).
pub(crate) fn low_stock(
    sku: &Sku,
    threshold: i64,
    before: i64,
    after: i64,
    correlation_id: &str,
) -> anyhow::Result<Option<EventEnvelope>> {
    if before >= threshold && after < threshold {
        let payload = LowStockPayload {
            sku: sku.as_str().to_owned(),
            available: after,
            threshold,
        };
        EventEnvelope::publishable(LOW_STOCK, crate::NAME, correlation_id, &payload).map(Some)
    } else {
        Ok(None)
    }
}

fn reservation_payload(r: &Reservation) -> ReservationPayload {
    ReservationPayload {
        reservation_id: r.id.0,
        order_id: r.order_id.as_str().to_owned(),
        status: r.status.as_str().to_owned(),
        lines: lines(&r.lines),
        expires_at: r.expires_at,
    }
}
