//! The payment domain: parsed types, the ports it drives, and the service.

pub mod models;
pub mod ports;
pub mod service;
