//! The rules of every write that moves stock, decided once, here, from what a
//! store read inside its transaction. A store reads (the reservation, the
//! products, the levels), asks this module what the write is, then applies
//! it: guarded level updates ([`Shift`]), the movements that record them, the
//! reservation row and the events, all in its one transaction. Replay,
//! product and warehouse checks, allocation across warehouses, shortages, the
//! transition table, adjustment refusals and low-stock crossings live only
//! here, so the SQLite and MongoDB stores cannot drift apart on them.

use agora_kernel::EventEnvelope;

use super::models::{
    Adjustment, ChangeMeta, Movement, MovementKind, NewReservation, Product, Receipt, Reservation,
    ReservationId, ReservationStatus, ReservedLine, Shortage, Sku, StockLevel, WarehouseCode,
    allocate,
};
use super::ports::{ReservationError, ReserveError, ReserveOutcome, StockError, Transition};
use crate::events;

/// One guarded change to a `(sku, warehouse)` level, and the movement that
/// records it. A store applies `on_hand` and `reserved` as deltas, refusing
/// the update when either would go below zero or reserved above on hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shift {
    pub sku: Sku,
    pub warehouse: WarehouseCode,
    /// Delta of on-hand stock.
    pub on_hand: i64,
    /// Delta of reserved stock.
    pub reserved: i64,
    kind: MovementKind,
    quantity: i64,
    reason: Option<String>,
    reference: Option<String>,
    reservation: Option<ReservationId>,
}

impl Shift {
    /// The movement row for this shift, given the level it left.
    pub fn movement(&self, after: &StockLevel, meta: &ChangeMeta) -> Movement {
        meta.movement(
            &self.sku,
            after,
            self.kind,
            self.quantity,
            self.reason.as_deref(),
            self.reference.as_deref(),
            self.reservation,
        )
    }
}

/// A reservation write: the reservation as it is to be stored, the shifts to
/// apply (in order) and the events to emit with them (in order).
#[derive(Debug, Clone)]
pub struct ReservationWrite {
    pub reservation: Reservation,
    pub shifts: Vec<Shift>,
    pub events: Vec<EventEnvelope>,
}

/// A request whose id is already taken: the first result when it is the same
/// request (an idempotent replay), a conflict otherwise.
///
/// # Errors
/// [`ReserveError::IdConflict`].
pub fn replay(existing: Reservation, r: &NewReservation) -> Result<ReserveOutcome, ReserveError> {
    if existing.same_request(r) {
        Ok(ReserveOutcome {
            reservation: existing,
            created: false,
        })
    } else {
        Err(ReserveError::IdConflict(r.id))
    }
}

/// Hold every line of `r` or none. `products[i]` and `levels[i]` are what the
/// store read for line `i` inside its transaction (levels by warehouse code).
///
/// # Errors
/// [`ReserveError::UnknownProducts`] when a line names an unknown or inactive
/// product, [`ReserveError::Insufficient`] when a line is short of stock.
pub fn hold(
    r: &NewReservation,
    products: &[Option<Product>],
    levels: &[Vec<StockLevel>],
    expires_at: chrono::DateTime<chrono::Utc>,
    meta: &ChangeMeta,
) -> Result<ReservationWrite, ReserveError> {
    let unknown: Vec<(usize, Sku)> = r
        .lines
        .iter()
        .zip(products)
        .enumerate()
        .filter(|(_, (_, p))| !p.as_ref().is_some_and(|p| p.active))
        .map(|(i, (line, _))| (i, line.sku.clone()))
        .collect();
    if !unknown.is_empty() {
        return Err(ReserveError::UnknownProducts(unknown));
    }
    let mut lines = Vec::with_capacity(r.lines.len());
    let mut short = Vec::new();
    for (i, (line, levels)) in r.lines.iter().zip(levels).enumerate() {
        let quantity = line.quantity.get();
        match allocate(levels, quantity) {
            Some(allocations) => lines.push(ReservedLine {
                sku: line.sku.clone(),
                quantity,
                allocations,
            }),
            None => short.push(Shortage {
                line: i,
                sku: line.sku.clone(),
                requested: quantity,
                available: total_available(levels),
            }),
        }
    }
    if !short.is_empty() {
        return Err(ReserveError::Insufficient(short));
    }
    let reservation = Reservation {
        id: r.id,
        order_id: r.order_id.clone(),
        status: ReservationStatus::Held,
        lines,
        expires_at: Some(expires_at),
        created_at: meta.at,
        updated_at: meta.at,
    };
    let shifts = shifts(&reservation, 0, 1, MovementKind::Reservation, None);
    let mut events = vec![events::reserved(&reservation, &meta.correlation_id)?];
    for ((line, product), levels) in reservation.lines.iter().zip(products).zip(levels) {
        let threshold = product.as_ref().map_or(0, |p| p.low_stock_threshold);
        let before = total_available(levels);
        events.extend(events::low_stock(
            &line.sku,
            threshold,
            before,
            before - line.quantity,
            &meta.correlation_id,
        )?);
    }
    Ok(ReservationWrite {
        reservation,
        shifts,
        events,
    })
}

impl Transition {
    /// What taking this transition from `current` writes: `None` when it
    /// already happened (an idempotent repeat, nothing to write).
    ///
    /// # Errors
    /// Those of [`Transition::check`]; events that do not serialise.
    pub fn decide(
        self,
        current: &Reservation,
        meta: &ChangeMeta,
    ) -> Result<Option<ReservationWrite>, ReservationError> {
        if !self.check(current, meta.at)? {
            return Ok(None);
        }
        let reservation = Reservation {
            status: self.target(),
            expires_at: None,
            updated_at: meta.at,
            ..current.clone()
        };
        let corr = &meta.correlation_id;
        let (shifts, events) = match self {
            Self::Confirm => (Vec::new(), Vec::new()),
            Self::Commit => (
                shifts(current, -1, -1, MovementKind::Commit, None),
                vec![events::committed(&reservation, corr)?],
            ),
            Self::Release(why) => (
                shifts(current, 0, -1, MovementKind::Release, Some(why.as_str())),
                vec![events::released(&reservation, why, corr)?],
            ),
        };
        Ok(Some(ReservationWrite {
            reservation,
            shifts,
            events,
        }))
    }
}

/// One shift per allocation of `r`, each moving on hand by `on_hand` and
/// reserved by `reserved` times the allocated quantity.
fn shifts(
    r: &Reservation,
    on_hand: i64,
    reserved: i64,
    kind: MovementKind,
    reason: Option<&str>,
) -> Vec<Shift> {
    r.lines
        .iter()
        .flat_map(|line| {
            line.allocations.iter().map(move |a| Shift {
                sku: line.sku.clone(),
                warehouse: a.warehouse.clone(),
                on_hand: on_hand * a.quantity,
                reserved: reserved * a.quantity,
                kind,
                quantity: a.quantity,
                reason: reason.map(str::to_owned),
                reference: None,
                reservation: Some(r.id),
            })
        })
        .collect()
}

/// Stock moves only for a product in the catalogue (active or not) and a
/// warehouse that exists.
fn known<'p>(
    sku: &Sku,
    product: Option<&'p Product>,
    warehouse: &WarehouseCode,
    warehouse_known: bool,
) -> Result<&'p Product, StockError> {
    let product = product.ok_or_else(|| StockError::UnknownProduct(sku.clone()))?;
    if !warehouse_known {
        return Err(StockError::UnknownWarehouse(warehouse.clone()));
    }
    Ok(product)
}

/// A receipt: on-hand stock of the warehouse grows by its quantity (the
/// level is created at the first one). `product` and `warehouse_known` are
/// what the store read inside its transaction.
///
/// # Errors
/// [`StockError::UnknownProduct`], [`StockError::UnknownWarehouse`].
pub fn receive(
    r: &Receipt,
    product: Option<&Product>,
    warehouse_known: bool,
) -> Result<Shift, StockError> {
    known(&r.sku, product, &r.warehouse, warehouse_known)?;
    Ok(Shift {
        sku: r.sku.clone(),
        warehouse: r.warehouse.clone(),
        on_hand: r.quantity.get(),
        reserved: 0,
        kind: MovementKind::Receipt,
        quantity: r.quantity.get(),
        reason: None,
        reference: r.reference.as_ref().map(|n| n.as_str().to_owned()),
        reservation: None,
    })
}

/// A stock adjustment: the shift to apply and a low-stock event when it
/// takes the sku's available stock below its threshold. `levels` are every
/// level of the sku, read inside the store's transaction.
#[derive(Debug, Clone)]
pub struct AdjustmentWrite {
    pub shift: Shift,
    pub event: Option<EventEnvelope>,
}

/// Decide an adjustment of a product's stock, refusing one that would leave
/// the warehouse below zero or below what it has reserved. `product`,
/// `warehouse_known` and `levels` are what the store read inside its
/// transaction.
///
/// # Errors
/// [`StockError::UnknownProduct`], [`StockError::UnknownWarehouse`],
/// [`StockError::WouldUnderflow`]; events that do not serialise.
pub fn adjust(
    a: &Adjustment,
    product: Option<&Product>,
    warehouse_known: bool,
    levels: &[StockLevel],
    meta: &ChangeMeta,
) -> Result<AdjustmentWrite, StockError> {
    let product = known(&a.sku, product, &a.warehouse, warehouse_known)?;
    let (on_hand, reserved) = levels
        .iter()
        .find(|l| l.warehouse == a.warehouse)
        .map_or((0, 0), |l| (l.on_hand, l.reserved));
    let delta = a.delta.get();
    if on_hand + delta < 0 || on_hand + delta < reserved {
        return Err(StockError::WouldUnderflow {
            on_hand,
            reserved,
            delta,
        });
    }
    let before = total_available(levels);
    let event = events::low_stock(
        &a.sku,
        product.low_stock_threshold,
        before,
        before + delta,
        &meta.correlation_id,
    )?;
    Ok(AdjustmentWrite {
        shift: Shift {
            sku: a.sku.clone(),
            warehouse: a.warehouse.clone(),
            on_hand: delta,
            reserved: 0,
            kind: MovementKind::Adjustment,
            quantity: delta,
            reason: Some(a.reason.as_str().to_owned()),
            reference: None,
            reservation: None,
        },
        event,
    })
}

fn total_available(levels: &[StockLevel]) -> i64 {
    levels.iter().map(StockLevel::available).sum()
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, Utc};

    use super::*;
    use crate::domain::models::{LineRequest, Note, OrderRef, Quantity, ReleaseReason};

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000).unwrap()
    }

    fn meta() -> ChangeMeta {
        ChangeMeta {
            actor: "svc".into(),
            correlation_id: "corr-1".into(),
            at: at(),
        }
    }

    fn product(sku: &str, active: bool, threshold: i64) -> Option<Product> {
        Some(Product {
            sku: Sku::parse(sku).unwrap(),
            name: sku.into(),
            description: None,
            price: agora_kernel::Money::new(100, agora_kernel::Currency::parse("EUR").unwrap()),
            active,
            low_stock_threshold: threshold,
            created_at: at(),
            updated_at: at(),
        })
    }

    fn level(w: &str, on_hand: i64, reserved: i64) -> StockLevel {
        StockLevel {
            warehouse: WarehouseCode::parse(w).unwrap(),
            on_hand,
            reserved,
        }
    }

    fn request(lines: &[(&str, i64)]) -> NewReservation {
        NewReservation {
            id: ReservationId(uuid::Uuid::now_v7()),
            order_id: OrderRef::parse("order-1").unwrap(),
            lines: lines
                .iter()
                .map(|(sku, q)| LineRequest::parse(sku, *q).unwrap())
                .collect(),
            ttl: None,
        }
    }

    fn types(events: &[EventEnvelope]) -> Vec<&str> {
        events.iter().map(|e| e.event_type.as_str()).collect()
    }

    #[test]
    fn a_hold_allocates_every_line_and_emits_reserved_then_low_stock() {
        let r = request(&[("MUG", 6), ("HAT", 1)]);
        let products = [product("MUG", true, 6), product("HAT", true, 0)];
        let levels = [
            vec![level("A", 4, 0), level("B", 8, 1)],
            vec![level("A", 3, 0)],
        ];
        let w = hold(
            &r,
            &products,
            &levels,
            at() + Duration::minutes(15),
            &meta(),
        )
        .unwrap();
        assert_eq!(w.reservation.status, ReservationStatus::Held);
        assert_eq!(w.reservation.expires_at, Some(at() + Duration::minutes(15)));
        // MUG: 7 available in B first, so all 6 from B; HAT from A.
        let shifts: Vec<(&str, &str, i64, i64)> = w
            .shifts
            .iter()
            .map(|s| (s.sku.as_str(), s.warehouse.as_str(), s.on_hand, s.reserved))
            .collect();
        assert_eq!(shifts, [("MUG", "B", 0, 6), ("HAT", "A", 0, 1)]);
        // MUG goes from 11 available to 5, below its threshold of 6.
        assert_eq!(
            types(&w.events),
            [crate::events::STOCK_RESERVED, crate::events::LOW_STOCK]
        );
        let m = w.shifts[0].movement(&level("B", 8, 7), &meta());
        assert_eq!((m.quantity, m.reservation_id), (6, Some(r.id)));
    }

    #[test]
    fn a_hold_names_every_unknown_or_inactive_line_then_every_short_line() {
        let r = request(&[("MUG", 1), ("OLD", 1), ("NOPE", 1)]);
        let products = [product("MUG", true, 0), product("OLD", false, 0), None];
        let levels = [vec![level("A", 5, 0)], vec![level("A", 5, 0)], vec![]];
        let Err(ReserveError::UnknownProducts(unknown)) =
            hold(&r, &products, &levels, at(), &meta())
        else {
            panic!("unknown products must be refused")
        };
        let unknown: Vec<(usize, &str)> = unknown.iter().map(|(i, s)| (*i, s.as_str())).collect();
        assert_eq!(unknown, [(1, "OLD"), (2, "NOPE")]);

        let r = request(&[("MUG", 9), ("HAT", 1)]);
        let products = [product("MUG", true, 0), product("HAT", true, 0)];
        let levels = [
            vec![level("A", 5, 0), level("B", 3, 0)],
            vec![level("A", 1, 0)],
        ];
        let Err(ReserveError::Insufficient(short)) = hold(&r, &products, &levels, at(), &meta())
        else {
            panic!("a short line must be refused")
        };
        assert_eq!(short.len(), 1);
        assert_eq!(
            (short[0].line, short[0].requested, short[0].available),
            (0, 9, 8)
        );
    }

    #[test]
    fn a_replay_returns_the_first_result_and_a_different_request_conflicts() {
        let r = request(&[("MUG", 2)]);
        let w = hold(
            &r,
            &[product("MUG", true, 0)],
            &[vec![level("A", 5, 0)]],
            at(),
            &meta(),
        )
        .unwrap();
        let again = replay(w.reservation.clone(), &r).unwrap();
        assert!(!again.created);
        assert_eq!(again.reservation.id, r.id);
        let mut other = request(&[("MUG", 3)]);
        other.id = r.id;
        assert!(matches!(
            replay(w.reservation, &other),
            Err(ReserveError::IdConflict(_))
        ));
    }

    #[test]
    fn transitions_write_their_shifts_and_events_and_repeats_write_nothing() {
        let r = request(&[("MUG", 2)]);
        let later = at() + Duration::minutes(15);
        let held = hold(
            &r,
            &[product("MUG", true, 0)],
            &[vec![level("A", 5, 0)]],
            later,
            &meta(),
        )
        .unwrap()
        .reservation;
        let confirm = Transition::Confirm.decide(&held, &meta()).unwrap().unwrap();
        assert!(confirm.shifts.is_empty() && confirm.events.is_empty());
        assert_eq!(confirm.reservation.expires_at, None);

        let commit = Transition::Commit.decide(&held, &meta()).unwrap().unwrap();
        assert_eq!(
            (commit.shifts[0].on_hand, commit.shifts[0].reserved),
            (-2, -2)
        );
        assert_eq!(types(&commit.events), [crate::events::STOCK_COMMITTED]);
        assert!(
            Transition::Commit
                .decide(&commit.reservation, &meta())
                .unwrap()
                .is_none()
        );

        let release = Transition::Release(ReleaseReason::Requested)
            .decide(&held, &meta())
            .unwrap()
            .unwrap();
        assert_eq!(
            (release.shifts[0].on_hand, release.shifts[0].reserved),
            (0, -2)
        );
        assert_eq!(types(&release.events), [crate::events::STOCK_RELEASED]);
        assert!(
            Transition::Confirm
                .decide(&release.reservation, &meta())
                .is_err()
        );
    }

    #[test]
    fn a_receipt_needs_a_catalogued_product_and_a_known_warehouse() {
        let r = crate::domain::models::Receipt {
            sku: Sku::parse("MUG").unwrap(),
            warehouse: WarehouseCode::parse("A").unwrap(),
            quantity: Quantity::new(4).unwrap(),
            reference: Some(Note::parse("PO-7", "reference").unwrap()),
        };
        let inactive = product("MUG", false, 0).unwrap();
        let shift = receive(&r, Some(&inactive), true).unwrap();
        assert_eq!((shift.on_hand, shift.reserved), (4, 0));
        let m = shift.movement(&level("A", 4, 0), &meta());
        assert_eq!(m.reference.as_deref(), Some("PO-7"));
        assert!(matches!(
            receive(&r, None, true),
            Err(StockError::UnknownProduct(_))
        ));
        assert!(matches!(
            receive(&r, Some(&inactive), false),
            Err(StockError::UnknownWarehouse(_))
        ));
    }

    #[test]
    fn an_adjustment_below_what_is_reserved_is_refused_and_a_crossing_is_reported() {
        let a = |delta: i64| Adjustment {
            sku: Sku::parse("MUG").unwrap(),
            warehouse: WarehouseCode::parse("A").unwrap(),
            delta: crate::domain::models::Delta::new(delta).unwrap(),
            reason: Note::parse("count", "reason").unwrap(),
        };
        let mug = product("MUG", true, 5).unwrap();
        let levels = [level("A", 6, 2), level("B", 3, 0)];
        assert!(matches!(
            adjust(&a(-5), Some(&mug), true, &levels, &meta()),
            Err(StockError::WouldUnderflow {
                on_hand: 6,
                reserved: 2,
                delta: -5
            })
        ));
        // 7 available to 4: below the threshold of 5.
        let w = adjust(&a(-3), Some(&mug), true, &levels, &meta()).unwrap();
        assert_eq!((w.shift.on_hand, w.shift.reserved), (-3, 0));
        assert!(w.event.is_some());
        assert!(
            adjust(&a(2), Some(&mug), true, &levels, &meta())
                .unwrap()
                .event
                .is_none()
        );
    }
}
