//! What drives the order module: HTTP, and the recovery worker.

pub mod http;
pub mod worker;
