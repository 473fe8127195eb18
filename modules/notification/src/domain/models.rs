//! The notification domain's parsed types: channels, statuses, templates,
//! notifications with their attempts, preferences, and the order/payment events
//! this module consumes (its own deserialisation types, unknown fields ignored).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

agora_kernel::typed_id!(NotificationId, "notification");

/// Where a notification goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Email,
    Sms,
    Push,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::Sms, Channel::Push];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
        }
    }

    /// Parse `email`, `sms` or `push`.
    pub fn parse(s: &str) -> Result<Self, UnknownValue> {
        UnknownValue::check(s, Self::ALL, Self::as_str, "email, sms or push")
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a notification is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Waiting for its first delivery attempt.
    Pending,
    /// Delivered to the channel.
    Sent,
    /// An attempt failed with a transient error; another is scheduled.
    Retrying,
    /// Permanently failed, or out of attempts. A staff retry puts it back.
    Dead,
    /// Not sent: the customer turned the channel off, or there is no address.
    Skipped,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Sent,
        Status::Retrying,
        Status::Dead,
        Status::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Retrying => "retrying",
            Status::Dead => "dead",
            Status::Skipped => "skipped",
        }
    }

    /// Parse one of the five status names.
    pub fn parse(s: &str) -> Result<Self, UnknownValue> {
        UnknownValue::check(
            s,
            Self::ALL,
            Self::as_str,
            "pending, sent, retrying, dead or skipped",
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value that is not one of a closed set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value `{value}` (expected {expected})")]
pub struct UnknownValue {
    value: String,
    expected: &'static str,
}

impl UnknownValue {
    fn new(value: &str, expected: &'static str) -> Self {
        Self {
            value: value.chars().take(32).collect(),
            expected,
        }
    }

    /// The value of the closed set `all` whose `name` is `s`, or this error
    /// saying what was `expected`.
    fn check<T: Copy>(
        s: &str,
        all: impl IntoIterator<Item = T>,
        name: fn(T) -> &'static str,
        expected: &'static str,
    ) -> Result<T, Self> {
        all.into_iter()
            .find(|v| name(*v) == s)
            .ok_or_else(|| Self::new(s, expected))
    }
}

/// The kind of event a notification tells about; its name is the template name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Template {
    OrderConfirmed,
    OrderPaymentFailed,
    OrderRejected,
    OrderCancelled,
    OrderShipped,
    OrderDelivered,
    PaymentRefunded,
}

impl Template {
    pub const ALL: [Template; 7] = [
        Template::OrderConfirmed,
        Template::OrderPaymentFailed,
        Template::OrderRejected,
        Template::OrderCancelled,
        Template::OrderShipped,
        Template::OrderDelivered,
        Template::PaymentRefunded,
    ];

    /// `order_confirmed`: the event type without prefix dots and version.
    pub fn as_str(self) -> &'static str {
        match self {
            Template::OrderConfirmed => "order_confirmed",
            Template::OrderPaymentFailed => "order_payment_failed",
            Template::OrderRejected => "order_rejected",
            Template::OrderCancelled => "order_cancelled",
            Template::OrderShipped => "order_shipped",
            Template::OrderDelivered => "order_delivered",
            Template::PaymentRefunded => "payment_refunded",
        }
    }

    /// The integration event type this template answers.
    pub fn event_type(self) -> &'static str {
        match self {
            Template::OrderConfirmed => "order.confirmed.v1",
            Template::OrderPaymentFailed => "order.payment_failed.v1",
            Template::OrderRejected => "order.rejected.v1",
            Template::OrderCancelled => "order.cancelled.v1",
            Template::OrderShipped => "order.shipped.v1",
            Template::OrderDelivered => "order.delivered.v1",
            Template::PaymentRefunded => "payment.refunded.v1",
        }
    }

    /// The template for a consumed event type; `None` for every other type.
    pub fn for_event_type(event_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.event_type() == event_type)
    }

    /// Parse a template name (`order_confirmed`).
    pub fn parse(s: &str) -> Result<Self, UnknownValue> {
        UnknownValue::check(
            s,
            Self::ALL,
            Self::as_str,
            "a template name such as order_confirmed",
        )
    }
}

/// One notification as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: NotificationId,
    pub customer_id: String,
    pub channel: Channel,
    pub template: Template,
    pub status: Status,
    /// E-mail address, phone number or push token; `None` when skipped for want of one.
    pub recipient: Option<String>,
    /// E-mail only.
    pub subject: Option<String>,
    pub body_text: String,
    /// E-mail only.
    pub body_html: Option<String>,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Attempts made before the current round (a staff retry starts a new round).
    pub round_start: u32,
    pub last_error: Option<String>,
    pub event_id: Uuid,
    pub event_type: String,
    pub correlation_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the worker should try next; `None` unless pending or retrying.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
}

impl Notification {
    /// A new notification for an event, pending (with a recipient) or skipped.
    #[expect(clippy::too_many_arguments, reason = "a plain constructor of a record")]
    pub fn new(
        event: &EventRef,
        customer_id: &str,
        channel: Channel,
        template: Template,
        recipient: Option<String>,
        message: RenderedMessage,
        skip_reason: Option<String>,
        now: DateTime<Utc>,
    ) -> Self {
        // Stored with millisecond precision: keep the value as it reads back.
        let now = chrono::SubsecRound::trunc_subsecs(now, 3);
        let (status, next) = if skip_reason.is_some() {
            (Status::Skipped, None)
        } else {
            (Status::Pending, Some(now))
        };
        Self {
            id: NotificationId::new(),
            customer_id: customer_id.to_owned(),
            channel,
            template,
            status,
            recipient,
            subject: message.subject,
            body_text: message.text,
            body_html: message.html,
            attempts: 0,
            round_start: 0,
            last_error: skip_reason,
            event_id: event.id,
            event_type: event.event_type.clone(),
            correlation_id: event.correlation_id.clone(),
            created_at: now,
            updated_at: now,
            next_attempt_at: next,
            sent_at: None,
        }
    }
}

/// What identifies the event a notification came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    pub id: Uuid,
    pub event_type: String,
    pub correlation_id: String,
}

/// A rendered message: subject and HTML for e-mail, text for every channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMessage {
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Delivered.
    Sent,
    /// Transient failure: to be tried again (or dead when out of attempts).
    Failed,
    /// Permanent refusal (SMTP 5xx, provider 4xx): dead at once.
    Rejected,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Sent => "sent",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "sent" => Ok(AttemptOutcome::Sent),
            "failed" => Ok(AttemptOutcome::Failed),
            "rejected" => Ok(AttemptOutcome::Rejected),
            other => Err(UnknownValue::new(other, "sent, failed or rejected")),
        }
    }
}

/// One delivery attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    pub attempted_at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
}

/// The result of one attempt and what it does to the notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    pub attempt: Attempt,
    /// `Sent`, `Retrying` or `Dead`.
    pub new_status: Status,
    /// When retrying.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Which channels a customer wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelChoice {
    pub email: bool,
    pub sms: bool,
    pub push: bool,
}

impl Default for ChannelChoice {
    /// E-mail on, SMS and push off.
    fn default() -> Self {
        Self {
            email: true,
            sms: false,
            push: false,
        }
    }
}

impl ChannelChoice {
    pub fn enabled(&self, channel: Channel) -> bool {
        match channel {
            Channel::Email => self.email,
            Channel::Sms => self.sms,
            Channel::Push => self.push,
        }
    }
}

/// A customer's notification preferences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferences {
    pub customer_id: String,
    /// Overrides the address carried in order events.
    pub email: Option<Email>,
    pub phone: Option<Phone>,
    pub push_token: Option<PushToken>,
    pub channels: ChannelChoice,
}

impl Preferences {
    /// The defaults for a customer who never chose.
    pub fn defaults(customer_id: &str) -> Self {
        Self {
            customer_id: customer_id.to_owned(),
            email: None,
            phone: None,
            push_token: None,
            channels: ChannelChoice::default(),
        }
    }
}

/// A plausible e-mail address: `local@domain`, at most 254 characters, no spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("must be an e-mail address such as alice@example.com (at most 254 characters)")]
    Email,
    #[error("must be a phone number in E.164 form, such as +4915123456789")]
    Phone,
    #[error("must be 1 to 4096 characters with no spaces")]
    PushToken,
}

impl Email {
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let s = s.trim();
        let ok = s.len() <= 254
            && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            && matches!(s.rsplit_once('@'), Some((local, domain))
                if !local.is_empty() && !domain.is_empty() && !domain.starts_with('.')
                    && !domain.ends_with('.') && !local.contains(['<', '>']) && !domain.contains(['<', '>', '@']));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(AddressError::Email)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number in E.164 form: `+` and 8 to 15 digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let s = s.trim();
        match s.strip_prefix('+') {
            Some(digits)
                if (8..=15).contains(&digits.len())
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && !digits.starts_with('0') =>
            {
                Ok(Self(s.to_owned()))
            }
            _ => Err(AddressError::Phone),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A device push token: opaque, 1 to 4096 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushToken(String);

impl PushToken {
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        if s.is_empty() || s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            Err(AddressError::PushToken)
        } else {
            Ok(Self(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Filters of a notification listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub customer_id: Option<String>,
    pub status: Option<Status>,
    pub channel: Option<Channel>,
    /// Only notifications with an id below this one (newest first).
    pub before: Option<NotificationId>,
    pub limit: u32,
}

// ---------------------------------------------------------------------------
// Consumed events: this module's own view of the publishers' payloads.

/// One line of an order, as `order.*.v1` events carry it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OrderItemPayload {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
}

/// The payload of every `order.*.v1` event this module consumes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OrderEventPayload {
    pub order_id: Uuid,
    pub customer_id: String,
    #[serde(default)]
    pub customer_email: Option<String>,
    pub status: String,
    #[serde(default)]
    pub items: Vec<OrderItemPayload>,
    pub total_minor: i64,
    pub currency: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The payload of `payment.refunded.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PaymentRefundedPayload {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_minor: i64,
    pub refunded_minor: i64,
    pub currency: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_consumed_event_type_has_a_template_named_after_it() {
        for t in Template::ALL {
            assert_eq!(Template::for_event_type(t.event_type()), Some(t));
            let expected = t.event_type().trim_end_matches(".v1").replacen('.', "_", 1);
            assert_eq!(t.as_str(), expected);
        }
        assert_eq!(Template::for_event_type("order.placed.v1"), None);
    }

    #[test]
    fn addresses_parse_or_say_why_not() {
        assert!(Email::parse("alice@example.com").is_ok());
        assert!(Email::parse("alice").is_err());
        assert!(Email::parse("a b@example.com").is_err());
        assert!(Email::parse("@example.com").is_err());
        assert!(Phone::parse("+4915123456789").is_ok());
        assert!(Phone::parse("015123456789").is_err());
        assert!(Phone::parse("+49 151").is_err());
        assert!(PushToken::parse("").is_err());
        assert!(PushToken::parse("tok-123").is_ok());
    }

    #[test]
    fn order_payloads_ignore_unknown_fields() {
        let p: OrderEventPayload = serde_json::from_value(serde_json::json!({
            "order_id": "01936f0e-7c4a-7b1e-9f0a-3c5d2e8b4a61",
            "customer_id": "alice",
            "customer_email": null,
            "status": "confirmed",
            "items": [{"sku": "MUG-1", "quantity": 2, "unit_price_minor": 1250, "line_total_minor": 2500, "name": "Mug"}],
            "total_minor": 2500,
            "currency": "EUR",
            "reason": null,
            "something_new": true
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.customer_email, None);
    }
}
