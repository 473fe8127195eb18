//! RFC 9457 `application/problem+json`: the one error body agora ever returns.
//!
//! Every module's handlers answer `Result<_, Problem>`, each domain error
//! converting with its module's `impl From<…Error> for Problem` (the one path
//! from a domain error to HTTP); the gateway turns every other failure (404,
//! 405, 413, 415, panics) into one as well. 5xx bodies never carry internals:
//! [`Problem::unexpected`] logs the cause chain instead.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"type": "urn:agora:problem:validation", "title": "Validation failed", "status": 422, "detail": "1 field is invalid", "errors": {"quantity": ["must be between 1 and 1000"]}}))]
pub struct Problem {
    /// A URI identifying the problem type (`urn:agora:problem:<slug>`).
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, for a human.
    pub detail: String,
    /// Field → messages, present on validation failures (422).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, Vec<String>>,
    /// Extension members of a problem type (RFC 9457 §3.2), e.g. the
    /// `shortages` of `insufficient-stock`; each type documents its own.
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(ignore)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    #[schema(ignore)]
    retry_after_secs: Option<u64>,
    #[serde(skip)]
    #[schema(ignore)]
    www_authenticate: Option<String>,
}

impl Problem {
    /// A problem with a slug (`urn:agora:problem:<slug>`), a title and a detail.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            problem_type: format!("urn:agora:problem:{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: BTreeMap::new(),
            extensions: serde_json::Map::new(),
            retry_after_secs: None,
            www_authenticate: None,
        }
    }

    /// A generic problem for a status with no more specific type.
    pub fn for_status(status: StatusCode, detail: impl Into<String>) -> Self {
        let title = status.canonical_reason().unwrap_or("Error");
        let slug = title.to_ascii_lowercase().replace([' ', '\''], "-");
        Self::new(status, &slug, title, detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// 401 with a `WWW-Authenticate: Bearer` challenge.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let mut p = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            detail.clone(),
        );
        let escaped = detail.replace(['"', '\\'], "'");
        p.www_authenticate = Some(format!(
            "Bearer realm=\"agora\", error=\"invalid_token\", error_description=\"{escaped}\""
        ));
        p
    }

    /// 401 for a request that carried no credentials at all.
    pub fn missing_credentials() -> Self {
        let mut p = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            "this endpoint needs a bearer token in the Authorization header",
        );
        p.www_authenticate = Some("Bearer realm=\"agora\"".to_owned());
        p
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            "Precondition failed",
            detail,
        )
    }

    /// 422 listing every bad field.
    pub fn validation(errors: BTreeMap<String, Vec<String>>) -> Self {
        let n = errors.len();
        let detail = if n == 1 {
            "1 field is invalid".to_owned()
        } else {
            format!("{n} fields are invalid")
        };
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Validation failed",
            detail,
        );
        p.errors = errors;
        p
    }

    /// 422 for a single field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::default();
        errors.add(field, message);
        Self::validation(errors.into_map())
    }

    /// 429 with `Retry-After`.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        let mut p = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            format!("rate limit exceeded; retry in {retry_after_secs} s"),
        );
        p.retry_after_secs = Some(retry_after_secs);
        p
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut p = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        );
        p.retry_after_secs = Some(retry_after_secs);
        p
    }

    /// The answer to a failure the client did not cause, its cause logged
    /// (`module` names who failed): 503 with `Retry-After: 1` when a database
    /// had no connection free within its acquire timeout (overload: a retry
    /// shortly after may succeed), else 500. Neither detail carries internals.
    pub fn unexpected(cause: &anyhow::Error, module: &str) -> Self {
        if crate::db::is_pool_exhausted(cause) {
            tracing::warn!(error = %format!("{cause:#}"), module, "request refused: no database connection free");
            return Self::unavailable("the service is busy; retry shortly", 1);
        }
        tracing::error!(error = %format!("{cause:#}"), "{module} request failed");
        Self::internal()
    }

    /// 500. The detail never carries internals: the cause goes to the log.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "an unexpected error occurred; it has been logged",
        )
    }

    /// Add an extension member (documented by the problem type).
    pub fn with_extension(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(key.to_owned(), value);
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after_secs
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Render as an HTTP response.
    pub fn to_response(&self) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status_code());
        builder.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        if let Some(secs) = self.retry_after_secs {
            builder.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if let Some(v) = self
            .www_authenticate
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            builder.insert_header((header::WWW_AUTHENTICATE, v));
        }
        let body = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        builder.body(body)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.title, self.detail)
    }
}

impl std::error::Error for Problem {}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        Problem::status_code(self)
    }

    fn error_response(&self) -> HttpResponse {
        self.to_response()
    }
}

/// Collects field errors while parsing a request body into domain types.
#[derive(Debug, Default, Clone)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    /// Record the error of `result` under `field` and return its value, if any.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(field, e.to_string());
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_map(self) -> BTreeMap<String, Vec<String>> {
        self.0
    }

    /// `Ok(())` when nothing was recorded, else a 422 [`Problem`].
    pub fn into_result(self) -> Result<(), Problem> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Problem::validation(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validation_problem_lists_each_field() {
        let mut errors = FieldErrors::default();
        errors.add("items[0].quantity", "must be at least 1");
        errors.add("currency", "unknown currency");
        let p = errors
            .into_result()
            .err()
            .map(|p| serde_json::to_value(p).ok());
        let v = p.flatten().unwrap_or_default();
        assert_eq!(v["status"], 422);
        assert_eq!(v["type"], "urn:agora:problem:validation");
        assert_eq!(v["errors"]["currency"][0], "unknown currency");
        assert_eq!(v["detail"], "2 fields are invalid");
    }

    #[test]
    fn a_status_problem_has_a_slug_from_its_reason() {
        let p = Problem::for_status(StatusCode::METHOD_NOT_ALLOWED, "GET only");
        assert_eq!(p.problem_type, "urn:agora:problem:method-not-allowed");
        assert_eq!(p.title, "Method Not Allowed");
    }

    #[test]
    fn rendering_sets_the_problem_media_type_and_retry_after() {
        let r = Problem::too_many_requests(3).to_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            r.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some(PROBLEM_JSON)
        );
        assert_eq!(
            r.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("3")
        );
    }
}
