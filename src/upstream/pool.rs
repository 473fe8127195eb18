//! A pool of instances of one remote module: health (active checks of
//! `/health/ready`, passive ejection after failures) and balancing.
//!
//! Balancing is *power of two choices*: two available instances picked at
//! random, the one with fewer calls in flight wins (ties: the lower latency
//! EWMA). It sends less to a slow or struggling instance without any
//! coordination, and costs two atomic reads per call; plain round robin keeps
//! sending a slow instance its full share (see docs/performance.md).
//!
//! An instance is *available* while it is healthy (it failed fewer than 2
//! checks in a row since it last passed 2) and not ejected. A connection error
//! or a run of 5xx answers ejects it for a back-off that doubles with each
//! ejection (1 s up to 30 s); a pool never has more than half its instances
//! ejected. When no instance is available the pool still tries them all
//! (failing open beats refusing every call).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Checks an instance must fail (pass) in a row to become unhealthy (healthy).
pub const HEALTH_THRESHOLD: u32 = 2;
/// 5xx answers in a row that eject an instance (a connection error ejects at once).
pub const EJECT_AFTER_5XX: u32 = 3;
const EJECT_BASE: Duration = Duration::from_secs(1);
const EJECT_MAX: Duration = Duration::from_secs(30);

/// One instance of a module.
#[derive(Debug)]
pub struct Instance {
    /// The base URL exactly as given.
    pub url: String,
    module: &'static str,
    healthy: AtomicBool,
    failed_checks: AtomicU32,
    passed_checks: AtomicU32,
    in_flight: AtomicU32,
    /// Latency EWMA in microseconds (0 = no sample yet).
    ewma_micros: AtomicU64,
    failures_in_a_row: AtomicU32,
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

/// How one call to an instance ended, for its health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer below 500.
    Ok,
    /// A 5xx answer.
    Error,
    /// No answer: refused, reset, timed out.
    Transport,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Transport => "transport",
        }
    }

    pub fn of_status(status: u16) -> Self {
        if status >= 500 { Self::Error } else { Self::Ok }
    }
}

impl Instance {
    fn new(module: &'static str, url: &str) -> Self {
        let i = Self {
            url: url.to_owned(),
            module,
            healthy: AtomicBool::new(true),
            failed_checks: AtomicU32::new(0),
            passed_checks: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            ewma_micros: AtomicU64::new(0),
            failures_in_a_row: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
        };
        i.export_health();
        i
    }

    /// The URL to build request URLs on (without a trailing `/`).
    pub fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .map(|u| u.is_some_and(|t| t > now))
            .unwrap_or(false)
    }

    fn available(&self, now: Instant) -> bool {
        self.is_healthy() && !self.is_ejected(now)
    }

    fn export_health(&self) {
        metrics::gauge!("agora_upstream_healthy", "module" => self.module, "url" => self.url.clone())
            .set(if self.is_healthy() { 1.0 } else { 0.0 });
    }

    /// Record an active check of `/health/ready`.
    pub fn record_check(&self, passed: bool) {
        let (mine, other) = if passed {
            (&self.passed_checks, &self.failed_checks)
        } else {
            (&self.failed_checks, &self.passed_checks)
        };
        other.store(0, Ordering::Relaxed);
        let run = mine.fetch_add(1, Ordering::Relaxed) + 1;
        if run >= HEALTH_THRESHOLD && self.is_healthy() != passed {
            self.healthy.store(passed, Ordering::Relaxed);
            self.export_health();
            if passed {
                tracing::info!(module = self.module, url = %self.url, "upstream instance healthy again");
            } else {
                tracing::warn!(module = self.module, url = %self.url, "upstream instance unhealthy");
            }
        }
    }

    /// A call begins; the guard ends it.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            instance: self.clone(),
            started: Instant::now(),
        }
    }

    fn score(&self) -> (u32, u64) {
        (
            self.in_flight.load(Ordering::Relaxed),
            self.ewma_micros.load(Ordering::Relaxed),
        )
    }
}

/// A call in flight to an instance; report how it ended.
pub struct InFlight {
    instance: Arc<Instance>,
    started: Instant,
}

impl InFlight {
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.instance.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The instances of one module (a stable, canary or green pool).
#[derive(Debug)]
pub struct Pool {
    pub module: &'static str,
    instances: Vec<Arc<Instance>>,
}

impl Pool {
    pub fn new(module: &'static str, urls: &[String]) -> Self {
        Self {
            module,
            instances: urls
                .iter()
                .map(|u| Arc::new(Instance::new(module, u)))
                .collect(),
        }
    }

    pub fn instances(&self) -> &[Arc<Instance>] {
        &self.instances
    }

    /// The URLs as configured.
    pub fn urls(&self) -> Vec<String> {
        self.instances.iter().map(|i| i.url.clone()).collect()
    }

    /// The instance to try next, other than `tried`: power of two choices
    /// among the available ones (all of them when none is available).
    pub fn choose(&self, tried: &[Arc<Instance>]) -> Option<Arc<Instance>> {
        let now = Instant::now();
        let untried = |i: &&Arc<Instance>| !tried.iter().any(|t| Arc::ptr_eq(t, i));
        let mut candidates: Vec<&Arc<Instance>> = self
            .instances
            .iter()
            .filter(untried)
            .filter(|i| i.available(now))
            .collect();
        if candidates.is_empty() {
            candidates = self.instances.iter().filter(untried).collect();
        }
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].clone()),
            n => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (x, y) = (candidates[a], candidates[b]);
                Some(if y.score() < x.score() { y } else { x }.clone())
            }
        }
    }

    /// Record how a call ended: metrics, latency EWMA, passive ejection.
    pub fn record(&self, call: InFlight, outcome: Outcome) {
        let i = &call.instance;
        let latency = call.elapsed();
        metrics::counter!("agora_upstream_requests_total", "module" => self.module, "url" => i.url.clone(), "outcome" => outcome.as_str())
            .increment(1);
        metrics::histogram!("agora_upstream_request_duration_seconds", "module" => self.module, "url" => i.url.clone())
            .record(latency.as_secs_f64());
        let sample = latency.as_micros().min(u128::from(u32::MAX)) as u64;
        let old = i.ewma_micros.load(Ordering::Relaxed);
        let ewma = if old == 0 {
            sample
        } else {
            (old * 4 + sample) / 5
        };
        i.ewma_micros.store(ewma, Ordering::Relaxed);
        match outcome {
            Outcome::Ok => {
                i.failures_in_a_row.store(0, Ordering::Relaxed);
            }
            Outcome::Error | Outcome::Transport => {
                let run = i.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if outcome == Outcome::Transport || run >= EJECT_AFTER_5XX {
                    self.eject(i);
                }
            }
        }
    }

    fn eject(&self, i: &Arc<Instance>) {
        let now = Instant::now();
        if i.is_ejected(now) {
            return;
        }
        let ejected = self.instances.iter().filter(|x| x.is_ejected(now)).count();
        if (ejected + 1) * 2 > self.instances.len() {
            // Never more than half: with so few left, keep trying them all.
            return;
        }
        let n = i.ejections.fetch_add(1, Ordering::Relaxed).min(5);
        let backoff = (EJECT_BASE * 2u32.pow(n)).min(EJECT_MAX);
        if let Ok(mut until) = i.ejected_until.lock() {
            *until = Some(now + backoff);
        }
        i.failures_in_a_row.store(0, Ordering::Relaxed);
        tracing::warn!(module = self.module, url = %i.url, backoff_ms = backoff.as_millis() as u64,
            "upstream instance ejected after failures");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Pool {
        let urls: Vec<String> = (0..n).map(|i| format!("http://h{i}:1")).collect();
        Pool::new("payment", &urls)
    }

    #[test]
    fn two_failed_checks_make_an_instance_unhealthy_and_two_passes_healthy_again() {
        let p = pool(2);
        let i = &p.instances()[0];
        i.record_check(false);
        assert!(i.is_healthy(), "one failure is not enough");
        i.record_check(false);
        assert!(!i.is_healthy());
        i.record_check(true);
        assert!(!i.is_healthy(), "one pass is not enough");
        i.record_check(true);
        assert!(i.is_healthy());
    }

    #[test]
    fn an_unhealthy_instance_gets_no_calls_while_another_is_available() {
        let p = pool(2);
        p.instances()[0].record_check(false);
        p.instances()[0].record_check(false);
        for _ in 0..50 {
            let chosen = p.choose(&[]).unwrap();
            assert_eq!(chosen.url, "http://h1:1");
        }
        // Both down: fail open.
        p.instances()[1].record_check(false);
        p.instances()[1].record_check(false);
        assert!(p.choose(&[]).is_some());
    }

    #[test]
    fn a_connection_error_ejects_but_never_more_than_half_of_the_pool() {
        let p = pool(4);
        for i in p.instances() {
            p.record(i.begin(), Outcome::Transport);
        }
        let now = Instant::now();
        let ejected = p.instances().iter().filter(|i| i.is_ejected(now)).count();
        assert_eq!(ejected, 2);
    }

    #[test]
    fn a_streak_of_5xx_ejects_and_a_success_resets_the_streak() {
        let p = pool(2);
        let i = p.instances()[0].clone();
        for _ in 0..EJECT_AFTER_5XX - 1 {
            p.record(i.begin(), Outcome::Error);
        }
        p.record(i.begin(), Outcome::Ok);
        p.record(i.begin(), Outcome::Error);
        assert!(!i.is_ejected(Instant::now()));
        for _ in 0..EJECT_AFTER_5XX {
            p.record(i.begin(), Outcome::Error);
        }
        assert!(i.is_ejected(Instant::now()));
    }

    #[test]
    fn two_choices_prefer_the_instance_with_fewer_calls_in_flight() {
        let p = pool(2);
        let busy = p.instances()[0].clone();
        let _calls: Vec<InFlight> = (0..5).map(|_| busy.begin()).collect();
        for _ in 0..20 {
            assert_eq!(p.choose(&[]).unwrap().url, "http://h1:1");
        }
        assert_eq!(
            p.choose(std::slice::from_ref(&p.instances()[1]))
                .unwrap()
                .url,
            "http://h0:1",
            "a retry goes elsewhere"
        );
    }
}
