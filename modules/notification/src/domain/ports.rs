//! The notification module's ports: its store (SQLite or PostgreSQL), the
//! channel senders (SMTP, webhooks, log) and the templates' renderer.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::models::{
    Attempt, AttemptResult, Channel, ListFilter, Notification, NotificationId, Preferences,
};

/// Why a staff retry was refused.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no such notification")]
    NotFound,
    #[error("only a dead notification can be retried; this one is {0}")]
    NotDead(super::models::Status),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// The module's own database.
#[async_trait]
pub trait NotificationStore: Send + Sync {
    /// In one transaction: record `event_id` in the inbox for `consumer`,
    /// remember `contact` (customer id, e-mail) when given, and insert
    /// `notifications`. `false` (and nothing written) when the inbox already
    /// held the event.
    ///
    /// # Errors
    /// Store failures; nothing is written then.
    async fn ingest(
        &self,
        consumer: &str,
        event_id: Uuid,
        contact: Option<(&str, &str)>,
        notifications: &[Notification],
    ) -> anyhow::Result<bool>;

    /// The latest e-mail address seen in events for a customer.
    ///
    /// # Errors
    /// Store failures.
    async fn contact_email(&self, customer_id: &str) -> anyhow::Result<Option<String>>;

    /// A customer's stored preferences, `None` when they never chose.
    ///
    /// # Errors
    /// Store failures.
    async fn preferences(&self, customer_id: &str) -> anyhow::Result<Option<Preferences>>;

    /// Create or replace a customer's preferences.
    ///
    /// # Errors
    /// Store failures.
    async fn put_preferences(&self, prefs: &Preferences, now: DateTime<Utc>) -> anyhow::Result<()>;

    /// One notification.
    ///
    /// # Errors
    /// Store failures.
    async fn get(&self, id: NotificationId) -> anyhow::Result<Option<Notification>>;

    /// Its attempts, oldest first.
    ///
    /// # Errors
    /// Store failures.
    async fn attempts(&self, id: NotificationId) -> anyhow::Result<Vec<Attempt>>;

    /// Newest first, at most `filter.limit` items, below `filter.before`.
    ///
    /// # Errors
    /// Store failures.
    async fn list(&self, filter: &ListFilter) -> anyhow::Result<Vec<Notification>>;

    /// Claim up to `limit` pending or retrying notifications due at `now`:
    /// their next attempt moves to `now + lease`, so another worker does not
    /// take them meanwhile and a crashed worker's claim runs out.
    ///
    /// # Errors
    /// Store failures.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: u32,
    ) -> anyhow::Result<Vec<Notification>>;

    /// Record attempts and apply their results, all in one transaction. Only
    /// a notification still pending or retrying, with the attempt count the
    /// result expects, changes; for each result, whether it was applied.
    ///
    /// # Errors
    /// Store failures; nothing is recorded then.
    async fn record_attempts(
        &self,
        results: &[(NotificationId, AttemptResult)],
    ) -> anyhow::Result<Vec<bool>>;

    /// [`NotificationStore::record_attempts`] for one attempt.
    ///
    /// # Errors
    /// Store failures.
    async fn record_attempt(
        &self,
        id: NotificationId,
        result: &AttemptResult,
    ) -> anyhow::Result<bool> {
        let applied = self.record_attempts(&[(id, result.clone())]).await?;
        Ok(applied.first().copied().unwrap_or(false))
    }

    /// Put a dead notification back in the queue with a new round of attempts.
    ///
    /// # Errors
    /// [`RetryError::NotFound`], [`RetryError::NotDead`], store failures.
    async fn retry(
        &self,
        id: NotificationId,
        now: DateTime<Utc>,
    ) -> Result<Notification, RetryError>;

    /// How many notifications have each status (for tests, figures and ops).
    ///
    /// # Errors
    /// Store failures.
    async fn count_by_status(&self) -> anyhow::Result<Vec<(String, i64)>>;
}

/// What a channel sender is given.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub notification_id: NotificationId,
    pub channel: Channel,
    pub template: String,
    pub recipient: String,
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
    pub correlation_id: String,
}

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth another try later (time-out, connection refused, SMTP 4xx, provider 5xx/429).
    #[error("{0}")]
    Transient(String),
    /// Will never succeed as is (SMTP 5xx, provider 4xx, bad address).
    #[error("{0}")]
    Permanent(String),
}

/// A delivery channel: SMTP, a JSON webhook, or the log.
#[async_trait]
pub trait ChannelSender: Send + Sync {
    /// `smtp`, `webhook` or `log`, for logs.
    fn kind(&self) -> &'static str;

    /// Deliver one message.
    ///
    /// # Errors
    /// [`DeliveryError::Transient`] or [`DeliveryError::Permanent`].
    async fn send(&self, message: &OutgoingMessage) -> Result<(), DeliveryError>;
}
