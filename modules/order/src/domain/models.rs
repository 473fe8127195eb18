//! Orders and the values they are made of. Every type here is parsed, never
//! merely validated: holding an `OrderRequest` means the input was good.

use agora_kernel::{CallContext, FieldErrors, Money};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

agora_kernel::typed_id!(OrderId, "order");

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    AwaitingPayment,
    Confirmed,
    Shipped,
    Delivered,
    Rejected,
    PaymentFailed,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 8] = [
        OrderStatus::Pending,
        OrderStatus::AwaitingPayment,
        OrderStatus::Confirmed,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Rejected,
        OrderStatus::PaymentFailed,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::AwaitingPayment => "awaiting_payment",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Rejected => "rejected",
            OrderStatus::PaymentFailed => "payment_failed",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No transition leaves a final status.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderStatus::Delivered
                | OrderStatus::Rejected
                | OrderStatus::PaymentFailed
                | OrderStatus::Cancelled
        )
    }

    /// Still being placed: the saga (or the recovery worker) owns the next step.
    pub fn in_flight(self) -> bool {
        matches!(self, OrderStatus::Pending | OrderStatus::AwaitingPayment)
    }

    /// The legal moves of the state machine (ARCHITECTURE.md).
    pub fn can_become(self, to: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, to),
            (Pending, AwaitingPayment)
                | (Pending, Rejected)
                | (Pending, Cancelled)
                | (AwaitingPayment, Confirmed)
                | (AwaitingPayment, PaymentFailed)
                | (AwaitingPayment, Cancelled)
                | (Confirmed, Shipped)
                | (Confirmed, Cancelled)
                | (Shipped, Delivered)
        )
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stock-keeping unit: 1–64 of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sku(String);

impl Sku {
    pub fn parse(s: &str) -> Result<Sku, String> {
        if (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            Ok(Sku(s.to_owned()))
        } else {
            Err("must be 1–64 characters of A-Z, a-z, 0-9, '.', '_' or '-'".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Units of one line: 1–1,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quantity(u32);

impl Quantity {
    pub const MAX: i64 = 1_000;

    pub fn parse(n: i64) -> Result<Quantity, String> {
        if (1..=Self::MAX).contains(&n) {
            Ok(Quantity(n as u32))
        } else {
            Err(format!("must be between 1 and {}", Self::MAX))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// ISO 3166-1 alpha-2 codes.
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF \
GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW \
KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL \
NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST \
SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// A shipping address; `country` is ISO 3166-1 alpha-2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShippingAddress {
    pub name: String,
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, e.g. `DE`.
    pub country: String,
}

impl ShippingAddress {
    /// Check every field, recording problems under `shipping_address.<field>`.
    pub fn parse(raw: ShippingAddress, errors: &mut FieldErrors) -> Option<ShippingAddress> {
        let before = errors.clone().into_map().len();
        let text = |errors: &mut FieldErrors, field: &str, value: &str, max: usize| {
            let v = value.trim();
            if v.is_empty() || v.chars().count() > max {
                errors.add(
                    &format!("shipping_address.{field}"),
                    format!("must be 1–{max} characters"),
                );
            }
        };
        text(errors, "name", &raw.name, 200);
        text(errors, "line1", &raw.line1, 200);
        if raw
            .line2
            .as_ref()
            .is_some_and(|l2| l2.chars().count() > 200)
        {
            errors.add("shipping_address.line2", "must be at most 200 characters");
        }
        text(errors, "city", &raw.city, 100);
        text(errors, "postal_code", &raw.postal_code, 20);
        if !(raw.country.len() == 2 && COUNTRIES.split(' ').any(|c| c == raw.country)) {
            errors.add(
                "shipping_address.country",
                "must be an ISO 3166-1 alpha-2 code such as DE",
            );
        }
        if errors.clone().into_map().len() > before {
            return None;
        }
        Some(ShippingAddress {
            name: raw.name.trim().to_owned(),
            line1: raw.line1.trim().to_owned(),
            line2: raw
                .line2
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty()),
            city: raw.city.trim().to_owned(),
            postal_code: raw.postal_code.trim().to_owned(),
            country: raw.country,
        })
    }
}

/// One priced line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderLine {
    #[schema(value_type = String)]
    pub sku: Sku,
    pub quantity: u32,
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
}

/// A line as the customer asked for it (prices come from the catalogue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedLine {
    pub sku: Sku,
    pub quantity: Quantity,
}

/// A parsed request to place an order.
#[derive(Debug, Clone)]
pub struct OrderRequest {
    pub lines: Vec<RequestedLine>,
    pub shipping_address: ShippingAddress,
    pub payment_method: String,
    /// The request's `Idempotency-Key`: placing twice with it returns the first order.
    pub idempotency_key: Option<String>,
}

impl OrderRequest {
    pub const MAX_LINES: usize = 100;
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub id: OrderId,
    pub customer_id: String,
    pub customer_email: Option<String>,
    /// The request id of the request that placed it (carried by every event).
    pub correlation_id: String,
    /// The `Idempotency-Key` it was placed with, unique per customer.
    pub idempotency_key: Option<String>,
    pub status: OrderStatus,
    pub items: Vec<OrderLine>,
    pub total: Money,
    pub shipping_address: ShippingAddress,
    pub payment_method: String,
    pub payment_id: Option<PaymentRef>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    /// Saga bookkeeping: payment attempts so far, when to try again, and the
    /// time after which an unpaid order fails.
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub payment_deadline: DateTime<Utc>,
}

impl Order {
    /// A new order as `ctx`'s customer places it at `now`, priced at `items`
    /// and `total`: pending, version 1, due for its first payment attempt at
    /// once, and failing unpaid at `payment_deadline`.
    pub fn placed(
        ctx: &CallContext,
        request: OrderRequest,
        (items, total): (Vec<OrderLine>, Money),
        now: DateTime<Utc>,
        payment_deadline: DateTime<Utc>,
    ) -> Self {
        Self {
            id: OrderId::new(),
            customer_id: ctx.principal.subject.clone(),
            customer_email: ctx.principal.email.clone(),
            correlation_id: ctx.correlation_id.clone(),
            idempotency_key: request.idempotency_key,
            status: OrderStatus::Pending,
            items,
            total,
            shipping_address: request.shipping_address,
            payment_method: request.payment_method,
            payment_id: None,
            failure_reason: None,
            created_at: now,
            updated_at: now,
            version: 1,
            attempts: 0,
            next_attempt_at: Some(now),
            payment_deadline,
        }
    }

    /// The stock reservation of this order (derived, so a retry reuses it).
    pub fn reservation_id(&self) -> String {
        self.id.to_string()
    }

    /// The payment idempotency key (derived, so a retry never charges twice).
    pub fn charge_key(&self) -> String {
        format!("order-{}-charge", self.id)
    }

    pub fn refund_key(&self) -> String {
        format!("order-{}-refund", self.id)
    }
}

/// One move of the state machine, as `GET /orders/{id}/history` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Transition {
    /// `null` for the creation of the order.
    pub from: Option<OrderStatus>,
    pub to: OrderStatus,
    pub at: DateTime<Utc>,
    /// Who caused it: a customer or staff subject, or `system` for the saga.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub correlation_id: String,
}

/// Filters of `GET /orders`.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    /// `Some` restricts to one customer (customers always get their own).
    pub customer_id: Option<String>,
    pub status: Option<OrderStatus>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// Sum line totals; refuses mixed currencies and overflow.
pub fn price_lines(lines: &[(RequestedLine, Money)]) -> Result<(Vec<OrderLine>, Money), String> {
    let Some((_, first)) = lines.first() else {
        return Err("an order needs at least one line".into());
    };
    let mut total = Money::zero(first.currency());
    let mut out = Vec::with_capacity(lines.len());
    for (line, unit) in lines {
        let line_total = unit
            .checked_mul(i64::from(line.quantity.get()))
            .map_err(|e| e.to_string())?;
        total = total.checked_add(line_total).map_err(|e| e.to_string())?;
        out.push(OrderLine {
            sku: line.sku.clone(),
            quantity: line.quantity.get(),
            unit_price_minor: unit.minor(),
            line_total_minor: line_total.minor(),
        });
    }
    Ok((out, total))
}

/// Who pays, as the payment module knows them: the principal's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRef(String);

impl CustomerRef {
    pub fn new(subject: impl Into<String>) -> Self {
        Self(subject.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The payment module's id of an order's payment; opaque to this module,
/// which keeps it and hands it back for refunds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PaymentRef(String);

impl PaymentRef {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PaymentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_allows_only_the_documented_moves() {
        use OrderStatus::*;
        assert!(Pending.can_become(AwaitingPayment));
        assert!(AwaitingPayment.can_become(Confirmed));
        assert!(Confirmed.can_become(Shipped));
        assert!(Shipped.can_become(Delivered));
        assert!(Confirmed.can_become(Cancelled));
        assert!(!Shipped.can_become(Cancelled));
        assert!(!Delivered.can_become(Cancelled));
        assert!(!Pending.can_become(Confirmed));
        for s in OrderStatus::ALL.into_iter().filter(|s| s.is_final()) {
            assert!(
                OrderStatus::ALL.iter().all(|t| !s.can_become(*t)),
                "{s} is final"
            );
        }
    }

    #[test]
    fn statuses_round_trip_in_lower_snake_case() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::json!(s.as_str()))
            );
        }
    }

    #[test]
    fn skus_and_quantities_are_parsed() {
        assert!(Sku::parse("ABC-1.2_x").is_ok());
        assert!(Sku::parse("").is_err());
        assert!(Sku::parse("has space").is_err());
        assert!(Sku::parse(&"x".repeat(65)).is_err());
        assert!(Quantity::parse(1).is_ok() && Quantity::parse(1000).is_ok());
        assert!(
            Quantity::parse(0).is_err()
                && Quantity::parse(1001).is_err()
                && Quantity::parse(-3).is_err()
        );
    }

    #[test]
    fn an_address_lists_every_bad_field() {
        let mut errors = FieldErrors::default();
        let raw = ShippingAddress {
            name: " ".into(),
            line1: "1 Main St".into(),
            line2: None,
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "XX".into(),
        };
        assert!(ShippingAddress::parse(raw, &mut errors).is_none());
        let map = errors.into_map();
        assert!(
            map.contains_key("shipping_address.name")
                && map.contains_key("shipping_address.country")
        );
    }

    #[test]
    fn lines_are_priced_in_minor_units() {
        let eur = agora_kernel::Currency::parse("EUR").unwrap();
        let line = |sku: &str, q: i64| RequestedLine {
            sku: Sku::parse(sku).unwrap(),
            quantity: Quantity::parse(q).unwrap(),
        };
        let (lines, total) = price_lines(&[
            (line("A", 2), Money::new(1250, eur)),
            (line("B", 1), Money::new(99, eur)),
        ])
        .unwrap();
        assert_eq!(lines[0].line_total_minor, 2500);
        assert_eq!(total, Money::new(2599, eur));
    }
}
