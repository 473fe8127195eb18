//! Integration tests of the notification module: the store contract on SQLite
//! and PostgreSQL, events through the bus to delivery, the HTTP endpoints, and
//! e-mail through a real SMTP server (aiosmtpd). One binary, one module per subject.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod contract;
mod events;
mod fixtures;
mod helpers;
mod http;
mod settings;
mod smtp;
mod webhook;
