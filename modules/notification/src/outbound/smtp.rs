//! The `email` channel over SMTP (lettre). The URL picks the security:
//! `smtp://host:port` is plain SMTP (local servers), `smtp://host?tls=required`
//! upgrades with STARTTLS, `smtps://host` is TLS from the start; credentials go
//! in the URL's user info. SMTP 5xx answers are permanent, 4xx and network
//! errors transient.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::domain::ports::{ChannelSender, DeliveryError, OutgoingMessage};

/// Sends e-mail through one SMTP server.
pub struct SmtpChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpChannel {
    /// # Errors
    /// An URL lettre does not understand, or a `from` that is not a mailbox.
    pub fn new(url: &str, from: &str, timeout: Duration) -> anyhow::Result<Self> {
        let from: Mailbox = from
            .parse()
            .context("the sender is not a mailbox such as `agora <no-reply@example.com>`")?;
        // Building the pooled transport spawns its reaper: call from within Tokio.
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.trim())
            .context("the SMTP URL is not valid (smtp://host:port, smtps://host, smtp://host?tls=required)")?
            .timeout(Some(timeout))
            .build();
        Ok(Self { transport, from })
    }
}

#[async_trait]
impl ChannelSender for SmtpChannel {
    fn kind(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, m: &OutgoingMessage) -> Result<(), DeliveryError> {
        let to: Mailbox = m.recipient.parse().map_err(|e| {
            DeliveryError::Permanent(format!("not a deliverable e-mail address: {e}"))
        })?;
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(m.subject.clone().unwrap_or_default());
        let message = match &m.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                m.text.clone(),
                html.clone(),
            )),
            None => builder.body(m.text.clone()),
        }
        .map_err(|e| DeliveryError::Permanent(format!("could not build the e-mail: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(DeliveryError::Permanent(format!(
                "the SMTP server refused the message: {e}"
            ))),
            Err(e) => Err(DeliveryError::Transient(format!(
                "SMTP delivery failed: {e}"
            ))),
        }
    }
}
