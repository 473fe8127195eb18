//! Integration tests of the payment module: the store contract on SQLite and
//! PostgreSQL, the circuit breaker, the HTTP endpoints and the Stripe-compatible
//! HTTP provider against a local server. One binary, one module per subject.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod breaker;
mod contract;
mod helpers;
mod http_api;
mod http_provider;
mod localstripe;
mod settings;
