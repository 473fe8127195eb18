//! Call context: who calls and under which correlation id.
//!
//! Every module `api` method takes a [`CallContext`], so in-process callers and
//! HTTP callers meet the same role rules and carry the same correlation id into
//! the events they cause.

use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload};

use crate::principal::Principal;
use crate::problem::Problem;

/// The request id the gateway assigned (from `X-Request-Id`, `traceparent` or new).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromRequest for RequestId {
    type Error = Problem;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let id = req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(uuid::Uuid::now_v7().to_string()));
        ready(Ok(id))
    }
}

/// Principal plus correlation id; what every module operation is called with.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub principal: Principal,
    pub correlation_id: String,
}

impl CallContext {
    pub fn new(principal: Principal, correlation_id: impl Into<String>) -> Self {
        Self {
            principal,
            correlation_id: correlation_id.into(),
        }
    }

    /// A `service` context for calls the host or a background task makes.
    pub fn service(name: &str, correlation_id: impl Into<String>) -> Self {
        Self::new(Principal::service(name), correlation_id)
    }
}

impl FromRequest for CallContext {
    type Error = Problem;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let principal = match Principal::from_request(req, payload).into_inner() {
            Ok(p) => p,
            Err(e) => return ready(Err(e)),
        };
        let correlation_id = match RequestId::from_request(req, payload).into_inner() {
            Ok(id) => id.0,
            Err(e) => return ready(Err(e)),
        };
        ready(Ok(CallContext::new(principal, correlation_id)))
    }
}
