//! The `sms` and `push` channels: a generic JSON webhook with a bearer key and
//! a time-out. Body: `{"notification_id","channel","to","template","subject","text"}`.
//! 2xx = delivered; 408, 429, 5xx, time-outs and connection errors are
//! transient; every other 4xx is permanent.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::domain::ports::{ChannelSender, DeliveryError, OutgoingMessage};

/// A provider reached over HTTP.
pub struct WebhookChannel {
    client: reqwest::Client,
    url: String,
    api_key: SecretString,
}

#[derive(Serialize)]
struct Body<'a> {
    notification_id: String,
    channel: &'a str,
    to: &'a str,
    template: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    text: &'a str,
}

impl WebhookChannel {
    /// # Errors
    /// A URL that is not http(s), or a client that cannot be built.
    pub fn new(url: &str, api_key: SecretString, timeout: Duration) -> anyhow::Result<Self> {
        let url = url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!("the webhook URL must start with http:// or https://");
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .context("failed to build the webhook client")?;
        Ok(Self {
            client,
            url: url.to_owned(),
            api_key,
        })
    }
}

#[async_trait]
impl ChannelSender for WebhookChannel {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    async fn send(&self, m: &OutgoingMessage) -> Result<(), DeliveryError> {
        let body = Body {
            notification_id: m.notification_id.to_string(),
            channel: m.channel.as_str(),
            to: &m.recipient,
            template: &m.template,
            subject: m.subject.as_deref(),
            text: &m.text,
        };
        let mut req = self
            .client
            .post(&self.url)
            .header("Idempotency-Key", m.notification_id.to_string())
            .header("X-Request-Id", &m.correlation_id)
            .json(&body);
        let key = self.api_key.expose_secret();
        if !key.is_empty() {
            req = req.bearer_auth(key);
        }
        let res = req.send().await.map_err(|e| {
            DeliveryError::Transient(if e.is_timeout() {
                "the provider did not answer in time".to_owned()
            } else {
                format!("could not reach the provider: {}", without_url(&e))
            })
        })?;
        let status = res.status();
        if status.is_success() {
            return Ok(());
        }
        let text: String = res
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        let msg = format!("the provider answered {status}: {text}");
        if status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
        {
            Err(DeliveryError::Transient(msg))
        } else {
            Err(DeliveryError::Permanent(msg))
        }
    }
}

/// reqwest errors may carry the URL (and its query's secrets): drop it.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<provider>");
    }
    s
}
