//! The `log` channel: writes the rendered message as one structured log line.
//! The default for every channel that has no provider configured, so
//! `cargo run` works with nothing installed.

use async_trait::async_trait;

use crate::domain::ports::{ChannelSender, DeliveryError, OutgoingMessage};

/// Delivers by logging (target `agora_notification::delivery`, level info).
#[derive(Debug, Default, Clone)]
pub struct LogChannel;

#[async_trait]
impl ChannelSender for LogChannel {
    fn kind(&self) -> &'static str {
        "log"
    }

    async fn send(&self, m: &OutgoingMessage) -> Result<(), DeliveryError> {
        tracing::info!(
            target: "agora_notification::delivery",
            notification_id = %m.notification_id,
            channel = %m.channel,
            template = %m.template,
            recipient = %m.recipient,
            subject = m.subject.as_deref().unwrap_or(""),
            body = %m.text,
            correlation_id = %m.correlation_id,
            "notification delivered to the log channel"
        );
        Ok(())
    }
}
