//! The notification domain: parsed types, ports, templates and the service.

pub mod models;
pub mod ports;
pub mod service;
pub mod templates;
