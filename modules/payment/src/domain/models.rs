//! The payment module's domain types: parsed values (ids, customer, payment
//! method, amounts) and the entities (payments, refunds, ledger entries).
//!
//! Everything here is parsed once at the edge; a domain request holds only
//! these types, so the service never re-checks a string.

use agora_kernel::{Currency, Money};
use chrono::{DateTime, Utc};

agora_kernel::typed_id!(PaymentId, "payment");
agora_kernel::typed_id!(RefundId, "refund");
agora_kernel::typed_id!(OrderId, "order");
agora_kernel::typed_id!(LedgerEntryId, "ledger entry");

/// The largest amount agora charges in one payment (minor units).
pub const MAX_AMOUNT_MINOR: i64 = 99_999_999_999;

/// Why a value did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// The customer a payment belongs to: the token's `sub`, an opaque string of
/// 1–255 characters, never parsed further.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomerId(String);

impl CustomerId {
    /// # Errors
    /// Empty, longer than 255 bytes, or containing control characters.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > 255 {
            return Err(ParseError("must be 1–255 characters".into()));
        }
        if s.chars().any(char::is_control) {
            return Err(ParseError("must not contain control characters".into()));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the provider charges: a `tok_*` test token (simulated provider) or a
/// Stripe PaymentMethod id (`pm_...`). Handed to the provider unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentMethod(String);

impl PaymentMethod {
    /// # Errors
    /// Empty, longer than 255 bytes, or not visible ASCII.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ParseError(
                "must be 1–255 visible ASCII characters, e.g. tok_visa or pm_...".into(),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// A method a new charge may name: [`parse`](Self::parse)'s rules, plus
    /// the `tok_…` (test token) or `pm_…` (PaymentMethod id) shape. Stored
    /// payments are read with `parse`, so older rows stay readable.
    ///
    /// # Errors
    /// Anything `parse` refuses, or another shape.
    pub fn parse_requested(s: &str) -> Result<Self, ParseError> {
        let method = Self::parse(s)?;
        let rest = s.strip_prefix("tok_").or_else(|| s.strip_prefix("pm_"));
        if rest.is_none_or(str::is_empty) {
            return Err(ParseError(
                "must be a test token such as tok_visa (simulated provider) or a PaymentMethod id pm_... (http provider)".into(),
            ));
        }
        Ok(method)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A positive amount of at most [`MAX_AMOUNT_MINOR`] minor units.
///
/// # Errors
/// Zero, negative or too large.
pub fn positive_amount(minor: i64) -> Result<i64, ParseError> {
    if minor <= 0 {
        Err(ParseError(
            "must be a positive number of minor units".into(),
        ))
    } else if minor > MAX_AMOUNT_MINOR {
        Err(ParseError(format!("must be at most {MAX_AMOUNT_MINOR}")))
    } else {
        Ok(minor)
    }
}

/// Why money is refunded: free text, at most 500 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundReason(String);

impl RefundReason {
    /// # Errors
    /// Blank, or longer than 500 characters.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(ParseError("must not be blank (omit it instead)".into()));
        }
        if t.chars().count() > 500 {
            return Err(ParseError("must be at most 500 characters".into()));
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The key that makes a refund request retryable: the same key on the same
/// payment resumes the same refund instead of starting another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey(String);

impl RequestKey {
    /// # Errors
    /// Empty, longer than 255 bytes, or not visible ASCII.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ParseError("must be 1–255 visible ASCII characters".into()));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A payment's life: `pending` while the provider is asked (or its answer is
/// unknown), then `succeeded` or `failed`; refunds move a succeeded payment to
/// `partially_refunded` and `refunded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Pending,
    Succeeded,
    Failed,
    PartiallyRefunded,
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::PartiallyRefunded => "partially_refunded",
            Self::Refunded => "refunded",
        }
    }

    /// # Errors
    /// An unknown status name.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        Ok(match s {
            "pending" => Self::Pending,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "partially_refunded" => Self::PartiallyRefunded,
            "refunded" => Self::Refunded,
            other => return Err(ParseError(format!("unknown payment status `{other}`"))),
        })
    }

    /// Money was captured and not all of it given back yet.
    pub fn is_refundable(self) -> bool {
        matches!(self, Self::Succeeded | Self::PartiallyRefunded)
    }
}

impl std::fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// # Errors
    /// An unknown status name.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        Ok(match s {
            "pending" => Self::Pending,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            other => return Err(ParseError(format!("unknown refund status `{other}`"))),
        })
    }
}

impl std::fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to charge an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    /// Positive (see [`positive_amount`]).
    pub amount: Money,
    pub payment_method: PaymentMethod,
}

impl ChargeRequest {
    /// # Errors
    /// A non-positive or too large amount.
    pub fn new(
        order_id: OrderId,
        customer_id: CustomerId,
        amount: Money,
        payment_method: PaymentMethod,
    ) -> Result<Self, ParseError> {
        positive_amount(amount.minor())?;
        Ok(Self {
            order_id,
            customer_id,
            amount,
            payment_method,
        })
    }
}

/// A request to refund (part of) a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub payment_id: PaymentId,
    /// Positive minor units in the payment's currency.
    pub amount_minor: i64,
    pub reason: Option<RefundReason>,
    /// The same key resumes the same refund (see [`RequestKey`]).
    pub key: RequestKey,
    /// When set, the payment must be in this currency (in-process callers
    /// that hold a [`Money`] say which one they mean).
    pub currency: Option<Currency>,
}

impl RefundRequest {
    /// # Errors
    /// A non-positive or too large amount.
    pub fn new(
        payment_id: PaymentId,
        amount_minor: i64,
        reason: Option<RefundReason>,
        key: RequestKey,
    ) -> Result<Self, ParseError> {
        positive_amount(amount_minor)?;
        Ok(Self {
            payment_id,
            amount_minor,
            reason,
            key,
            currency: None,
        })
    }

    /// Refund `amount`, which must be in the payment's currency.
    ///
    /// # Errors
    /// A non-positive or too large amount.
    pub fn of_money(
        payment_id: PaymentId,
        amount: Money,
        reason: Option<RefundReason>,
        key: RequestKey,
    ) -> Result<Self, ParseError> {
        let mut r = Self::new(payment_id, amount.minor(), reason, key)?;
        r.currency = Some(amount.currency());
        Ok(r)
    }
}

/// A refund of (part of) a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: RefundId,
    pub payment_id: PaymentId,
    pub amount: Money,
    pub reason: Option<String>,
    pub status: RefundStatus,
    pub provider_ref: Option<String>,
    pub failure_code: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One payment of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub id: PaymentId,
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub status: PaymentStatus,
    pub amount: Money,
    /// Sum of succeeded refunds, in the payment's currency.
    pub refunded_minor: i64,
    pub payment_method: PaymentMethod,
    /// `simulated` or `http`: which provider took it.
    pub provider: String,
    pub provider_ref: Option<String>,
    pub failure_code: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Oldest first.
    pub refunds: Vec<Refund>,
}

impl Payment {
    pub fn currency(&self) -> Currency {
        self.amount.currency()
    }

    /// Whether `req` asks for exactly this payment (a retry, not a new charge).
    pub fn matches(&self, req: &ChargeRequest) -> bool {
        self.order_id == req.order_id
            && self.customer_id == req.customer_id
            && self.amount == req.amount
            && self.payment_method == req.payment_method
    }

    /// This `pending` payment once the provider's answer is recorded at
    /// `now` (to the millisecond, as stored): what a store writes and then
    /// returns without reading it back. A pending payment has no refunds, and
    /// nothing but its lease changes until it is finished.
    pub fn finished(&self, result: &ChargeResult, now: DateTime<Utc>) -> Payment {
        let mut p = self.clone();
        match result {
            ChargeResult::Succeeded { provider_ref } => {
                p.status = PaymentStatus::Succeeded;
                p.provider_ref = Some(provider_ref.clone());
                p.failure_code = None;
            }
            ChargeResult::Declined { code, provider_ref } => {
                p.status = PaymentStatus::Failed;
                p.provider_ref = provider_ref.clone();
                p.failure_code = Some(code.clone());
            }
        }
        p.updated_at = agora_kernel::db::from_epoch_ms(agora_kernel::db::epoch_ms(now));
        p
    }
}

/// A new payment, `pending` until the provider answers.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub id: PaymentId,
    pub request: ChargeRequest,
    pub provider: String,
}

/// A new refund, `pending` until the provider answers.
#[derive(Debug, Clone)]
pub struct NewRefund {
    pub id: RefundId,
    pub request: RefundRequest,
}

/// What the provider said about a charge, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeResult {
    Succeeded {
        provider_ref: String,
    },
    Declined {
        code: String,
        provider_ref: Option<String>,
    },
}

/// What the provider said about a refund, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundResult {
    Succeeded { provider_ref: String },
    Rejected { code: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerKind {
    Charge,
    Refund,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "charge",
            Self::Refund => "refund",
        }
    }

    /// # Errors
    /// An unknown kind.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        match s {
            "charge" => Ok(Self::Charge),
            "refund" => Ok(Self::Refund),
            other => Err(ParseError(format!("unknown ledger kind `{other}`"))),
        }
    }
}

/// One money movement: a charge (positive) or a refund (negative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: LedgerEntryId,
    pub payment_id: PaymentId,
    pub refund_id: Option<RefundId>,
    pub kind: LedgerKind,
    /// Signed minor units: + charge, − refund.
    pub amount: Money,
    pub provider_ref: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Which payments a list asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentFilter {
    pub order_id: Option<OrderId>,
    pub customer_id: Option<CustomerId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_customer_id_is_opaque_but_bounded() {
        assert!(CustomerId::parse("auth0|abc").is_ok());
        assert!(CustomerId::parse("").is_err());
        assert!(CustomerId::parse(&"x".repeat(256)).is_err());
        assert!(CustomerId::parse("a\nb").is_err());
    }

    #[test]
    fn amounts_must_be_positive_and_bounded() {
        assert!(positive_amount(1).is_ok());
        assert!(positive_amount(0).is_err());
        assert!(positive_amount(-5).is_err());
        assert!(positive_amount(MAX_AMOUNT_MINOR + 1).is_err());
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in [
            PaymentStatus::Pending,
            PaymentStatus::Succeeded,
            PaymentStatus::Failed,
            PaymentStatus::PartiallyRefunded,
            PaymentStatus::Refunded,
        ] {
            assert_eq!(PaymentStatus::parse(s.as_str()), Ok(s));
        }
        assert!(PaymentStatus::parse("paid").is_err());
    }

    #[test]
    fn payment_methods_are_visible_ascii() {
        assert!(PaymentMethod::parse("tok_visa").is_ok());
        assert!(PaymentMethod::parse("pm_card visa").is_err());
        assert!(PaymentMethod::parse("").is_err());
        assert!(
            PaymentMethod::parse("visa").is_ok(),
            "stored rows stay readable"
        );
        assert!(PaymentMethod::parse_requested("visa").is_err());
        assert!(PaymentMethod::parse_requested("tok_").is_err());
        assert!(PaymentMethod::parse_requested("pm_card_visa").is_ok());
        assert!(PaymentMethod::parse_requested("tok_chargeDeclined").is_ok());
    }
}
