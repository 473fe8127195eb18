//! The notification service: turns consumed events into notifications (rows
//! only), delivers due notifications through the channels with retries, and
//! answers the HTTP operations under the role rules (customers see their own,
//! staff see all and retry dead ones).

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::pagination::Page;
use agora_kernel::{CallContext, Clock, EventEnvelope, Role, Round, SystemClock};
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::models::{
    Attempt, AttemptOutcome, AttemptResult, Channel, Email, EventRef, ListFilter, Notification,
    NotificationId, OrderEventPayload, PaymentRefundedPayload, Preferences, Status, Template,
};
use super::ports::{ChannelSender, DeliveryError, NotificationStore, OutgoingMessage, RetryError};
use super::templates::{MessageContext, Templates};

/// The inbox consumer name of this module's event handler.
pub const CONSUMER: &str = "notification";

/// Metric: notifications that ended `dead`, by channel.
pub const DEAD_METRIC: &str = "agora_notifications_dead_total";
/// Metric: notifications delivered, by channel.
pub const SENT_METRIC: &str = "agora_notifications_sent_total";
/// Metric: delivery attempts that failed, by channel and kind.
pub const FAILED_ATTEMPTS_METRIC: &str = "agora_notification_failed_attempts_total";

/// The senders, one per channel (the log sender where nothing is configured).
#[derive(Clone)]
pub struct Channels {
    pub email: Arc<dyn ChannelSender>,
    pub sms: Arc<dyn ChannelSender>,
    pub push: Arc<dyn ChannelSender>,
}

impl Channels {
    /// Every channel through the same sender (the log, in tests and `cargo run`).
    pub fn all(sender: Arc<dyn ChannelSender>) -> Self {
        Self {
            email: sender.clone(),
            sms: sender.clone(),
            push: sender,
        }
    }

    fn of(&self, channel: Channel) -> &Arc<dyn ChannelSender> {
        match channel {
            Channel::Email => &self.email,
            Channel::Sms => &self.sms,
            Channel::Push => &self.push,
        }
    }
}

/// How the worker retries.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryPolicy {
    /// Attempts per round before a notification is `dead` (at least 1).
    pub max_attempts: u32,
    /// Back-off before the 2nd attempt; doubles with each attempt, with jitter.
    pub retry_base: Duration,
    /// Longest back-off.
    pub retry_max: Duration,
    /// How long a claimed notification is reserved for one worker.
    pub lease: Duration,
    /// How often the worker looks for due notifications when not woken.
    pub poll_interval: Duration,
    /// Notifications claimed (and delivered concurrently) at once.
    pub batch_size: u32,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(3600),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            batch_size: 32,
        }
    }
}

impl DeliveryPolicy {
    /// Exponential back-off with jitter before attempt `done + 1`, having
    /// made `done` (>= 1) attempts in this round: a random delay between half
    /// and all of `base * 2^(done-1)`, capped at `retry_max`.
    pub fn backoff(&self, done: u32) -> Duration {
        let exp = done.saturating_sub(1).min(30);
        let full = self
            .retry_base
            .saturating_mul(1u32 << exp)
            .min(self.retry_max);
        let ms = u64::try_from(full.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(ms / 2..=ms))
    }
}

/// What the HTTP operations can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error("{0}")]
    Forbidden(String),
    /// Missing, or not the caller's.
    #[error("no such notification")]
    NotFound,
    #[error("only a dead notification can be retried; this one is {0}")]
    NotDead(Status),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A notification with its attempts.
#[derive(Debug, Clone)]
pub struct NotificationDetail {
    pub notification: Notification,
    pub attempts: Vec<Attempt>,
}

/// The service: events in, deliveries out, queries for the HTTP layer.
pub struct NotificationService {
    store: Arc<dyn NotificationStore>,
    channels: Channels,
    templates: Templates,
    policy: DeliveryPolicy,
    wake: Notify,
    clock: Arc<dyn Clock>,
}

impl NotificationService {
    /// # Errors
    /// Templates that do not compile.
    pub fn new(
        store: Arc<dyn NotificationStore>,
        channels: Channels,
        policy: DeliveryPolicy,
    ) -> anyhow::Result<Self> {
        // Every channel's counters at zero from the start, so a dashboard or an
        // alert on a dead notification has a series before the first one.
        for channel in Channel::ALL {
            for metric in [SENT_METRIC, DEAD_METRIC, FAILED_ATTEMPTS_METRIC] {
                metrics::counter!(metric, "channel" => channel.as_str()).increment(0);
            }
        }
        Ok(Self {
            store,
            channels,
            templates: Templates::new()?,
            policy: DeliveryPolicy {
                max_attempts: policy.max_attempts.max(1),
                batch_size: policy.batch_size.max(1),
                ..policy
            },
            wake: Notify::new(),
            clock: Arc::new(SystemClock),
        })
    }

    /// Use another clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn store(&self) -> &Arc<dyn NotificationStore> {
        &self.store
    }

    // -- events -------------------------------------------------------------

    /// Turn one consumed event into notifications, recorded with the event id
    /// in the inbox in one transaction; a duplicate creates nothing. Returns
    /// how many notifications were created. A payload that does not parse is
    /// logged, counted and recorded as handled: it would never parse later.
    ///
    /// # Errors
    /// Store or template failures; the bus delivers the event again.
    #[tracing::instrument(skip_all, fields(event_id = %event.id, event_type = %event.event_type))]
    pub async fn handle_event(&self, event: &EventEnvelope) -> anyhow::Result<usize> {
        let Some(template) = Template::for_event_type(&event.event_type) else {
            return Ok(0);
        };
        let parsed = match template {
            Template::PaymentRefunded => event
                .payload_as::<PaymentRefundedPayload>()
                .map(|p| (p.customer_id.clone(), None, MessageContext::from_refund(&p))),
            _ => event.payload_as::<OrderEventPayload>().map(|p| {
                (
                    p.customer_id.clone(),
                    p.customer_email.clone(),
                    MessageContext::from_order(&p),
                )
            }),
        };
        let (customer_id, event_email, ctx) = match parsed {
            Ok(parsed) if !parsed.0.is_empty() && parsed.0.len() <= 255 => parsed,
            other => {
                let why = other.err().map_or_else(
                    || "customer_id must be 1 to 255 characters".to_owned(),
                    |e| e.to_string(),
                );
                tracing::error!(error = %why, "dropping an event whose payload this module cannot read");
                metrics::counter!("agora_notification_events_rejected_total", "type" => event.event_type.clone())
                    .increment(1);
                self.store.ingest(CONSUMER, event.id, None, &[]).await?;
                return Ok(0);
            }
        };
        let event_email = event_email.and_then(|e| Email::parse(&e).ok());

        let prefs = self
            .store
            .preferences(&customer_id)
            .await?
            .unwrap_or_else(|| Preferences::defaults(&customer_id));
        let email = match (&prefs.email, &event_email) {
            (Some(e), _) | (None, Some(e)) => Some(e.as_str().to_owned()),
            (None, None) => self.store.contact_email(&customer_id).await?,
        };
        let event_ref = EventRef {
            id: event.id,
            event_type: event.event_type.clone(),
            correlation_id: event.correlation_id.clone(),
        };
        let now = self.clock.now();
        let mut notifications = Vec::new();
        for channel in Channel::ALL {
            let enabled = prefs.channels.enabled(channel);
            // E-mail is the channel every customer has by default, so turning it
            // off leaves a visible `skipped` record; SMS and push exist only
            // once the customer opted in.
            if channel != Channel::Email && !enabled {
                continue;
            }
            let recipient = match channel {
                Channel::Email => email.clone(),
                Channel::Sms => prefs.phone.as_ref().map(|p| p.as_str().to_owned()),
                Channel::Push => prefs.push_token.as_ref().map(|p| p.as_str().to_owned()),
            };
            let skip = if !enabled {
                Some(format!("the customer turned {channel} notifications off"))
            } else if recipient.is_none() {
                Some(format!("no {channel} address is known for the customer"))
            } else {
                None
            };
            let message = self.templates.render(template, channel, &ctx)?;
            notifications.push(Notification::new(
                &event_ref,
                &customer_id,
                channel,
                template,
                recipient,
                message,
                skip,
                now,
            ));
        }
        let contact = event_email
            .as_ref()
            .map(|e| (customer_id.as_str(), e.as_str()));
        let created = self
            .store
            .ingest(CONSUMER, event.id, contact, &notifications)
            .await?;
        if !created {
            tracing::debug!("duplicate event: already handled");
            return Ok(0);
        }
        if notifications.iter().any(|n| n.status == Status::Pending) {
            self.wake.notify_one();
        }
        Ok(notifications.len())
    }

    // -- delivery -----------------------------------------------------------

    /// Claim the due notifications (one batch), deliver them concurrently,
    /// then record every attempt in one transaction; how many were claimed.
    ///
    /// # Errors
    /// Store failures while claiming or recording (the claim's lease then
    /// runs out and the batch is delivered again: delivery is at least once).
    pub async fn deliver_due(&self) -> anyhow::Result<usize> {
        let batch = self
            .store
            .claim_due(self.clock.now(), self.policy.lease, self.policy.batch_size)
            .await?;
        let n = batch.len();
        if n == 0 {
            return Ok(0);
        }
        let attempts =
            futures_util::future::join_all(batch.iter().map(|n| self.attempt_one(n))).await;
        let results: Vec<_> = batch.iter().zip(attempts).map(|(n, r)| (n.id, r)).collect();
        let applied = self.store.record_attempts(&results).await?;
        for ((n, (_, result)), applied) in batch.iter().zip(&results).zip(applied) {
            self.report(n, result, applied);
        }
        Ok(n)
    }

    /// One delivery attempt (no store access).
    #[tracing::instrument(skip_all, fields(notification_id = %n.id, channel = %n.channel, attempt = n.attempts + 1))]
    async fn attempt_one(&self, n: &Notification) -> AttemptResult {
        let outcome = match n.recipient.clone() {
            None => Err(DeliveryError::Permanent("no recipient".to_owned())),
            Some(recipient) => {
                let message = OutgoingMessage {
                    notification_id: n.id,
                    channel: n.channel,
                    template: n.template.as_str().to_owned(),
                    recipient,
                    subject: n.subject.clone(),
                    text: n.body_text.clone(),
                    html: n.body_html.clone(),
                    correlation_id: n.correlation_id.clone(),
                };
                self.channels.of(n.channel).send(&message).await
            }
        };
        self.judge(n, outcome, self.clock.now())
    }

    /// Metrics and logs for a recorded attempt.
    fn report(&self, n: &Notification, result: &AttemptResult, applied: bool) {
        let channel = n.channel.as_str();
        let via = self.channels.of(n.channel).kind();
        let error = result.attempt.error.as_deref().unwrap_or("");
        if !applied {
            tracing::warn!(notification_id = %n.id, "the notification changed while it was being delivered");
            return;
        }
        match result.new_status {
            Status::Sent => {
                metrics::counter!(SENT_METRIC, "channel" => channel).increment(1);
                tracing::debug!(notification_id = %n.id, channel, via, "notification sent");
            }
            Status::Dead => {
                metrics::counter!(DEAD_METRIC, "channel" => channel).increment(1);
                metrics::counter!(FAILED_ATTEMPTS_METRIC, "channel" => channel).increment(1);
                tracing::warn!(notification_id = %n.id, channel, via, error, attempts = result.attempt.number, "notification is dead");
            }
            _ => {
                metrics::counter!(FAILED_ATTEMPTS_METRIC, "channel" => channel).increment(1);
                tracing::info!(notification_id = %n.id, channel, via, error, next_attempt_at = ?result.next_attempt_at, "delivery failed; will retry");
            }
        }
    }

    /// What an attempt's outcome does to the notification.
    pub fn judge(
        &self,
        n: &Notification,
        outcome: Result<(), DeliveryError>,
        now: DateTime<Utc>,
    ) -> AttemptResult {
        let number = n.attempts + 1;
        let in_round = number.saturating_sub(n.round_start);
        let attempt = |outcome, error| Attempt {
            number,
            attempted_at: now,
            outcome,
            error,
        };
        match outcome {
            Ok(()) => AttemptResult {
                attempt: attempt(AttemptOutcome::Sent, None),
                new_status: Status::Sent,
                next_attempt_at: None,
            },
            Err(DeliveryError::Permanent(e)) => AttemptResult {
                attempt: attempt(AttemptOutcome::Rejected, Some(e)),
                new_status: Status::Dead,
                next_attempt_at: None,
            },
            Err(DeliveryError::Transient(e)) if in_round >= self.policy.max_attempts => {
                AttemptResult {
                    attempt: attempt(
                        AttemptOutcome::Failed,
                        Some(format!("{e} (gave up after {in_round} attempts)")),
                    ),
                    new_status: Status::Dead,
                    next_attempt_at: None,
                }
            }
            Err(DeliveryError::Transient(e)) => {
                let wait = self.policy.backoff(in_round);
                let next = now
                    + chrono::Duration::from_std(wait)
                        .unwrap_or_else(|_| chrono::Duration::hours(1));
                AttemptResult {
                    attempt: attempt(AttemptOutcome::Failed, Some(e)),
                    new_status: Status::Retrying,
                    next_attempt_at: Some(next),
                }
            }
        }
    }

    /// The delivery worker: delivers due notifications until `token` is
    /// cancelled, woken early when an event creates pending ones.
    pub async fn run_worker(self: Arc<Self>, token: CancellationToken) {
        tracing::info!("notification delivery worker started");
        let (every, wake) = (self.policy.poll_interval, Some(&self.wake));
        agora_kernel::periodically(&token, every, wake, || async {
            match self.deliver_due().await {
                Ok(n) if n >= self.policy.batch_size as usize => Round::More,
                Ok(_) => Round::Idle,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "failed to claim due notifications");
                    Round::Idle
                }
            }
        })
        .await;
        tracing::info!("notification delivery worker stopped");
    }

    // -- HTTP operations ----------------------------------------------------

    fn require_reader(ctx: &CallContext) -> Result<(), NotificationError> {
        ctx.principal
            .require(&[Role::Customer, Role::Staff])
            .map_err(|d| NotificationError::Forbidden(d.to_string()))
    }

    /// A page of notifications, newest first: customers see only their own
    /// (a `customer_id` filter naming someone else finds nothing), staff see all.
    ///
    /// # Errors
    /// Forbidden for callers that are neither customer nor staff.
    pub async fn list(
        &self,
        ctx: &CallContext,
        mut filter: ListFilter,
    ) -> Result<Page<Notification>, NotificationError> {
        Self::require_reader(ctx)?;
        if !ctx.principal.is_staff() {
            let own = &ctx.principal.subject;
            if filter.customer_id.as_ref().is_some_and(|c| c != own) {
                return Ok(Page {
                    items: vec![],
                    next_cursor: None,
                });
            }
            filter.customer_id = Some(own.clone());
        }
        let limit = filter.limit.max(1);
        let items = self
            .store
            .list(&ListFilter {
                limit: limit + 1,
                ..filter
            })
            .await?;
        let (items, next_cursor) =
            agora_kernel::pagination::cut(items, limit, |n| encode_cursor(n.id));
        Ok(Page { items, next_cursor })
    }

    /// One notification with its attempts: its owner or staff; for anyone else
    /// it does not exist.
    ///
    /// # Errors
    /// NotFound, Forbidden, store failures.
    pub async fn get(
        &self,
        ctx: &CallContext,
        id: NotificationId,
    ) -> Result<NotificationDetail, NotificationError> {
        Self::require_reader(ctx)?;
        let n = self
            .store
            .get(id)
            .await?
            .ok_or(NotificationError::NotFound)?;
        if !ctx.principal.is_staff() && n.customer_id != ctx.principal.subject {
            return Err(NotificationError::NotFound);
        }
        let attempts = self.store.attempts(id).await?;
        Ok(NotificationDetail {
            notification: n,
            attempts,
        })
    }

    /// The caller's preferences; without a stored e-mail, the one last seen in
    /// an order event, else the token's `email` claim.
    ///
    /// # Errors
    /// Forbidden for non-customers, store failures.
    pub async fn preferences(&self, ctx: &CallContext) -> Result<Preferences, NotificationError> {
        ctx.principal
            .require(&[Role::Customer])
            .map_err(|d| NotificationError::Forbidden(d.to_string()))?;
        let customer = &ctx.principal.subject;
        let mut prefs = self
            .store
            .preferences(customer)
            .await?
            .unwrap_or_else(|| Preferences::defaults(customer));
        if prefs.email.is_none() {
            let seen = self.store.contact_email(customer).await?;
            prefs.email = seen
                .or_else(|| ctx.principal.email.clone())
                .and_then(|e| Email::parse(&e).ok());
        }
        Ok(prefs)
    }

    /// Replace the caller's preferences (the customer id is the caller's).
    ///
    /// # Errors
    /// Forbidden for non-customers, store failures.
    pub async fn put_preferences(
        &self,
        ctx: &CallContext,
        mut prefs: Preferences,
    ) -> Result<Preferences, NotificationError> {
        ctx.principal
            .require(&[Role::Customer])
            .map_err(|d| NotificationError::Forbidden(d.to_string()))?;
        prefs.customer_id = ctx.principal.subject.clone();
        self.store.put_preferences(&prefs, self.clock.now()).await?;
        Ok(prefs)
    }

    /// Put a dead notification back in the queue (staff).
    ///
    /// # Errors
    /// Forbidden, NotFound, NotDead, store failures.
    pub async fn retry(
        &self,
        ctx: &CallContext,
        id: NotificationId,
    ) -> Result<Notification, NotificationError> {
        ctx.principal
            .require(&[Role::Staff])
            .map_err(|d| NotificationError::Forbidden(d.to_string()))?;
        let n = self
            .store
            .retry(id, self.clock.now())
            .await
            .map_err(|e| match e {
                RetryError::NotFound => NotificationError::NotFound,
                RetryError::NotDead(s) => NotificationError::NotDead(s),
                RetryError::Unexpected(e) => NotificationError::Unexpected(e),
            })?;
        tracing::info!(notification_id = %id, by = %ctx.principal.subject, "dead notification put back in the queue");
        self.wake.notify_one();
        Ok(n)
    }
}

/// A cursor after `id` (the kernel's opaque scheme over the id).
pub fn encode_cursor(id: NotificationId) -> String {
    agora_kernel::pagination::encode_cursor(&id.to_string())
}

/// `None` for a cursor this module did not hand out.
pub fn decode_cursor(s: &str) -> Option<NotificationId> {
    let key = agora_kernel::pagination::decode_cursor(s)?;
    uuid::Uuid::try_parse(&key).ok().map(NotificationId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_with_jitter_and_stays_under_the_cap() {
        let p = DeliveryPolicy {
            retry_base: Duration::from_millis(1000),
            retry_max: Duration::from_millis(5000),
            ..DeliveryPolicy::default()
        };
        for _ in 0..50 {
            let first = p.backoff(1).as_millis();
            assert!((500..=1000).contains(&first), "{first}");
            let third = p.backoff(3).as_millis();
            assert!((2000..=4000).contains(&third), "{third}");
            let late = p.backoff(30).as_millis();
            assert!((2500..=5000).contains(&late), "{late}");
        }
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let id = NotificationId::new();
        assert_eq!(decode_cursor(&encode_cursor(id)), Some(id));
        assert_eq!(decode_cursor("garbage"), None);
        assert_eq!(decode_cursor(&id.to_string()), None);
    }
}
