//! Rate limits with `governor`: one keyed GCRA limiter per quota, keyed by
//! principal (or client IP when anonymous). Limited routes answer with
//! `RateLimit-Policy` and `RateLimit` headers (IETF draft
//! `draft-ietf-httpapi-ratelimit-headers`); a refused request gets 429
//! problem+json with `Retry-After`. Idle keys are evicted periodically so the
//! key table stays bounded.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use agora_kernel::{Principal, Problem};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::settings::RateLimitSettings;

type KeyedLimiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// One quota and its limiter.
pub struct Limit {
    name: String,
    burst: u32,
    per_second: u32,
    limiter: KeyedLimiter,
}

impl Limit {
    fn new(name: &str, per_second: u32, burst: u32) -> Self {
        let per_second_nz = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second_nz).allow_burst(burst_nz);
        Self {
            name: name.to_owned(),
            burst,
            per_second,
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
        }
    }

    /// `RateLimit-Policy`: the burst (q) and the seconds to refill it (w).
    fn policy(&self) -> String {
        let window = self.burst.div_ceil(self.per_second).max(1);
        format!("\"{}\";q={};w={}", self.name, self.burst, window)
    }
}

/// Every quota of the gateway.
pub struct RateLimits {
    default: Limit,
    routes: Vec<(String, String, Limit)>,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn from_settings(s: &RateLimitSettings) -> Self {
        Self {
            default: Limit::new("default", s.per_second, s.burst),
            routes: s
                .routes
                .iter()
                .map(|r| {
                    let method = r.method.to_ascii_uppercase();
                    let name = format!("{} {}", method, r.route);
                    (
                        method,
                        r.route.clone(),
                        Limit::new(&name, r.per_second, r.burst),
                    )
                })
                .collect(),
            clock: DefaultClock::default(),
        }
    }

    fn limit_for(&self, method: &str, route: &str) -> &Limit {
        self.routes
            .iter()
            .find(|(m, r, _)| m == method && r == route)
            .map_or(&self.default, |(_, _, l)| l)
    }

    /// Drop keys whose bucket is full again; returns how many keys remain.
    pub fn evict_idle(&self) -> usize {
        let mut remaining = 0;
        for limit in std::iter::once(&self.default).chain(self.routes.iter().map(|(_, _, l)| l)) {
            limit.limiter.retain_recent();
            limit.limiter.shrink_to_fit();
            remaining += limit.limiter.len();
        }
        metrics::gauge!("agora_rate_limit_keys").set(remaining as f64);
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
    let key = match req.extensions().get::<Principal>() {
        Some(p) => format!("sub:{}", p.subject),
        None => format!(
            "ip:{}",
            req.peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default()
        ),
    };
    let route = req.match_pattern().unwrap_or_else(|| req.path().to_owned());
    let limit = limits.limit_for(req.method().as_str(), &route);
    let policy = limit.policy();
    match limit.limiter.check_key(&key) {
        Ok(snapshot) => {
            let remaining = snapshot.remaining_burst_capacity();
            let reset = (limit.burst.saturating_sub(remaining)).div_ceil(limit.per_second);
            let mut res = next.call(req).await?.map_into_boxed_body();
            let headers = res.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&policy) {
                headers.insert(RATELIMIT_POLICY, v);
            }
            if let Ok(v) =
                HeaderValue::from_str(&format!("\"{}\";r={remaining};t={reset}", limit.name))
            {
                headers.insert(RATELIMIT, v);
            }
            Ok(res)
        }
        Err(not_until) => {
            let wait = not_until.wait_time_from(limits.clock.now());
            let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let retry_after = retry_after.max(1);
            metrics::counter!("agora_rate_limit_rejections_total", "route" => route.clone())
                .increment(1);
            tracing::info!(route = %route, key = %key, retry_after, "rate limit exceeded");
            let mut res = Problem::too_many_requests(retry_after).to_response();
            let headers = res.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&policy) {
                headers.insert(RATELIMIT_POLICY, v);
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
        let l = Limit::new("default", 50, 100);
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
}
