//! What the payment module drives: its SQL store (SQLite / PostgreSQL), the
//! payment providers (simulated, Stripe-compatible HTTP) and the circuit
//! breaker around them. Public so the crate's integration tests and benchmark
//! can build the pieces; other modules use only the `api` handle.

pub mod breaker;
pub mod http_provider;
pub mod simulated;
pub mod sql;
