//! Extractor configuration that makes actix's own errors problem+json:
//! malformed JSON → 400, JSON of the wrong shape → 422, wrong content type →
//! 415, body too large → 413, bad path → 404, bad query → 422.

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::web;

use crate::problem::Problem;

/// Map a JSON extractor failure to a problem.
pub fn json_error(err: &JsonPayloadError) -> Problem {
    match err {
        JsonPayloadError::OverflowKnownLength { limit, .. }
        | JsonPayloadError::Overflow { limit } => Problem::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("the request body exceeds the limit of {limit} bytes"),
        ),
        JsonPayloadError::ContentType => Problem::new(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "the request body must be sent with Content-Type: application/json",
        ),
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            let mut p = Problem::new(
                actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Validation failed",
                format!("the JSON body has the wrong shape: {e}"),
            );
            p.errors.insert(json_field_of(e), vec![e.to_string()]);
            p
        }
        JsonPayloadError::Deserialize(e) => Problem::bad_request(format!("malformed JSON: {e}")),
        other => Problem::bad_request(format!("could not read the request body: {other}")),
    }
}

/// Best-effort field name from a serde message such as "missing field `sku`".
/// Only messages that name a field are trusted: in others the backticks quote
/// the rejected value ("invalid value: integer `-1`", "unknown variant `x`").
fn json_field_of(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| msg.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next())
        .filter(|f| !f.is_empty() && f.len() < 64)
        .unwrap_or("body")
        .to_owned()
}

/// The JSON extractor configuration every module uses.
pub fn json_config(limit_bytes: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit_bytes)
        .error_handler(|err, _req| json_error(&err).into())
}

/// Path segments that do not parse answer 404: the resource does not exist.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err: PathError, _req| {
        Problem::not_found(format!("no such resource ({err})")).into()
    })
}

/// Query strings that do not parse answer 422.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err: QueryPayloadError, _req| {
        let mut p = Problem::new(
            actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Validation failed",
            format!("invalid query string: {err}"),
        );
        p.errors.insert("query".to_owned(), vec![err.to_string()]);
        p.into()
    })
}

/// Raw-body limit for handlers that read bytes (413 beyond it).
pub fn payload_config(limit_bytes: usize) -> web::PayloadConfig {
    web::PayloadConfig::new(limit_bytes)
}
