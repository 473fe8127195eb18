//! What the notification module drives: its database (SQLite or PostgreSQL)
//! and the delivery channels (SMTP, JSON webhooks, the log).

pub mod log_channel;
pub mod smtp;
pub mod sql;
pub mod webhook;
