//! What drives the payment module: its HTTP endpoints.

pub mod http;
