//! The inventory's parsed types: once a value is one of these it is valid, so
//! the service and the adapters never check a string again.

use agora_kernel::Money;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most units one receipt, adjustment or reservation line may move.
pub const MAX_QUANTITY: u32 = 1_000_000;
/// Default per-product low-stock threshold.
pub const DEFAULT_LOW_STOCK_THRESHOLD: u32 = 5;
/// Most lines one reservation may hold.
pub const MAX_LINES: usize = 100;
/// Longest TTL a caller may ask for: seven days.
pub const MAX_TTL_SECS: u64 = 7 * 24 * 3600;

/// Why a value did not parse; the message is what a 422 shows for its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn code_like(raw: &str, what: &str, max: usize) -> Result<String, ParseError> {
    let ok_chars = raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if raw.is_empty() || raw.len() > max || !ok_chars {
        Err(ParseError(format!(
            "{what} must be 1–{max} characters of A–Z, a–z, 0–9, '.', '_' or '-'"
        )))
    } else {
        Ok(raw.to_owned())
    }
}

/// `n` as a number of units from `min` to [`MAX_QUANTITY`].
fn units(n: i64, min: u32) -> Result<u32, ParseError> {
    if (i64::from(min)..=i64::from(MAX_QUANTITY)).contains(&n) {
        Ok(n as u32)
    } else {
        Err(ParseError(format!(
            "must be an integer between {min} and {MAX_QUANTITY}"
        )))
    }
}

fn text(raw: &str, what: &str, max: usize) -> Result<String, ParseError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.chars().count() > max {
        Err(ParseError(format!(
            "{what} must be 1–{max} characters and not blank"
        )))
    } else {
        Ok(trimmed.to_owned())
    }
}

/// A stock-keeping unit: 1–64 of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        code_like(raw, "sku", 64).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sku {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Sku::parse(&s)
    }
}

impl From<Sku> for String {
    fn from(s: Sku) -> Self {
        s.0
    }
}

impl std::fmt::Display for Sku {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A warehouse code: 1–32 of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WarehouseCode(String);

impl WarehouseCode {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        code_like(raw, "warehouse code", 32).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WarehouseCode {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        WarehouseCode::parse(&s)
    }
}

impl From<WarehouseCode> for String {
    fn from(s: WarehouseCode) -> Self {
        s.0
    }
}

impl std::fmt::Display for WarehouseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A positive number of units, at most [`MAX_QUANTITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Quantity(u32);

impl Quantity {
    pub fn new(n: i64) -> Result<Self, ParseError> {
        units(n, 1).map(Self)
    }

    pub fn get(self) -> i64 {
        i64::from(self.0)
    }
}

impl TryFrom<i64> for Quantity {
    type Error = ParseError;
    fn try_from(n: i64) -> Result<Self, Self::Error> {
        Quantity::new(n)
    }
}

impl From<Quantity> for i64 {
    fn from(q: Quantity) -> Self {
        q.get()
    }
}

/// A non-zero correction of on-hand stock, at most [`MAX_QUANTITY`] either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta(i64);

impl Delta {
    pub fn new(n: i64) -> Result<Self, ParseError> {
        if n != 0 && n.unsigned_abs() <= u64::from(MAX_QUANTITY) {
            Ok(Self(n))
        } else {
            Err(ParseError(format!(
                "must be a non-zero integer between -{MAX_QUANTITY} and {MAX_QUANTITY}"
            )))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A product name: 1–200 characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductName(String);

impl ProductName {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        text(raw, "name", 200).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A product description: up to 2,000 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description(String);

impl Description {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.chars().count() > 2000 {
            Err(ParseError(
                "description must be at most 2000 characters".into(),
            ))
        } else {
            Ok(Self(raw.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A low-stock threshold: 0 (never warn) to [`MAX_QUANTITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold(u32);

impl Threshold {
    pub fn new(n: i64) -> Result<Self, ParseError> {
        units(n, 0).map(Self)
    }
    pub fn get(self) -> i64 {
        i64::from(self.0)
    }
}

impl Default for Threshold {
    fn default() -> Self {
        Self(DEFAULT_LOW_STOCK_THRESHOLD)
    }
}

/// A free-text reason or reference: 1–500 characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note(String);

impl Note {
    pub fn parse(raw: &str, what: &str) -> Result<Self, ParseError> {
        text(raw, what, 500).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A reservation's id, chosen by the caller (a UUID), the key of its idempotency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReservationId(pub Uuid);

impl std::fmt::Display for ReservationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The order a reservation belongs to: an opaque id of 1–255 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderRef(String);

impl OrderRef {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() || raw.len() > 255 || raw.chars().any(char::is_control) {
            Err(ParseError(
                "order_id must be 1–255 characters without control characters".into(),
            ))
        } else {
            Ok(Self(raw.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A time-to-live for a held reservation: 1 s to [`MAX_TTL_SECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(u64);

impl Ttl {
    pub fn from_secs(secs: i64) -> Result<Self, ParseError> {
        if (1..=MAX_TTL_SECS as i64).contains(&secs) {
            Ok(Self(secs as u64))
        } else {
            Err(ParseError(format!(
                "must be an integer between 1 and {MAX_TTL_SECS} (seconds)"
            )))
        }
    }
    pub fn secs(self) -> u64 {
        self.0
    }
    pub fn as_chrono(self) -> chrono::Duration {
        chrono::Duration::seconds(self.0 as i64)
    }
}

/// A catalogue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub sku: Sku,
    pub name: String,
    pub description: Option<String>,
    pub price: Money,
    pub active: bool,
    pub low_stock_threshold: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What creating a product needs.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub sku: Sku,
    pub name: ProductName,
    pub description: Option<Description>,
    pub price: Money,
    pub low_stock_threshold: Threshold,
}

/// A partial update of a product; `None` leaves the field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProductPatch {
    pub name: Option<ProductName>,
    /// `Some(None)` clears the description.
    pub description: Option<Option<Description>>,
    pub price: Option<Money>,
    pub low_stock_threshold: Option<Threshold>,
    /// `Some(false)` takes the product out of sale (the soft delete).
    pub active: Option<bool>,
}

impl ProductPatch {
    /// The soft delete: `active = false`, nothing else changes.
    pub fn deactivate() -> Self {
        Self {
            active: Some(false),
            ..Self::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.description.is_none()
            && self.price.is_none()
            && self.low_stock_threshold.is_none()
            && self.active.is_none()
    }

    /// The product with this patch applied.
    pub fn apply(&self, mut p: Product, now: DateTime<Utc>) -> Product {
        if let Some(n) = &self.name {
            p.name = n.as_str().to_owned();
        }
        if let Some(d) = &self.description {
            p.description = d.as_ref().map(|d| d.as_str().to_owned());
        }
        if let Some(price) = self.price {
            p.price = price;
        }
        if let Some(t) = self.low_stock_threshold {
            p.low_stock_threshold = t.get();
        }
        if let Some(active) = self.active {
            p.active = active;
        }
        p.updated_at = now;
        p
    }
}

/// A warehouse stock is kept in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warehouse {
    pub code: WarehouseCode,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewWarehouse {
    pub code: WarehouseCode,
    pub name: ProductName,
}

/// Stock of one sku in one warehouse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockLevel {
    pub warehouse: WarehouseCode,
    pub on_hand: i64,
    pub reserved: i64,
}

impl StockLevel {
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }
}

/// Stock of one sku over every warehouse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockSummary {
    pub sku: Sku,
    pub warehouses: Vec<StockLevel>,
}

impl StockSummary {
    pub fn on_hand(&self) -> i64 {
        self.warehouses.iter().map(|w| w.on_hand).sum()
    }
    pub fn reserved(&self) -> i64 {
        self.warehouses.iter().map(|w| w.reserved).sum()
    }
    pub fn available(&self) -> i64 {
        self.on_hand() - self.reserved()
    }
}

/// Stock arriving in a warehouse.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub sku: Sku,
    pub warehouse: WarehouseCode,
    pub quantity: Quantity,
    pub reference: Option<Note>,
}

/// A correction of on-hand stock (damage, count).
#[derive(Debug, Clone)]
pub struct Adjustment {
    pub sku: Sku,
    pub warehouse: WarehouseCode,
    pub delta: Delta,
    pub reason: Note,
}

/// What kind of change a movement records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MovementKind {
    Receipt,
    Adjustment,
    Reservation,
    Release,
    Commit,
}

impl MovementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receipt => "receipt",
            Self::Adjustment => "adjustment",
            Self::Reservation => "reservation",
            Self::Release => "release",
            Self::Commit => "commit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Receipt,
            Self::Adjustment,
            Self::Reservation,
            Self::Release,
            Self::Commit,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One audit row: a change of one stock level and the levels it left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    /// UUID v7: movements sort by it, newest last.
    pub id: Uuid,
    pub sku: Sku,
    pub warehouse: WarehouseCode,
    pub kind: MovementKind,
    /// Units moved: + for receipts, ± for adjustments, + for reservation /
    /// release / commit (see `kind` for the direction).
    pub quantity: i64,
    pub on_hand: i64,
    pub reserved: i64,
    pub actor: String,
    pub reason: Option<String>,
    pub reference: Option<String>,
    pub reservation_id: Option<ReservationId>,
    pub correlation_id: String,
    pub at: DateTime<Utc>,
}

/// Who changes stock, why, and when: stamped onto movements and events.
#[derive(Debug, Clone)]
pub struct ChangeMeta {
    pub actor: String,
    pub correlation_id: String,
    pub at: DateTime<Utc>,
}

impl ChangeMeta {
    /// A movement row for a change of `(sku, warehouse)` that left `level`.
    #[allow(clippy::too_many_arguments)]
    pub fn movement(
        &self,
        sku: &Sku,
        level: &StockLevel,
        kind: MovementKind,
        quantity: i64,
        reason: Option<&str>,
        reference: Option<&str>,
        reservation_id: Option<ReservationId>,
    ) -> Movement {
        Movement {
            id: Uuid::now_v7(),
            sku: sku.clone(),
            warehouse: level.warehouse.clone(),
            kind,
            quantity,
            on_hand: level.on_hand,
            reserved: level.reserved,
            actor: self.actor.clone(),
            reason: reason.map(str::to_owned),
            reference: reference.map(str::to_owned),
            reservation_id,
            correlation_id: self.correlation_id.clone(),
            at: self.at,
        }
    }
}

/// Where a reservation's line takes its units from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub warehouse: WarehouseCode,
    pub quantity: i64,
}

/// A requested line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRequest {
    pub sku: Sku,
    pub quantity: Quantity,
}

impl LineRequest {
    /// A line of `quantity` units of `sku`, both checked.
    ///
    /// # Errors
    /// The first of the two that is not valid.
    pub fn parse(sku: &str, quantity: i64) -> Result<Self, ParseError> {
        Ok(Self {
            sku: Sku::parse(sku)?,
            quantity: Quantity::new(quantity)?,
        })
    }
}

/// A reserved line and its allocation over warehouses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedLine {
    pub sku: Sku,
    pub quantity: i64,
    pub allocations: Vec<Allocation>,
}

/// `held` (with a TTL) → `confirmed` → `committed`, or `released` from held/confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationStatus {
    Held,
    Confirmed,
    Committed,
    Released,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Confirmed => "confirmed",
            Self::Committed => "committed",
            Self::Released => "released",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Held, Self::Confirmed, Self::Committed, Self::Released]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A stock reservation for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: ReservationId,
    pub order_id: OrderRef,
    pub status: ReservationStatus,
    pub lines: Vec<ReservedLine>,
    /// Set while `held`.
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Reservation {
    /// Whether this reservation answers the same request (idempotent replay).
    pub fn same_request(&self, req: &NewReservation) -> bool {
        self.order_id == req.order_id
            && self.lines.len() == req.lines.len()
            && self
                .lines
                .iter()
                .zip(&req.lines)
                .all(|(have, want)| have.sku == want.sku && have.quantity == want.quantity.get())
    }

    /// A held reservation whose TTL has run out.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.status == ReservationStatus::Held && self.expires_at.is_some_and(|t| t <= now)
    }
}

/// A request to reserve every line or none.
#[derive(Debug, Clone)]
pub struct NewReservation {
    pub id: ReservationId,
    pub order_id: OrderRef,
    /// 1–[`MAX_LINES`] lines with distinct skus, in the caller's order.
    pub lines: Vec<LineRequest>,
    /// `None`: the module's default (`reservation_ttl_secs`).
    pub ttl: Option<Ttl>,
}

impl NewReservation {
    /// Lines must be 1–[`MAX_LINES`] with distinct skus.
    ///
    /// # Errors
    /// The message for the `lines` field.
    pub fn check_lines(lines: &[LineRequest]) -> Result<(), ParseError> {
        if lines.is_empty() || lines.len() > MAX_LINES {
            return Err(ParseError(format!("must hold 1–{MAX_LINES} lines")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for l in lines {
            if !seen.insert(&l.sku) {
                return Err(ParseError(format!(
                    "sku {} appears on more than one line",
                    l.sku
                )));
            }
        }
        Ok(())
    }
}

/// A line that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    /// Index of the line in the request.
    pub line: usize,
    pub sku: Sku,
    pub requested: i64,
    pub available: i64,
}

/// Choose warehouses for `quantity` units: most available first (ties by code),
/// splitting over warehouses when one is not enough. `None` when the total
/// available is short.
pub fn allocate(levels: &[StockLevel], quantity: i64) -> Option<Vec<Allocation>> {
    let mut candidates: Vec<&StockLevel> = levels.iter().filter(|l| l.available() > 0).collect();
    candidates.sort_by(|a, b| {
        b.available()
            .cmp(&a.available())
            .then_with(|| a.warehouse.cmp(&b.warehouse))
    });
    let mut left = quantity;
    let mut out = Vec::new();
    for level in candidates {
        if left == 0 {
            break;
        }
        let take = left.min(level.available());
        out.push(Allocation {
            warehouse: level.warehouse.clone(),
            quantity: take,
        });
        left -= take;
    }
    (left == 0).then_some(out)
}

/// Why a held or confirmed reservation was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The order asked (payment failed, cancelled).
    Requested,
    /// The TTL ran out; the sweeper released it.
    Expired,
}

impl ReleaseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Expired => "expired",
        }
    }
}

pub use agora_kernel::pagination::{decode_cursor, encode_cursor};

#[cfg(test)]
mod tests {
    use super::*;

    fn level(w: &str, on_hand: i64, reserved: i64) -> StockLevel {
        StockLevel {
            warehouse: WarehouseCode::parse(w).unwrap(),
            on_hand,
            reserved,
        }
    }

    #[test]
    fn skus_are_one_to_sixty_four_safe_characters() {
        assert!(Sku::parse("ABC-1.x_2").is_ok());
        assert!(Sku::parse(&"a".repeat(64)).is_ok());
        for bad in ["", " a", "a b", "ä", "a/b", &"a".repeat(65)] {
            assert!(Sku::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quantities_are_one_to_a_million() {
        assert!(Quantity::new(1).is_ok());
        assert!(Quantity::new(1_000_000).is_ok());
        for bad in [0, -1, 1_000_001] {
            assert!(Quantity::new(bad).is_err());
        }
        assert!(Delta::new(0).is_err());
        assert!(Delta::new(-1_000_000).is_ok());
        assert!(Delta::new(1_000_001).is_err());
    }

    #[test]
    fn allocation_takes_the_warehouse_with_most_available_first_and_splits() {
        let levels = [level("B", 5, 0), level("A", 5, 0), level("C", 10, 2)];
        let a = allocate(&levels, 10).unwrap_or_default();
        let got: Vec<(&str, i64)> = a
            .iter()
            .map(|x| (x.warehouse.as_str(), x.quantity))
            .collect();
        assert_eq!(got, vec![("C", 8), ("A", 2)]);
        assert_eq!(allocate(&levels, 19), None);
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(
            decode_cursor(&encode_cursor("SKU-1")).as_deref(),
            Some("SKU-1")
        );
        assert_eq!(decode_cursor("zz"), None);
    }
}
