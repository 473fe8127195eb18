//! The adapters the notification suites drive directly (feature `testing`):
//! the module keeps `inbound` and `outbound` to itself, as every module does.

pub use crate::outbound::sql::{migrate, store_for};
pub use crate::outbound::webhook::WebhookChannel;
