//! What drives the notification module: HTTP requests and integration events.

pub mod events;
pub mod http;
