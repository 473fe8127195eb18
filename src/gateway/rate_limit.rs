//! Rate limits with `governor`: one keyed GCRA limiter per quota, keyed by
//! principal (or client IP when anonymous). Limited routes answer with
//! `RateLimit-Policy` and `RateLimit` headers (IETF draft
//! `draft-ietf-httpapi-ratelimit-headers`); a refused request gets 429
//! problem+json with `Retry-After`. Idle keys are evicted periodically so the
//! key table stays bounded; `agora_rate_limit_keys` follows the table live
//! (counted as keys are added, recounted at each eviction).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use agora_kernel::{Principal, Problem};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, StateStore};
use governor::{Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::settings::RateLimitSettings;

type KeyedLimiter = RateLimiter<String, CountedStore, DefaultClock, StateInformationMiddleware>;

/// How many keys all limiters of one [`RateLimits`] hold, mirrored into the
/// `agora_rate_limit_keys` gauge.
struct KeyCount {
    keys: AtomicUsize,
    gauge: metrics::Gauge,
}

impl KeyCount {
    fn added(&self) {
        let n = self.keys.fetch_add(1, Ordering::Relaxed) + 1;
        self.gauge.set(n as f64);
    }

    fn recount(&self, n: usize) {
        self.keys.store(n, Ordering::Relaxed);
        self.gauge.set(n as f64);
    }
}

/// governor's DashMap store, counting the keys it adds. A known key costs one
/// extra map probe; a new one a probe, an insert and an atomic add — no walk
/// over the table on the request path.
struct CountedStore {
    /// foldhash, not SipHash: a key is hashed on every API request, twice.
    map: DashMapStateStore<String, foldhash::fast::RandomState>,
    count: Arc<KeyCount>,
}

impl StateStore for CountedStore {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if !self.map.contains_key(key)
            && let dashmap::Entry::Vacant(slot) = self.map.entry(key.clone())
        {
            // The state governor would create itself: "never measured".
            slot.insert(InMemoryState::default());
            self.count.added();
        }
        self.map.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<String> for CountedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.map, drop_below);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One quota and its limiter.
pub struct Limit {
    name: String,
    burst: u32,
    per_second: u32,
    limiter: KeyedLimiter,
    /// The `RateLimit-Policy` header, the same on every answer.
    policy: Option<HeaderValue>,
}

impl Limit {
    fn new(name: &str, per_second: u32, burst: u32, count: Arc<KeyCount>) -> Self {
        let per_second_nz = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second_nz).allow_burst(burst_nz);
        let store = CountedStore {
            map: dashmap::DashMap::with_hasher(foldhash::fast::RandomState::default()),
            count,
        };
        let limiter: RateLimiter<String, CountedStore, DefaultClock> =
            RateLimiter::new(quota, store, DefaultClock::default());
        // `RateLimit-Policy`: the burst (q) and the seconds to refill it (w).
        let window = burst.div_ceil(per_second.max(1)).max(1);
        let policy = HeaderValue::from_str(&format!("\"{name}\";q={burst};w={window}")).ok();
        Self {
            name: name.to_owned(),
            burst,
            per_second,
            limiter: limiter.with_middleware::<StateInformationMiddleware>(),
            policy,
        }
    }
}

impl Limit {
    /// The `RateLimit-Policy` header's text.
    #[cfg(test)]
    fn policy(&self) -> &str {
        self.policy
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// Every quota of the gateway.
pub struct RateLimits {
    default: Limit,
    routes: Vec<(String, String, Limit)>,
    clock: DefaultClock,
    count: Arc<KeyCount>,
}

impl RateLimits {
    /// The limiters of these settings; the key gauge belongs to the metrics
    /// recorder installed when this is called.
    pub fn from_settings(s: &RateLimitSettings) -> Self {
        // At zero from the start (a series for alerts before the first 429).
        metrics::counter!("agora_rate_limit_rejections_total", "route" => "").increment(0);
        let count = Arc::new(KeyCount {
            keys: AtomicUsize::new(0),
            gauge: metrics::gauge!("agora_rate_limit_keys"),
        });
        count.recount(0);
        Self {
            default: Limit::new("default", s.per_second, s.burst, count.clone()),
            routes: s
                .routes
                .iter()
                .map(|r| {
                    let method = r.method.to_ascii_uppercase();
                    let name = format!("{} {}", method, r.route);
                    (
                        method,
                        r.route.clone(),
                        Limit::new(&name, r.per_second, r.burst, count.clone()),
                    )
                })
                .collect(),
            clock: DefaultClock::default(),
            count,
        }
    }

    fn limit_for(&self, method: &str, route: &str) -> &Limit {
        self.routes
            .iter()
            .find(|(m, r, _)| m == method && r == route)
            .map_or(&self.default, |(_, _, l)| l)
    }

    /// Drop keys whose bucket is full again; returns how many keys remain
    /// (and recounts the gauge, correcting any drift from concurrent adds).
    pub fn evict_idle(&self) -> usize {
        let mut remaining = 0;
        for limit in std::iter::once(&self.default).chain(self.routes.iter().map(|(_, _, l)| l)) {
            limit.limiter.retain_recent();
            limit.limiter.shrink_to_fit();
            remaining += limit.limiter.len();
        }
        self.count.recount(remaining);
        remaining
    }

    /// Keys currently tracked.
    pub fn key_count(&self) -> usize {
        std::iter::once(&self.default)
            .chain(self.routes.iter().map(|(_, _, l)| l))
            .map(|l| l.limiter.len())
            .sum()
    }
}

/// Evict idle keys every `every` until `shutdown`.
pub async fn evict_periodically(
    limits: Arc<RateLimits>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(every) => { limits.evict_idle(); }
        }
    }
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The `RateLimit` header's value, `"<policy>";r=<remaining>;t=<reset>`.
fn ratelimit_value(name: &str, remaining: u32, reset: u32) -> String {
    let mut v = String::with_capacity(name.len() + 24);
    v.push('"');
    v.push_str(name);
    v.push_str("\";r=");
    v.push_str(itoa::Buffer::new().format(remaining));
    v.push_str(";t=");
    v.push_str(itoa::Buffer::new().format(reset));
    v
}

/// Gateway middleware; runs after authentication so it can key by principal.
pub async fn limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(limits) = req.app_data::<web::Data<RateLimits>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    // Counted once, where the client called: forwarded traffic (by its
    // verified credential, never by address) and service calls pass.
    let exempt = req
        .extensions()
        .contains::<crate::gateway::auth::Forwarded>()
        || req
            .extensions()
            .get::<Principal>()
            .is_some_and(|p| p.roles.contains(&agora_kernel::Role::Service));
    if exempt {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    // Pushed, not `format!`ed: the formatting machinery showed in the
    // product read's profile.
    let key = match req.extensions().get::<Principal>() {
        Some(p) => {
            let mut key = String::with_capacity(4 + p.subject.len());
            key.push_str("sub:");
            key.push_str(&p.subject);
            key
        }
        None => format!(
            "ip:{}",
            req.peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default()
        ),
    };
    // Matching the route walks the routing table again: only for route quotas.
    let route = match limits.routes.is_empty() {
        true => None,
        false => Some(req.match_pattern().unwrap_or_else(|| req.path().to_owned())),
    };
    let limit = match &route {
        Some(route) => limits.limit_for(req.method().as_str(), route),
        None => &limits.default,
    };
    let policy = &limit.policy;
    match limit.limiter.check_key(&key) {
        Ok(snapshot) => {
            let remaining = snapshot.remaining_burst_capacity();
            let reset = (limit.burst.saturating_sub(remaining)).div_ceil(limit.per_second);
            let mut res = next.call(req).await?.map_into_boxed_body();
            let headers = res.headers_mut();
            if let Some(v) = policy {
                headers.insert(RATELIMIT_POLICY, v.clone());
            }
            if let Ok(v) = HeaderValue::from_str(&ratelimit_value(&limit.name, remaining, reset)) {
                headers.insert(RATELIMIT, v);
            }
            Ok(res)
        }
        Err(not_until) => {
            let wait = not_until.wait_time_from(limits.clock.now());
            let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let retry_after = retry_after.max(1);
            let route = route
                .unwrap_or_else(|| req.match_pattern().unwrap_or_else(|| req.path().to_owned()));
            metrics::counter!("agora_rate_limit_rejections_total", "route" => route.clone())
                .increment(1);
            tracing::info!(route = %route, key = %key, retry_after, "rate limit exceeded");
            let mut res = Problem::too_many_requests(retry_after).to_response();
            let headers = res.headers_mut();
            if let Some(v) = policy {
                headers.insert(RATELIMIT_POLICY, v.clone());
            }
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\";r=0;t={retry_after}", limit.name))
            {
                headers.insert(RATELIMIT, v);
            }
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
            Ok(req.into_response(res))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratelimit_value_names_the_policy_what_remains_and_when_it_resets() {
        assert_eq!(ratelimit_value("default", 9, 1), "\"default\";r=9;t=1");
        assert_eq!(
            ratelimit_value("POST /api/v1/orders", 0, 4_294_967_295),
            "\"POST /api/v1/orders\";r=0;t=4294967295"
        );
    }

    fn settings(per_second: u32, burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            per_second,
            burst,
            evict_every_secs: 60,
            routes: vec![],
        }
    }

    #[test]
    fn the_policy_names_burst_and_refill_window() {
        let count = Arc::new(KeyCount {
            keys: AtomicUsize::new(0),
            gauge: metrics::Gauge::noop(),
        });
        let l = Limit::new("default", 50, 100, count);
        assert_eq!(l.policy(), "\"default\";q=100;w=2");
    }

    #[test]
    fn idle_keys_are_evicted_once_their_bucket_refills() {
        let limits = RateLimits::from_settings(&settings(1000, 1));
        for i in 0..50 {
            let _ = limits.default.limiter.check_key(&format!("k{i}"));
        }
        assert_eq!(limits.key_count(), 50);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(limits.evict_idle(), 0);
    }

    #[test]
    fn the_key_gauge_counts_keys_as_they_arrive_not_only_at_eviction() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let mut s = settings(1000, 10);
        s.routes = vec![crate::settings::RouteQuota {
            method: "GET".into(),
            route: "/api/v1/me".into(),
            per_second: 1000,
            burst: 10,
        }];
        let limits = metrics::with_local_recorder(&recorder, || RateLimits::from_settings(&s));
        let gauge = || {
            handle
                .render()
                .lines()
                .find_map(|l| l.strip_prefix("agora_rate_limit_keys "))
                .map(str::to_owned)
        };
        assert_eq!(gauge().as_deref(), Some("0"));
        for key in [
            "sub:alice",
            "sub:bob",
            "ip:10.0.0.1",
            "sub:alice",
            "sub:bob",
        ] {
            let _ = limits.default.limiter.check_key(&key.to_owned());
        }
        assert_eq!(gauge().as_deref(), Some("3"), "one per distinct key");
        let _ = limits.routes[0]
            .2
            .limiter
            .check_key(&"sub:alice".to_owned());
        assert_eq!(gauge().as_deref(), Some("4"), "keys of every quota count");
        // Refused requests keep counting their key once.
        for _ in 0..20 {
            let _ = limits.default.limiter.check_key(&"sub:carol".to_owned());
        }
        assert_eq!(gauge().as_deref(), Some("5"));
        assert_eq!(limits.key_count(), 5);
    }
}
