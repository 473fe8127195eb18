//! The inventory domain: parsed types, the ports it needs, and the service
//! that applies the role rules.

pub mod models;
pub mod ports;
pub mod service;
