//! The order domain: parsed models, the ports the module owns, and the service
//! that runs the order saga.

pub mod models;
pub mod ports;
pub mod service;
