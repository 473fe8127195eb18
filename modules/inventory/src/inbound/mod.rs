//! What drives the inventory module: HTTP requests.

pub mod http;
