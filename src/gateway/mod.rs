//! The gateway layer: in-process actix middleware in front of every module.
//!
//! Outermost first: [`observe`] (request id, span, access log, metrics) →
//! [`errors::problems`] (every error body is problem+json; panics become 500) →
//! on `/api/v1` only: [`auth::authenticate`] → [`rate_limit::limit`] → the
//! module's handler.

pub mod auth;
pub mod errors;
pub mod observe;
pub mod rate_limit;
