//! Extractor configuration that makes actix's own errors problem+json:
//! malformed JSON → 400, JSON of the wrong shape → 422, wrong content type →
//! 415, body too large → 413, bad path → 404, bad query → 422.
//!
//! Plus two extractors for requests whose body is optional: [`OptionalJson`]
//! (no body, or a JSON body that must parse) and [`NoBody`] (no body, or `{}`).
//! Neither ever swallows a bad body: a handler only runs on good input.

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;
use serde::de::DeserializeOwned;

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
/// Also used for query strings, whose messages read the same.
/// Only messages that name a field are trusted: in others the backticks quote
/// the rejected value ("invalid value: integer `-1`", "unknown variant `x`").
fn json_field_of(e: &serde_json::Error) -> String {
    field_of(&e.to_string(), "body")
}

fn field_of(msg: &str, fallback: &str) -> String {
    ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| msg.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next())
        .filter(|f| !f.is_empty() && f.len() < 64)
        .unwrap_or(fallback)
        .to_owned()
}

/// A timestamp in a response body, exactly as chrono's own `Serialize`
/// writes it (RFC 3339 in UTC with `Z`, and 0, 3, 6 or 9 fraction digits as
/// needed), but formatted into one string first: chrono's goes through
/// `collect_str`, which for JSON runs each small piece through serde_json's
/// escaping writer: a product read's two timestamps took 4.7k instructions,
/// and the read costs 2.0k fewer this way (`bench/instructions`). Use as
/// `#[serde(serialize_with = "agora_kernel::http::rfc3339")]`.
///
/// The digits are written by hand into a stack buffer: chrono's
/// `to_rfc3339_opts` goes through `fmt` and allocates, ~1k instructions a
/// timestamp. Years outside 0–9999 and leap seconds are left to chrono.
///
/// # Errors
/// The serializer's.
pub fn rfc3339<S: serde::Serializer>(
    at: &chrono::DateTime<chrono::Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut buf = [0; 30];
    match rfc3339_into(at, &mut buf) {
        Some(text) => serializer.serialize_str(text),
        None => serializer.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
    }
}

/// `at` as `to_rfc3339_opts(AutoSi, true)` writes it, into `buf`; `None`
/// for what chrono writes differently (a year outside 0–9999, a leap second).
fn rfc3339_into<'b>(at: &chrono::DateTime<chrono::Utc>, buf: &'b mut [u8; 30]) -> Option<&'b str> {
    use chrono::{Datelike, Timelike};
    let year = u32::try_from(at.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    // The fraction: none, or 3, 6 or 9 digits, the fewest that hold it.
    let (fraction, fraction_digits) = match nanos {
        0 => (0, 0),
        n if n.is_multiple_of(1_000_000) => (n / 1_000_000, 3),
        n if n.is_multiple_of(1_000) => (n / 1_000, 6),
        n => (n, 9),
    };
    let mut len = 0;
    let mut put = |before: u8, value: u32, digits: u32| {
        if before != 0 {
            buf[len] = before;
            len += 1;
        }
        for place in (0..digits).rev() {
            buf[len] = b'0' + (value / 10u32.pow(place) % 10) as u8;
            len += 1;
        }
    };
    put(0, year, 4);
    put(b'-', at.month(), 2);
    put(b'-', at.day(), 2);
    put(b'T', at.hour(), 2);
    put(b':', at.minute(), 2);
    put(b':', at.second(), 2);
    if fraction_digits > 0 {
        put(b'.', fraction, fraction_digits);
    }
    put(b'Z', 0, 0);
    std::str::from_utf8(&buf[..len]).ok()
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

/// Query strings that do not parse (an unknown parameter, a repeated one)
/// answer 422, listed under the parameter's name when serde names it.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err: QueryPayloadError, _req| {
        let mut p = Problem::new(
            actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Validation failed",
            format!("invalid query string: {err}"),
        );
        let why = match &err {
            QueryPayloadError::Deserialize(e) => e.to_string(),
            other => other.to_string(),
        };
        p.errors.insert(field_of(&why, "query"), vec![why]);
        p.into()
    })
}

/// Raw-body limit for handlers that read bytes (413 beyond it).
pub fn payload_config(limit_bytes: usize) -> web::PayloadConfig {
    web::PayloadConfig::new(limit_bytes)
}

/// Every extractor configuration an agora app uses, for
/// `App::configure`: JSON bodies, paths, query strings and raw bodies, each
/// answering problem+json, bodies up to `limit_bytes`. The API and admin
/// servers and the modules' HTTP suites all start from it.
pub fn extractors(limit_bytes: usize) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(json_config(limit_bytes))
            .app_data(path_config())
            .app_data(query_config())
            .app_data(payload_config(limit_bytes));
    }
}

/// An optional JSON body. No body (only whitespace, or JSON `null`) is
/// `None`; any other body must be `application/json` (415), at most the configured
/// [`payload_config`] size (413), well-formed (400) and of `T`'s shape (422;
/// give `T` `#[serde(deny_unknown_fields)]` so a misspelt field is refused too).
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T> OptionalJson<T> {
    pub fn into_inner(self) -> Option<T> {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for OptionalJson<T> {
    type Error = Problem;
    type Future = LocalBoxFuture<'static, Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            let bytes = bytes.await.map_err(|e| {
                if e.as_response_error().status_code()
                    == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE
                {
                    Problem::new(
                        actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                        "payload-too-large",
                        "Payload too large",
                        "the request body exceeds the configured limit",
                    )
                } else {
                    Problem::bad_request(format!("could not read the request body: {e}"))
                }
            })?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Self(None));
            }
            if !content_type.as_deref().is_some_and(is_json) {
                return Err(json_error(&JsonPayloadError::ContentType));
            }
            serde_json::from_slice::<Option<T>>(&bytes)
                .map(Self)
                .map_err(|e| json_error(&JsonPayloadError::Deserialize(e)))
        })
    }
}

/// `application/json` or any `application/*+json`, parameters ignored.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The only JSON a body-less action accepts: `{}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyObject {}

/// For actions that take no body (ship, deliver, retry, …): no body or `{}`
/// passes; anything else is refused like a bad [`OptionalJson`] body, so a
/// request nobody can interpret never acts.
#[derive(Debug, Clone, Copy)]
pub struct NoBody;

impl FromRequest for NoBody {
    type Error = Problem;
    type Future = LocalBoxFuture<'static, Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = OptionalJson::<EmptyObject>::from_request(req, payload);
        Box::pin(async move { body.await.map(|_| NoBody) })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_serialize_as_chrono_serializes_them() {
        #[derive(serde::Serialize)]
        struct Ours(#[serde(serialize_with = "super::rfc3339")] chrono::DateTime<chrono::Utc>);
        let base = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        for nanos in [
            0,
            1,
            1_000,
            120_000_000,
            123_456_000,
            123_456_789,
            999_999_999,
        ] {
            let at = base + chrono::Duration::nanoseconds(nanos);
            assert_eq!(
                serde_json::to_string(&Ours(at)).ok(),
                serde_json::to_string(&at).ok(),
                "{nanos} ns"
            );
        }
        // The hand-written digits, and chrono's text where it takes over
        // (years outside 0-9999, a leap second), across many instants.
        use chrono::TimeZone;
        let mut others = vec![
            chrono::Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
            chrono::Utc
                .with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
                .unwrap(),
            chrono::Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            chrono::Utc.with_ymd_and_hms(-5, 3, 1, 0, 0, 0).unwrap(),
            chrono::DateTime::from_timestamp(1_799_999_999, 1_500_000_000).unwrap(),
        ];
        for i in 0..2000_i64 {
            others.push(base + chrono::Duration::nanoseconds(i * 7_919_237_123_457));
        }
        for at in others {
            assert_eq!(
                serde_json::to_string(&Ours(at)).ok(),
                serde_json::to_string(&at).ok(),
                "{at:?}"
            );
        }
    }
}
