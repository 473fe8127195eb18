//! No error leaves agora as anything but `application/problem+json`, and no
//! panic reaches a client: a panicking handler answers 500 and the panic goes
//! to the log.

use std::panic::AssertUnwindSafe;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse};

use agora_kernel::Problem;
use agora_kernel::problem::PROBLEM_JSON;
use futures_util::FutureExt;

/// Turn any non-problem error response into problem+json and catch panics.
pub async fn problems(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // No clone of the request may live across `next.call`: routing needs it
    // uniquely. So a panic or an error surfaces as an `Err(Problem)`, which the
    // observe middleware tags with the request id and actix renders.
    match AssertUnwindSafe(next.call(req)).catch_unwind().await {
        Ok(Ok(res)) => normalise(res.map_into_boxed_body()).await,
        Ok(Err(e)) => Err(as_problem(&e).into()),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(panic = %msg, "handler panicked");
            Err(Problem::internal().into())
        }
    }
}

/// The problem an actix error stands for (itself when it is one).
pub fn as_problem(e: &actix_web::Error) -> Problem {
    if let Some(p) = e.as_error::<Problem>() {
        return p.clone();
    }
    let status = e.as_response_error().status_code();
    if status.is_server_error() {
        tracing::error!(error = %e, "request failed");
        Problem::internal()
    } else {
        Problem::for_status(status, e.to_string())
    }
}

async fn normalise(
    res: ServiceResponse<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return Ok(res);
    }
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON));
    if is_problem {
        return Ok(res);
    }
    let (req, res) = res.into_parts();
    // Keep what the inner layers said (Allow, RateLimit, Retry-After, ...);
    // only the body and its type change.
    let kept: Vec<(header::HeaderName, HeaderValue)> = res
        .headers()
        .iter()
        .filter(|(name, _)| *name != header::CONTENT_TYPE && *name != header::CONTENT_LENGTH)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let body = actix_web::body::to_bytes(res.into_body())
        .await
        .unwrap_or_default();
    let problem = problem_for(&req, status, &body);
    let mut out = problem.to_response();
    for (name, value) in kept {
        if !out.headers().contains_key(&name) {
            out.headers_mut().append(name, value);
        }
    }
    Ok(ServiceResponse::new(req, out))
}

fn problem_for(req: &HttpRequest, status: StatusCode, body: &[u8]) -> Problem {
    match status {
        StatusCode::NOT_FOUND => Problem::not_found(format!("no resource at {}", req.path())),
        StatusCode::METHOD_NOT_ALLOWED => Problem::for_status(
            status,
            format!("{} is not allowed on {}", req.method(), req.path()),
        ),
        s if s.is_server_error() => {
            let mut p = Problem::internal();
            if s != StatusCode::INTERNAL_SERVER_ERROR {
                p = Problem::for_status(s, "the server could not handle the request");
            }
            p
        }
        s => {
            // 4xx from actix itself (e.g. a malformed header): keep its short
            // message, which never carries internals.
            let text = std::str::from_utf8(body).unwrap_or("").trim();
            let detail = if text.is_empty() || text.len() > 300 {
                s.canonical_reason().unwrap_or("request refused").to_owned()
            } else {
                text.to_owned()
            };
            Problem::for_status(s, detail)
        }
    }
}

/// The app's default service: every unknown route is a 404 problem.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let mut res = Problem::not_found(format!("no resource at {}", req.path())).to_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
