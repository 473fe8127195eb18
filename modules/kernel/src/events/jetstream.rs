//! The event bus on NATS JetStream: integration events across processes.
//!
//! Names (all prefixed by the namespace, `AGORA__BUS__NAMESPACE`, so two
//! deployments or test runs on one server never see each other's events):
//!
//! | what | name |
//! |---|---|
//! | subject of an event | `<ns>.events.<type>`, e.g. `agora.events.order.confirmed.v1` |
//! | stream of a publishing module | `<ns>_<module>`, subjects `<ns>.events.<module>.>` |
//! | durable consumer of a subscriber | `<ns>_<subscriber>` on each stream it reads |
//! | dead letters | stream `<ns>_dead_letters`, subjects `<ns>.dead.<subscriber>.<type>` |
//!
//! Publishing waits for JetStream's acknowledgement; the event id is the
//! `Nats-Msg-Id`, so a row the relay publishes twice is stored once (within
//! the stream's duplicate window). Each consumer has at most one message
//! unacknowledged (`max_ack_pending = 1`), is acknowledged only after the
//! handler's inbox transaction committed, and is negatively acknowledged with
//! a back-off delay when the handler fails: the events of one stream reach a
//! subscriber in stream order, and a failing one holds the later ones back
//! until it succeeds or, after `max_deliver` deliveries, is dead-lettered.
//! Streams and consumers are created idempotently; agora never deletes them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{
    CONSUMED, DEAD_LETTERED, DeliveryPolicy, EventBus, EventEnvelope, EventHandler, PublishError,
    REDELIVERED, count,
};
use crate::module::BackgroundTask;

/// Retention of the event streams (documented in docs/events.md).
pub const EVENT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const EVENT_MAX_BYTES: i64 = 1 << 30;
pub const DEAD_LETTER_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// A row the relay publishes again within this window is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// How long a delivered message may stay unacknowledged before JetStream
/// delivers it again (a consumer that crashed mid-handler).
pub const ACK_WAIT: Duration = Duration::from_secs(15);
/// How long start-up waits for the server.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(10);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the bus needs to know besides the server URL.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// Prefix of every stream, subject and consumer name.
    pub namespace: String,
    /// The modules whose streams this process makes sure exist.
    pub streams: Vec<String>,
    pub policy: DeliveryPolicy,
}

/// Whether `name` may be a namespace, module or handler name: it becomes a
/// subject token and part of stream and consumer names.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `nats://user:secret@host` → `nats://user:***@host`, for logs and errors.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let creds = &u[scheme + 3..at];
                let user = creds.split(':').next().unwrap_or_default();
                format!("{}{user}:***{}", &u[..scheme + 3], &u[at..])
            }
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

struct Subscription {
    handler: Arc<dyn EventHandler>,
    source: String,
    stream: String,
    durable: String,
}

/// The JetStream adapter of the [`EventBus`] port (cheap to clone).
#[derive(Clone)]
pub struct JetStreamBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    url: String,
    config: JetStreamConfig,
    subscriptions: Mutex<Vec<Arc<Subscription>>>,
}

impl JetStreamBus {
    /// Connect, waiting up to [`CONNECT_WITHIN`] for the server, and make sure
    /// the streams exist. Later outages are not fatal: the client reconnects,
    /// the relays keep rows in their outboxes, consumers resume.
    ///
    /// # Errors
    /// A bad URL, or a server that did not answer within [`CONNECT_WITHIN`].
    pub async fn connect(url: &str, config: JetStreamConfig) -> anyhow::Result<Self> {
        for name in std::iter::once(&config.namespace).chain(&config.streams) {
            anyhow::ensure!(
                valid_name(name),
                "`{name}` cannot be part of a NATS name (letters, digits, _ and - only)"
            );
        }
        let redacted = redact(url);
        let deadline = Instant::now() + CONNECT_WITHIN;
        let client = loop {
            let attempt = async_nats::ConnectOptions::new()
                .name(format!("agora-{}", config.namespace))
                .connection_timeout(Duration::from_secs(2))
                .request_timeout(Some(Duration::from_secs(5)))
                .max_reconnects(None)
                .connect(url)
                .await;
            match attempt {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(url = %redacted, error = %e, "NATS not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => anyhow::bail!(
                    "NATS at {redacted} is unreachable after {} s: {e}",
                    CONNECT_WITHIN.as_secs()
                ),
            }
        };
        let js = jetstream::new(client.clone());
        let bus = Inner {
            client,
            js,
            url: redacted,
            config,
            subscriptions: Mutex::new(Vec::new()),
        };
        let mut streams: Vec<stream::Config> = bus
            .config
            .streams
            .iter()
            .map(|s| bus.event_stream(s))
            .collect();
        streams.push(bus.dead_letter_stream());
        for config in streams {
            let name = config.name.clone();
            loop {
                match bus.js.get_or_create_stream(config.clone()).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => {
                        tracing::warn!(stream = %name, error = %e, "JetStream not ready yet; retrying");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e))
                            .with_context(|| format!("failed to create the JetStream stream {name} (is JetStream enabled on {}?)", bus.url));
                    }
                }
            }
        }
        tracing::info!(url = %bus.url, namespace = %bus.config.namespace, "event bus on NATS JetStream");
        Ok(Self {
            inner: Arc::new(bus),
        })
    }

    /// The pending count of a subscriber's consumer on one source (tests, tools).
    ///
    /// # Errors
    /// The server did not answer.
    pub async fn pending(&self, handler: &str, source: &str) -> anyhow::Result<u64> {
        let inner = &self.inner;
        let info = inner
            .js
            .get_stream(inner.stream_name(source))
            .await?
            .consumer_info(format!("{}_{handler}", inner.ns()))
            .await?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    /// How many messages the dead-letter stream holds (tests, tools).
    ///
    /// # Errors
    /// The server did not answer.
    pub async fn dead_letters(&self) -> anyhow::Result<u64> {
        let inner = &self.inner;
        let mut stream = inner
            .js
            .get_stream(format!("{}_dead_letters", inner.ns()))
            .await?;
        Ok(stream.info().await?.state.messages)
    }
}

impl Inner {
    fn ns(&self) -> &str {
        &self.config.namespace
    }

    fn stream_name(&self, source: &str) -> String {
        format!("{}_{source}", self.ns())
    }

    fn event_stream(&self, source: &str) -> stream::Config {
        stream::Config {
            name: self.stream_name(source),
            description: Some(format!(
                "agora: integration events published by the {source} module"
            )),
            subjects: vec![format!("{}.events.{source}.>", self.ns())],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            max_age: EVENT_MAX_AGE,
            max_bytes: EVENT_MAX_BYTES,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        }
    }

    fn dead_letter_stream(&self) -> stream::Config {
        stream::Config {
            name: format!("{}_dead_letters", self.ns()),
            description: Some(
                "agora: events a subscriber failed to handle max_deliver times".into(),
            ),
            subjects: vec![format!("{}.dead.>", self.ns())],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            max_age: DEAD_LETTER_MAX_AGE,
            max_bytes: EVENT_MAX_BYTES,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        }
    }

    fn consumer_config(&self, sub: &Subscription) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(sub.durable.clone()),
            description: Some(format!(
                "agora: the {} module's subscription to {} events",
                sub.handler.name(),
                sub.source
            )),
            filter_subject: format!("{}.events.{}.>", self.ns(), sub.source),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            // Dead-lettering is ours (after `max_deliver`), so the server never drops one.
            max_deliver: -1,
            // One message in flight: per-stream order, even across redeliveries.
            max_ack_pending: 1,
            ..Default::default()
        }
    }

    async fn consumer(&self, sub: &Subscription) -> anyhow::Result<consumer::PullConsumer> {
        let stream = self
            .js
            .get_stream(&sub.stream)
            .await
            .with_context(|| format!("the stream {} is missing", sub.stream))?;
        stream
            .get_or_create_consumer(&sub.durable, self.consumer_config(sub))
            .await
            .with_context(|| format!("failed to create the consumer {}", sub.durable))
    }

    /// Pull and handle until cancelled, recreating the pull after an outage.
    async fn run_subscription(self: Arc<Self>, sub: Arc<Subscription>, token: CancellationToken) {
        let mut failures = 0u32;
        loop {
            match self.consume(&sub, &token).await {
                Ok(()) => return,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(consumer = %sub.durable, stream = %sub.stream, error = %format!("{e:#}"),
                        "event consumer interrupted; resuming");
                }
            }
            let wait = crate::outbox::backoff(
                failures,
                Duration::from_millis(250),
                Duration::from_secs(5),
            );
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn consume(&self, sub: &Subscription, token: &CancellationToken) -> anyhow::Result<()> {
        let consumer = self.consumer(sub).await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(16)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .context("failed to start pulling")?;
        loop {
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                next = messages.next() => match next {
                    None => anyhow::bail!("the pull ended"),
                    Some(Err(e)) => return Err(anyhow::Error::new(e).context("pulling failed")),
                    Some(Ok(message)) => self.deliver(sub, message).await,
                },
            }
        }
    }

    async fn deliver(&self, sub: &Subscription, message: jetstream::Message) {
        let delivered = message
            .info()
            .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let handler = &sub.handler;
        let event: EventEnvelope = match serde_json::from_slice(&message.payload) {
            Ok(e) => e,
            Err(e) => {
                let error = format!("unreadable envelope: {e}");
                self.dead_letter(sub, &message, "unreadable", delivered, &error)
                    .await;
                return;
            }
        };
        if !handler.handles(&event.event_type) {
            if let Err(e) = message.ack().await {
                tracing::debug!(error = %e, "failed to acknowledge a skipped event");
            }
            return;
        }
        if delivered > 1 {
            count(REDELIVERED, handler.name(), &event.event_type);
        }
        match handler.handle(&event).await {
            Ok(()) => {
                count(CONSUMED, handler.name(), &event.event_type);
                if let Err(e) = message.ack().await {
                    // Delivered again after the ack wait; the inbox makes that harmless.
                    tracing::warn!(event_id = %event.id, error = %e, "failed to acknowledge an event");
                }
            }
            Err(e) if delivered >= self.config.policy.max_deliver => {
                let error = format!("{e:#}");
                self.dead_letter(sub, &message, &event.event_type, delivered, &error)
                    .await;
            }
            Err(e) => {
                let delay = self.config.policy.backoff(delivered);
                tracing::warn!(handler = handler.name(), event_id = %event.id, event_type = %event.event_type,
                    delivered, retry_in_ms = delay.as_millis() as u64, error = %format!("{e:#}"),
                    "event handler failed; it will be delivered again");
                if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::debug!(error = %e, "failed to nak an event; the ack wait redelivers it");
                }
            }
        }
    }

    /// Park the message on the dead-letter subject, then stop its redelivery.
    /// When the dead-letter publish fails, the message is delivered again later.
    async fn dead_letter(
        &self,
        sub: &Subscription,
        message: &jetstream::Message,
        event_type: &str,
        delivered: u32,
        error: &str,
    ) {
        let handler = sub.handler.name();
        let subject = format!("{}.dead.{handler}.{event_type}", self.ns());
        let (stream_seq, original) = message
            .info()
            .map(|i| (i.stream_sequence, i.stream.to_owned()))
            .unwrap_or_default();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{original}-{stream_seq}-{handler}").as_str(),
        );
        headers.insert("Agora-Original-Subject", message.subject.as_str());
        headers.insert("Agora-Deliveries", delivered.to_string().as_str());
        let error_header: String = error
            .chars()
            .filter(|c| !c.is_control())
            .take(500)
            .collect();
        headers.insert("Agora-Error", error_header.as_str());
        let published = async {
            self.js
                .publish_with_headers(subject.clone(), headers, message.payload.clone())
                .await?
                .await?;
            Ok::<_, async_nats::Error>(())
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, published).await {
            Ok(Ok(())) => {
                tracing::error!(handler, event_type, delivered, subject = %subject, error,
                    "event dead-lettered after failed deliveries");
                count(DEAD_LETTERED, handler, event_type);
                if let Err(e) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "failed to end a dead-lettered event's redelivery");
                }
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::warn!(handler, event_type, error = %why, "failed to dead-letter an event; it will be delivered again");
                let _ = message
                    .ack_with(AckKind::Nak(Some(self.config.policy.retry_base)))
                    .await;
            }
        }
    }

    /// Every few seconds: pending messages per consumer, and the connection.
    async fn watch(self: Arc<Self>, token: CancellationToken) {
        loop {
            let connected =
                self.client.connection_state() == async_nats::connection::State::Connected;
            metrics::gauge!("agora_bus_connected").set(if connected { 1.0 } else { 0.0 });
            let subs: Vec<Arc<Subscription>> = match self.subscriptions.lock() {
                Ok(s) => s.clone(),
                Err(p) => p.into_inner().clone(),
            };
            for sub in subs {
                if !connected {
                    break;
                }
                let info = async {
                    self.js
                        .get_stream(&sub.stream)
                        .await?
                        .consumer_info(&sub.durable)
                        .await
                        .map_err(async_nats::Error::from)
                };
                if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(2), info).await {
                    let pending = info.num_pending as f64 + info.num_ack_pending as f64;
                    metrics::gauge!("agora_bus_consumer_pending", "consumer" => format!("{}@{}", sub.handler.name(), sub.source))
                        .set(pending);
                }
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}

#[async_trait]
impl EventBus for JetStreamBus {
    #[tracing::instrument(skip_all, fields(event_id = %event.id, event_type = %event.event_type))]
    async fn publish(&self, event: &EventEnvelope) -> Result<(), PublishError> {
        let under_source = event
            .event_type
            .strip_prefix(event.source.as_str())
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1);
        if !under_source || !valid_name(&event.source) {
            return Err(PublishError::Invalid(format!(
                "event type `{}` is not under its source `{}`",
                event.event_type, event.source
            )));
        }
        // Disconnected: fail at once (the row waits in the outbox) rather
        // than stall the relay until the ack time-out.
        let state = self.inner.client.connection_state();
        if state != async_nats::connection::State::Connected {
            return Err(PublishError::Unavailable(anyhow::anyhow!(
                "NATS at {} is not connected ({state})",
                self.inner.url
            )));
        }
        let subject = format!("{}.events.{}", self.inner.ns(), event.event_type);
        let payload = serde_json::to_vec(event)
            .map_err(|e| PublishError::Invalid(format!("unserialisable envelope: {e}")))?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(event.id.to_string());
        let acked = async {
            let ack = self.inner.js.send_publish(subject, publish).await?;
            ack.await?;
            Ok::<_, async_nats::Error>(())
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, acked).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PublishError::Unavailable(anyhow::anyhow!(
                "JetStream did not store the event: {e}"
            ))),
            Err(_) => Err(PublishError::Unavailable(anyhow::anyhow!(
                "JetStream did not acknowledge the event within {} s",
                PUBLISH_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn subscribe(&self, handler: Arc<dyn EventHandler>) -> anyhow::Result<()> {
        anyhow::ensure!(
            valid_name(handler.name()),
            "handler name `{}` cannot name a NATS consumer",
            handler.name()
        );
        anyhow::ensure!(
            !handler.sources().is_empty(),
            "handler `{}` names no sources",
            handler.name()
        );
        super::register_consumer(handler.name());
        for source in handler.sources() {
            anyhow::ensure!(valid_name(source), "source `{source}` cannot name a stream");
            let stream = self.inner.stream_name(source);
            if self.inner.js.get_stream(&stream).await.is_err() {
                self.inner
                    .js
                    .get_or_create_stream(self.inner.event_stream(source))
                    .await
                    .with_context(|| format!("failed to create the stream {stream}"))?;
            }
            let sub = Arc::new(Subscription {
                handler: handler.clone(),
                source: (*source).to_owned(),
                stream,
                durable: format!("{}_{}", self.inner.ns(), handler.name()),
            });
            self.inner.consumer(&sub).await?;
            match self.inner.subscriptions.lock() {
                Ok(mut s) => s.push(sub),
                Err(p) => p.into_inner().push(sub),
            }
        }
        Ok(())
    }

    fn background_tasks(&self) -> Vec<BackgroundTask> {
        let subs: Vec<Arc<Subscription>> = match self.inner.subscriptions.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut tasks: Vec<BackgroundTask> = subs
            .into_iter()
            .map(|sub| {
                let bus = self.inner.clone();
                BackgroundTask::new(format!("bus-consumer-{}", sub.durable), move |token| {
                    bus.run_subscription(sub, token)
                })
            })
            .collect();
        let bus = self.inner.clone();
        tasks.push(BackgroundTask::new("bus-watch", move |token| {
            bus.watch(token)
        }));
        tasks
    }

    async fn ready(&self) -> anyhow::Result<()> {
        let state = self.inner.client.connection_state();
        anyhow::ensure!(
            state == async_nats::connection::State::Connected,
            "NATS at {} is not connected ({state})",
            self.inner.url
        );
        // A round trip to JetStream's account info (parsed loosely: servers
        // of different versions answer different fields).
        let info = self
            .inner
            .js
            .request::<_, _, jetstream::response::Response<serde_json::Value>>("INFO", &());
        match tokio::time::timeout(Duration::from_secs(2), info).await {
            Ok(Ok(jetstream::response::Response::Ok(_))) => Ok(()),
            Ok(Ok(jetstream::response::Response::Err { error })) => {
                anyhow::bail!("NATS JetStream at {} refused: {error}", self.inner.url)
            }
            Ok(Err(e)) => anyhow::bail!("NATS JetStream at {} failed: {e}", self.inner.url),
            Err(_) => anyhow::bail!(
                "NATS JetStream at {} did not answer in time",
                self.inner.url
            ),
        }
    }

    fn delivery_policy(&self) -> DeliveryPolicy {
        self.inner.config.policy
    }

    fn kind(&self) -> &'static str {
        "jetstream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_nats_tokens_are_refused() {
        assert!(valid_name("agora"));
        assert!(valid_name("agora_test-1"));
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact("nats://agora:s3cret@n1:4222,nats://n2:4222"),
            "nats://agora:***@n1:4222,nats://n2:4222"
        );
    }
}
