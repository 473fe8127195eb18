//! Request id, per-request span, the access log line and HTTP metrics.
//!
//! The request id comes from `X-Request-Id` (when it is 1–128 visible ASCII
//! characters), else from the trace id of a W3C `traceparent`, else a new UUID
//! v7. It is returned as `X-Request-Id`, recorded on every log line of the
//! request and used as the correlation id of the events the request causes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use actix_web::HttpMessage;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;
use agora_kernel::{Principal, RequestId};
use tracing::Instrument;

use crate::telemetry::json::{self, InRequest, RequestFields};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C trace context; a constant name, so a lookup does not parse it first.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Which module serves which `/api/v1` prefix, for the `module` metric label.
#[derive(Debug, Clone, Default)]
pub struct RouteModules(pub Vec<(String, String)>);

impl RouteModules {
    /// The module serving this `/api/v1`-relative path (`host` for none).
    pub fn module_of(&self, route: &str) -> &str {
        self.0
            .iter()
            .find(|(prefix, _)| route.starts_with(prefix.as_str()))
            .map_or("host", |(_, m)| m.as_str())
    }
}

/// The request id for these headers.
pub fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()));
    if let Some(id) = given {
        return id.to_owned();
    }
    // traceparent: version-traceid-parentid-flags, trace id 32 lower-hex, not all zero.
    let from_trace = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|t| {
            t.len() == 32
                && t.bytes().all(|b| b.is_ascii_hexdigit())
                && t.bytes().any(|b| b != b'0')
        });
    match from_trace {
        Some(trace_id) => trace_id.to_ascii_lowercase(),
        // Encoded into a stack buffer: `to_string` goes through the
        // formatting machinery, which the /health/live profile showed.
        None => new_v7()
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .to_owned(),
    }
}

/// A UUID v7 that shares no state between threads: `Uuid::now_v7` orders
/// ids across all threads through one shared, locked context, which every
/// worker's requests contended for; a request id needs to be unique and
/// time-ordered to the millisecond, not ordered against the other ids.
///
/// Built from the clock's milliseconds and 74 bits of this thread's fast
/// generator (`fastrand`, seeded per thread): `Uuid::new_v7` with a
/// context of its own still cost ~650 instructions a request, most of them
/// its counter's bookkeeping and its generator.
fn new_v7() -> uuid::Uuid {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0; 10];
    random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// Outermost middleware: one span and one log line per request, plus metrics.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let id = request_id(req.headers());
    req.extensions_mut().insert(RequestId(id.clone()));
    let (route, module) = route_of(&req);
    let request = Rc::new(RequestFields {
        request_id: id,
        method: req.method().clone(),
        route,
        module,
    });
    let (id, method) = (request.request_id.as_str(), &request.method);
    let (route, module) = (&*request.route, &*request.module);
    // Counted down when this future ends, also when it is dropped unfinished
    // (the client went away).
    let _in_flight = InFlight::start();
    // The request's span, unless the JSON log is the only reader of events:
    // then the request is polled in a scope that gives its lines the span's
    // fields for a fraction of a span's cost (see `telemetry::json`).
    let mut traced = None;
    let result = if json::direct() {
        InRequest::new(request.clone(), next.call(req)).await
    } else {
        // Recorded as strings, not `%Display`: the log layer then escapes them
        // directly instead of running each through `fmt` (see telemetry::json).
        let span = tracing::info_span!(
            "http_request",
            request_id = id,
            method = method.as_str(),
            route = route,
            module = module,
        );
        // The span stays in the `Instrumented` (no clone: a clone and its drop
        // go through the subscriber's reference count).
        traced.insert(next.call(req).instrument(span)).await
    };
    let span = traced.as_ref().map(tracing::instrument::Instrumented::span);
    let latency = started.elapsed();
    // Whole microseconds: a short decimal, cheap to write and to read.
    let latency_micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    let latency_ms = latency_micros as f64 / 1000.0;

    let mut res = match result {
        Ok(res) => res.map_into_boxed_body(),
        Err(e) => {
            // A panic or middleware error: actix renders it; tag it and count it.
            let problem = crate::gateway::errors::as_problem(&e);
            let status = problem.status;
            match span {
                Some(span) => {
                    tracing::error!(parent: span, message = "request completed", status, latency_ms)
                }
                None => json::in_request(&request, || {
                    tracing::error!(message = "request completed", status, latency_ms)
                }),
            }
            count_request(module, route, metric_method(method), status, None);
            return Err(TaggedProblem {
                problem,
                request_id: id.to_owned(),
            }
            .into());
        }
    };
    let status = res.status().as_u16();
    {
        let request = res.request();
        let extensions = request.extensions();
        let principal = extensions
            .get::<Principal>()
            .map_or("-", |p| p.subject.as_str());
        let path = request.path();
        let level = if status >= 500 {
            tracing::Level::ERROR
        } else {
            tracing::Level::INFO
        };
        // Straight to the JSON log when it is the only reader (see
        // `telemetry::json::AccessLine`): the same line, a third the cost.
        let direct = || {
            json::write_access(&json::AccessLine {
                level,
                target: module_path!(),
                status,
                latency_micros,
                principal,
                path,
                request_id: id,
                method: method.as_str(),
                route,
                module,
            })
        };
        // Through `tracing` when the access line does not bypass it, and so
        // only with the request's span.
        if status >= 500 {
            if !(tracing::enabled!(tracing::Level::ERROR) && direct())
                && let Some(span) = span
            {
                tracing::error!(parent: span, message = "request completed", status, latency_ms, principal, path);
            }
        } else if !(tracing::enabled!(tracing::Level::INFO) && direct())
            && let Some(span) = span
        {
            tracing::info!(parent: span, message = "request completed", status, latency_ms, principal, path);
        }
    }
    count_request(module, route, metric_method(method), status, Some(latency));
    if let Ok(v) = HeaderValue::from_str(id) {
        res.headers_mut().insert(X_REQUEST_ID, v);
    }
    Ok(res)
}

/// The `method` label of a request's metrics: a method HTTP defines, else
/// `other`. Any token is a method to actix, so labelling by the method itself
/// let a client create series (and their memory) at will.
fn metric_method(method: &Method) -> &'static str {
    const DEFINED: [&str; 9] = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT",
    ];
    DEFINED
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("other")
}

/// One request in `agora_http_requests_in_flight`, until dropped.
struct InFlight(());

impl InFlight {
    fn start() -> Self {
        Self::with_gauge(|g| g.increment(1.0));
        Self(())
    }

    /// The gauge's handle, looked up once per thread (see [`RouteMetrics`]).
    fn with_gauge(f: impl FnOnce(&metrics::Gauge)) {
        thread_local! {
            static GAUGE: metrics::Gauge = metrics::gauge!("agora_http_requests_in_flight");
        }
        // Not at all once the thread's locals are gone (a runtime dropping
        // its tasks at thread exit): the process is ending.
        let _ = GAUGE.try_with(f);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        Self::with_gauge(|g| g.decrement(1.0));
    }
}

/// Which route pattern and module each request path resolved to, remembered
/// by one `App` instance (actix builds one per worker thread, so no locking;
/// register it with `.app_data(RouteCache::default())` inside the factory).
///
/// Matching a path against the resource map runs the router a second time
/// (regexes, for patterns with segments) and allocates, which the product
/// read's profile showed at ~4 % of its time; the answer depends only on the
/// path and the `App`, so it is remembered per path. The map is bounded and
/// starts over when full: random paths cost what they did, never memory.
#[derive(Default)]
pub struct RouteCache(RefCell<HashMap<Box<str>, RouteLabels, foldhash::fast::RandomState>>);

/// A route pattern and the module serving it.
type RouteLabels = (Rc<str>, Rc<str>);

impl RouteCache {
    const PATHS: usize = 4096;
    const LONGEST_PATH: usize = 256;
}

/// The route pattern (`unmatched` for none) and the module serving it, for
/// the span and the metric labels.
fn route_of(req: &ServiceRequest) -> RouteLabels {
    let resolve = || {
        let route = req
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let module = req
            .app_data::<web::Data<RouteModules>>()
            .map_or("host", |m| {
                m.module_of(route.strip_prefix("/api/v1").unwrap_or(""))
            })
            .to_owned();
        (Rc::from(route), Rc::from(module))
    };
    let path = req.path();
    let Some(cache) = req
        .app_data::<RouteCache>()
        .filter(|_| path.len() <= RouteCache::LONGEST_PATH)
    else {
        return resolve();
    };
    if let Some(known) = cache.0.borrow().get(path) {
        return known.clone();
    }
    let resolved = resolve();
    let mut paths = cache.0.borrow_mut();
    if paths.len() >= RouteCache::PATHS {
        paths.clear();
    }
    paths.insert(path.into(), resolved.clone());
    resolved
}

/// The HTTP series of one route and method, resolved once per thread: looking
/// a series up in the recorder builds its key and copies its labels, which at
/// tens of thousands of requests per second showed in the profile. Counts
/// wait here until the thread's shard is flushed (see [`RouteSeries`]).
struct RouteMetrics {
    module: String,
    route: String,
    method: &'static str,
    duration: metrics::Histogram,
    durations: Vec<f64>,
    /// Per status: its counter and the requests not yet added to it.
    by_status: Vec<(u16, metrics::Counter, u64)>,
}

impl RouteMetrics {
    fn new(module: &str, route: &str, method: &'static str) -> Self {
        let labels = [
            ("module", module.to_owned()),
            ("route", route.to_owned()),
            ("method", method.to_owned()),
        ];
        Self {
            module: module.to_owned(),
            route: route.to_owned(),
            method,
            duration: metrics::histogram!("agora_http_request_duration_seconds", &labels),
            durations: Vec::new(),
            by_status: Vec::new(),
        }
    }

    /// One request in `agora_http_requests_total` for this status.
    fn count(&mut self, status: u16) {
        match self.by_status.iter_mut().find(|(s, ..)| *s == status) {
            Some((_, _, pending)) => *pending += 1,
            None => {
                let counter = metrics::counter!(
                    "agora_http_requests_total",
                    "module" => self.module.clone(),
                    "route" => self.route.clone(),
                    "method" => self.method,
                    "status" => status.to_string()
                );
                self.by_status.push((status, counter, 1));
            }
        }
    }

    fn flush(&mut self) {
        for (_, counter, pending) in &mut self.by_status {
            if *pending > 0 {
                counter.increment(std::mem::take(pending));
            }
        }
        for seconds in self.durations.drain(..) {
            self.duration.record(seconds);
        }
    }
}

/// One thread's HTTP series and their pending counts, a
/// [`telemetry::shards`](crate::telemetry::shards) shard: both workers
/// adding to one series' shared counter moved its cache line between the
/// cores on every request.
#[derive(Default)]
struct RouteSeries {
    series: Vec<RouteMetrics>,
    /// Requests counted since the last flush.
    pending: usize,
}

impl RouteSeries {
    /// Routes (patterns, so a bounded set) and methods one thread keeps
    /// resolved; past this it flushes and starts over (the series stay in
    /// the recorder).
    const SERIES: usize = 512;
    /// Requests a thread counts before it flushes on its own.
    const FLUSH_EVERY: usize = 64;

    fn series(&mut self, module: &str, route: &str, method: &'static str) -> &mut RouteMetrics {
        let at = match self
            .series
            .iter()
            .position(|m| m.route == route && m.method == method)
        {
            Some(at) => at,
            None => {
                if self.series.len() >= Self::SERIES {
                    crate::telemetry::shards::Shard::flush(self);
                    self.series.clear();
                }
                self.series.push(RouteMetrics::new(module, route, method));
                self.series.len() - 1
            }
        };
        &mut self.series[at]
    }
}

impl crate::telemetry::shards::Shard for RouteSeries {
    fn flush(&mut self) {
        self.series.iter_mut().for_each(RouteMetrics::flush);
        self.pending = 0;
    }
}

/// Count one request of this route and method: its status and, when it has
/// one, its duration.
fn count_request(
    module: &str,
    route: &str,
    method: &'static str,
    status: u16,
    duration: Option<std::time::Duration>,
) {
    use crate::telemetry::shards::{self, Shard};
    thread_local! {
        static SHARD: std::sync::Arc<std::sync::Mutex<RouteSeries>> =
            shards::register(RouteSeries::default());
    }
    let record = |all: &mut RouteSeries| {
        let series = all.series(module, route, method);
        series.count(status);
        if let Some(d) = duration {
            series.durations.push(d.as_secs_f64());
        }
        all.pending += 1;
        if all.pending >= RouteSeries::FLUSH_EVERY {
            all.flush();
        }
    };
    let counted = SHARD.try_with(|shard| match shard.try_lock() {
        Ok(mut all) => {
            record(&mut all);
            true
        }
        Err(std::sync::TryLockError::Poisoned(all)) => {
            record(&mut all.into_inner());
            true
        }
        // Held by this thread only if recording logged and the log recorded,
        // or for a moment by a scrape's flush: counted straight away.
        Err(std::sync::TryLockError::WouldBlock) => false,
    });
    if counted != Ok(true) {
        let mut alone = RouteSeries::default();
        record(&mut alone);
        alone.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_given_request_id_is_kept() {
        assert_eq!(
            request_id(&headers(&[("x-request-id", "abc-123")])),
            "abc-123"
        );
    }

    #[test]
    fn a_traceparent_supplies_the_trace_id() {
        let h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        assert_eq!(request_id(&h), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[actix_web::test]
    async fn a_remembered_route_is_the_one_the_router_gives() {
        use actix_web::middleware::from_fn;
        use actix_web::{App, HttpResponse, test};
        // Echo route_of's answer; the first call of a path resolves it, the
        // second reads the cache, and both must say the same.
        let app = test::init_service(
            App::new()
                .app_data(RouteCache::default())
                .app_data(web::Data::new(RouteModules(vec![(
                    "/items".to_owned(),
                    "inventory".to_owned(),
                )])))
                .wrap(from_fn(
                    |req: ServiceRequest, next: Next<BoxBody>| async move {
                        let (route, module) = route_of(&req);
                        let mut res = next.call(req).await?;
                        let value = HeaderValue::from_str(&format!("{route} {module}")).unwrap();
                        res.headers_mut()
                            .insert(HeaderName::from_static("x-route"), value);
                        Ok::<_, actix_web::Error>(res)
                    },
                ))
                .route("/api/v1/items/{id}", web::get().to(HttpResponse::Ok))
                .route("/health/live", web::get().to(HttpResponse::Ok)),
        )
        .await;
        for (uri, expected) in [
            ("/api/v1/items/1", "/api/v1/items/{id} inventory"),
            ("/api/v1/items/1", "/api/v1/items/{id} inventory"),
            ("/api/v1/items/2", "/api/v1/items/{id} inventory"),
            ("/health/live", "/health/live host"),
            ("/nowhere", "unmatched host"),
            ("/nowhere", "unmatched host"),
        ] {
            let res =
                test::call_service(&app, test::TestRequest::get().uri(uri).to_request()).await;
            assert_eq!(res.headers().get("x-route").unwrap(), expected, "{uri}");
        }
    }

    #[test]
    fn a_method_http_does_not_define_is_labelled_other() {
        assert_eq!(metric_method(&Method::GET), "GET");
        assert_eq!(metric_method(&Method::PATCH), "PATCH");
        let made_up = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(metric_method(&made_up), "other");
    }

    #[test]
    fn garbage_ids_are_replaced_with_a_fresh_uuid() {
        let h = headers(&[("x-request-id", "has space"), ("traceparent", "00-000-bad")]);
        assert!(uuid::Uuid::parse_str(&request_id(&h)).is_ok());
    }

    #[test]
    fn fresh_ids_are_distinct_version_7_uuids_of_this_millisecond() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ids: std::collections::HashSet<uuid::Uuid> = (0..1000).map(|_| new_v7()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(millis >= before && millis < before + 60_000, "{id}");
        }
    }
}

/// A problem rendered with the request's `X-Request-Id`.
#[derive(Debug)]
struct TaggedProblem {
    problem: agora_kernel::Problem,
    request_id: String,
}

impl std::fmt::Display for TaggedProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.problem.fmt(f)
    }
}

impl actix_web::ResponseError for TaggedProblem {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.problem.status_code()
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        let mut res = self.problem.to_response();
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            res.headers_mut().insert(X_REQUEST_ID, v);
        }
        res
    }
}
