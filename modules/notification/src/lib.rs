//! The notification module: tells customers what happened to their orders, from integration events.
//!
//! Its public face is [`NotificationModule`] (routes, OpenAPI fragment, background
//! tasks, readiness) and [`openapi`]. It owns its database (SQLite or
//! PostgreSQL) and talks to other modules only through integration events: it
//! consumes `order.*.v1` and `payment.refunded.v1` (see docs/events.md), stores
//! one notification per channel, and a worker delivers them through the
//! channel ports (SMTP, JSON webhooks, the log) with retries.

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::db::SqlModuleBase;
use agora_kernel::{BackgroundTask, InvalidSetting, Module, ModuleInfo, Wiring};
use anyhow::Context;
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use utoipa::OpenApi;

pub mod domain;
pub(crate) mod inbound;
pub(crate) mod outbound;
/// The adapters the module's own test suites drive directly.
#[cfg(feature = "testing")]
pub mod testing;

pub use domain::service::{Channels, DeliveryPolicy, NotificationService};

fn empty_secret() -> SecretString {
    SecretString::from(String::new())
}

fn default_max_attempts() -> u32 {
    8
}

fn default_retry_base_ms() -> u64 {
    2000
}

fn default_retry_max_ms() -> u64 {
    3_600_000
}

fn default_poll_interval_ms() -> u64 {
    500
}

fn default_batch_size() -> u32 {
    32
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_from() -> String {
    "agora <no-reply@agora.localhost>".to_owned()
}

/// `[notification.smtp]`: e-mail goes to the log channel while `url` is empty.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SmtpSettings {
    /// `smtp://host:port` (plain, local servers), `smtp://host:587?tls=required`
    /// (STARTTLS) or `smtps://host` (TLS); credentials as `smtp://user:pass@host`.
    #[serde(default = "empty_secret")]
    pub url: SecretString,
    /// The sender mailbox.
    #[serde(default = "default_from")]
    pub from: String,
    /// Time-out of one SMTP conversation.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            url: empty_secret(),
            from: default_from(),
            timeout_ms: default_timeout_ms(),
        }
    }
}

/// `[notification.sms]` / `[notification.push]`: a JSON webhook; the log
/// channel while `url` is empty.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct WebhookSettings {
    #[serde(default)]
    pub url: String,
    /// Sent as `Authorization: Bearer <api_key>` when not empty.
    #[serde(default = "empty_secret")]
    pub api_key: SecretString,
    /// Time-out of one call.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            api_key: empty_secret(),
            timeout_ms: default_timeout_ms(),
        }
    }
}

/// The module's settings: the `[notification]` section, `AGORA__NOTIFICATION__*` variables.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Settings {
    /// Empty = the embedded SQLite default (`sqlite://<data_dir>/notification.db`); the
    /// host resolves it and passes the URL to [`NotificationModule::build`].
    pub database_url: SecretString,
    /// Delivery attempts before a notification is `dead` (AGORA__NOTIFICATION__MAX_ATTEMPTS).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Back-off before the second attempt; doubles per attempt, with jitter.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Longest back-off.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// How often the worker looks for due notifications.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Notifications delivered concurrently.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    #[serde(default)]
    pub smtp: SmtpSettings,
    #[serde(default)]
    pub sms: WebhookSettings,
    #[serde(default)]
    pub push: WebhookSettings,
}

impl Settings {
    /// Settings for a given URL with every other key at its default (tests, tools).
    pub fn with_url(url: &str) -> Self {
        Self {
            database_url: url.to_owned().into(),
            max_attempts: default_max_attempts(),
            retry_base_ms: default_retry_base_ms(),
            retry_max_ms: default_retry_max_ms(),
            poll_interval_ms: default_poll_interval_ms(),
            batch_size: default_batch_size(),
            smtp: SmtpSettings::default(),
            sms: WebhookSettings::default(),
            push: WebhookSettings::default(),
        }
    }

    /// Checks serde cannot express, naming the key as `notification.<name>`.
    ///
    /// # Errors
    /// The first invalid key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        agora_kernel::settings::at_least_one(&[
            ("notification.max_attempts", u64::from(self.max_attempts)),
            ("notification.retry_base_ms", self.retry_base_ms),
            ("notification.retry_max_ms", self.retry_max_ms),
            ("notification.poll_interval_ms", self.poll_interval_ms),
            ("notification.batch_size", u64::from(self.batch_size)),
            ("notification.smtp.timeout_ms", self.smtp.timeout_ms),
            ("notification.sms.timeout_ms", self.sms.timeout_ms),
            ("notification.push.timeout_ms", self.push.timeout_ms),
        ])?;
        for (key, url) in [
            ("notification.sms.url", &self.sms.url),
            ("notification.push.url", &self.push.url),
        ] {
            let url = url.trim();
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(InvalidSetting::new(key, "must be an http(s) URL or empty"));
            }
        }
        let smtp = self.smtp.url.expose_secret().trim();
        if !(smtp.is_empty() || smtp.starts_with("smtp://") || smtp.starts_with("smtps://")) {
            return Err(InvalidSetting::new(
                "notification.smtp.url",
                "must be smtp://host:port, smtps://host or empty",
            ));
        }
        Ok(())
    }

    /// The retry and worker policy these settings describe.
    pub fn policy(&self) -> DeliveryPolicy {
        DeliveryPolicy {
            max_attempts: self.max_attempts,
            retry_base: Duration::from_millis(self.retry_base_ms),
            retry_max: Duration::from_millis(self.retry_max_ms),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            batch_size: self.batch_size,
            ..DeliveryPolicy::default()
        }
    }

    /// The channel senders: SMTP and webhooks where configured, else the log.
    ///
    /// # Errors
    /// An SMTP URL or sender lettre refuses, a webhook client that cannot be built.
    pub fn channels(&self) -> anyhow::Result<Channels> {
        let log: Arc<dyn domain::ports::ChannelSender> =
            Arc::new(outbound::log_channel::LogChannel);
        let smtp_url = self.smtp.url.expose_secret().trim();
        let email: Arc<dyn domain::ports::ChannelSender> = if smtp_url.is_empty() {
            log.clone()
        } else {
            Arc::new(
                outbound::smtp::SmtpChannel::new(
                    smtp_url,
                    &self.smtp.from,
                    Duration::from_millis(self.smtp.timeout_ms),
                )
                .map_err(|e| {
                    anyhow::anyhow!(
                        "invalid setting AGORA__NOTIFICATION__SMTP__URL or __FROM: {e:#}"
                    )
                })?,
            )
        };
        let webhook = |s: &WebhookSettings,
                       env: &str|
         -> anyhow::Result<Arc<dyn domain::ports::ChannelSender>> {
            if s.url.trim().is_empty() {
                return Ok(log.clone());
            }
            Ok(Arc::new(
                outbound::webhook::WebhookChannel::new(
                    &s.url,
                    s.api_key.clone(),
                    Duration::from_millis(s.timeout_ms),
                )
                .map_err(|e| {
                    anyhow::anyhow!("invalid setting AGORA__NOTIFICATION__{env}: {e:#}")
                })?,
            ))
        };
        Ok(Channels {
            email,
            sms: webhook(&self.sms, "SMS__URL")?,
            push: webhook(&self.push, "PUSH__URL")?,
        })
    }
}

/// The module's name: metric label, outbox source, event prefix.
pub const NAME: &str = "notification";

/// Path prefixes under `/api/v1` this module serves.
pub const ROUTES: &[&str] = &["/notifications"];

/// The notification module, wired to its own database.
pub struct NotificationModule {
    base: SqlModuleBase,
    service: Arc<NotificationService>,
}

impl NotificationModule {
    /// Connect the module's database (creating its tables), build its channels,
    /// and subscribe its event handler to `bus`.
    ///
    /// # Errors
    /// Invalid settings, an unreachable database, a failed migration.
    pub async fn build(settings: &Settings, wiring: Wiring) -> anyhow::Result<Self> {
        settings.validate()?;
        let channels = settings.channels()?;
        Self::build_with_channels(settings, wiring, channels).await
    }

    /// [`NotificationModule::build`] with the given channel senders (tests, tools).
    ///
    /// # Errors
    /// See [`NotificationModule::build`].
    pub async fn build_with_channels(
        settings: &Settings,
        wiring: Wiring,
        channels: Channels,
    ) -> anyhow::Result<Self> {
        settings.validate()?;
        let base = SqlModuleBase::connect(NAME, &wiring).await?;
        outbound::sql::migrate(&base.db).await?;
        let store = outbound::sql::store_for(&base.db);
        let service = Arc::new(
            NotificationService::new(store, channels, settings.policy())?.with_clock(wiring.clock),
        );
        wiring
            .bus
            .subscribe(Arc::new(inbound::events::NotificationEvents::new(
                service.clone(),
            )))
            .await
            .context("failed to subscribe to the order and payment events")?;
        Ok(Self { base, service })
    }

    /// The service behind the routes, the handler and the worker.
    pub fn service(&self) -> Arc<NotificationService> {
        self.service.clone()
    }
}

/// The module's OpenAPI fragment.
pub fn openapi() -> utoipa::openapi::OpenApi {
    inbound::http::NotificationDoc::openapi()
}

#[async_trait]
impl Module for NotificationModule {
    fn info(&self) -> ModuleInfo {
        self.base.info(ROUTES)
    }

    fn configure(&self, cfg: &mut actix_web::web::ServiceConfig) {
        inbound::http::routes(cfg, self.service.clone());
    }

    fn background_tasks(&self) -> Vec<BackgroundTask> {
        let service = self.service.clone();
        vec![
            self.base.relay_task(),
            self.base.inbox_purge_task(),
            BackgroundTask::new("notification-delivery", move |token| {
                service.run_worker(token)
            }),
        ]
    }

    async fn ready(&self) -> anyhow::Result<()> {
        self.base.ready().await
    }

    async fn shutdown(&self) {
        self.base.db.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: serde_json::Value) -> Settings {
        let mut v = serde_json::json!({"database_url": ""});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The kinds of sender `s` picks for e-mail, SMS and push.
    fn kinds(s: &Settings) -> [&'static str; 3] {
        let channels = s.channels().unwrap_or_else(|e| panic!("{e}"));
        [
            channels.email.kind(),
            channels.sms.kind(),
            channels.push.kind(),
        ]
    }

    #[tokio::test]
    async fn every_key_has_a_default_and_empty_urls_mean_the_log_channel() {
        let s = settings(serde_json::json!({}));
        assert_eq!(s.max_attempts, 8);
        assert!(s.validate().is_ok());
        assert_eq!(kinds(&s), ["log", "log", "log"]);
    }

    #[tokio::test]
    async fn configured_urls_pick_smtp_and_webhooks() {
        let s = settings(serde_json::json!({
            "smtp": {"url": "smtp://127.0.0.1:2525", "from": "shop <shop@example.com>"},
            "sms": {"url": "http://127.0.0.1:9/sms", "api_key": "k"},
        }));
        assert_eq!(kinds(&s), ["smtp", "webhook", "log"]);
    }

    #[tokio::test]
    async fn bad_settings_name_the_variable_to_fix() {
        let cases = [
            (
                serde_json::json!({"max_attempts": 0}),
                "AGORA__NOTIFICATION__MAX_ATTEMPTS",
            ),
            (
                serde_json::json!({"smtp": {"url": "http://mail"}}),
                "AGORA__NOTIFICATION__SMTP__URL",
            ),
            (
                serde_json::json!({"push": {"url": "ftp://x"}}),
                "AGORA__NOTIFICATION__PUSH__URL",
            ),
        ];
        for (extra, name) in cases {
            let err = settings(extra).validate().err().map(|e| e.to_string());
            assert!(err.as_deref().is_some_and(|e| e.contains(name)), "{err:?}");
        }
        let bad_from = settings(
            serde_json::json!({"smtp": {"url": "smtp://127.0.0.1:25", "from": "not a mailbox"}}),
        );
        let err = bad_from.channels().err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("AGORA__NOTIFICATION__SMTP__")),
            "{err:?}"
        );
    }
}
