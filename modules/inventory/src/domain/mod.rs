//! The inventory domain: parsed types, the ports it needs, the rules of every
//! stock write (`stock`, which both stores apply) and the service that applies
//! the role rules.

pub mod models;
pub mod ports;
pub mod service;
pub mod stock;
