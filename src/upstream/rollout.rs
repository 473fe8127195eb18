//! Canary releases and blue-green switches of one module's traffic, run by
//! this process over the calls it makes (forwarded requests and module-to-
//! module calls alike).
//!
//! A module's [`Route`] holds its stable target — a pool of remote instances,
//! or this process itself when it hosts the module (a canary to remote
//! instances is then a gradual extraction) — and, during a rollout, a canary
//! (green) pool with a weight in percent. Assignment is sticky: a key (the
//! caller's `sub`, or the aggregate a call concerns) hashes to a bucket in
//! 0..100 and goes to the canary while its bucket is below the weight, so it
//! stays on one side for the whole step.
//!
//! A canary advances step by step (default 5 → 25 → 50 → 100 %) when a step
//! lasted `step_secs`, saw at least `min_samples` canary calls, and its error
//! rate and p99 are under the promote thresholds; it rolls back at once when
//! they cross the rollback thresholds (with a handful of samples at least),
//! and when a step stays inconclusive for three step lengths. No data never
//! counts as success. The guide's thresholds are the defaults (`[rollout]`).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::pool::{Outcome, Pool};

/// `[rollout]`: the analysis' thresholds and cadence.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct RolloutSettings {
    /// Canary weights in percent, ascending, the last 100.
    pub steps: Vec<u8>,
    /// How long each step lasts at least.
    pub step_secs: u64,
    /// Canary calls a step needs before it may advance.
    pub min_samples: u64,
    /// Canary calls before a rollback threshold may decide.
    pub rollback_min_samples: u64,
    /// How often the figures are judged.
    pub evaluate_every_ms: u64,
    /// Advance while the error rate is below this fraction (0.001 = 0.1 %) ...
    pub promote_max_error_rate: f64,
    /// ... and p99 below this.
    pub promote_max_p99_ms: f64,
    /// Roll back at once above this error rate ...
    pub rollback_error_rate: f64,
    /// ... or this p99.
    pub rollback_p99_ms: f64,
}

/// Which side of a split a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Stable,
    Canary,
}

/// Where a module's calls go.
#[derive(Debug, Clone)]
pub enum Target {
    /// The module hosted by this process.
    Local,
    Remote(Arc<Pool>),
}

impl Target {
    pub fn pool(&self) -> Option<&Arc<Pool>> {
        match self {
            Target::Local => None,
            Target::Remote(p) => Some(p),
        }
    }

    fn urls(&self) -> Vec<String> {
        self.pool().map(|p| p.urls()).unwrap_or_default()
    }
}

/// The bucket (0..100) of a sticky key: a fixed hash, the same in every process.
pub fn bucket(key: &str) -> u8 {
    // SipHash with fixed keys (DefaultHasher::new) is stable for a given build.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % 100) as u8
}

#[derive(Debug, Default)]
struct SideStats {
    calls: u64,
    errors: u64,
    /// Latencies in microseconds, at most `MAX_SAMPLES` (a uniform sample).
    latencies: Vec<u32>,
}

const MAX_SAMPLES: usize = 50_000;

impl SideStats {
    fn record(&mut self, ok: bool, latency: Duration) {
        self.calls += 1;
        if !ok {
            self.errors += 1;
        }
        let micros = latency.as_micros().min(u128::from(u32::MAX)) as u32;
        if self.latencies.len() < MAX_SAMPLES {
            self.latencies.push(micros);
        } else {
            let i = fastrand::usize(..self.calls as usize);
            if i < MAX_SAMPLES {
                self.latencies[i] = micros;
            }
        }
    }

    fn error_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.errors as f64 / self.calls as f64
        }
    }

    fn p99_ms(&self) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let idx = ((sorted.len() as f64) * 0.99).ceil() as usize;
        f64::from(sorted[idx.saturating_sub(1).min(sorted.len() - 1)]) / 1000.0
    }
}

#[derive(Debug)]
struct RouteState {
    stable: Target,
    canary: Option<Arc<Pool>>,
    weight: u8,
}

/// Where one module's calls go, and the current step's figures.
#[derive(Debug)]
pub struct Route {
    pub module: &'static str,
    state: RwLock<RouteState>,
    stats: Mutex<(SideStats, SideStats)>,
}

impl Route {
    pub fn new(module: &'static str, stable: Target) -> Self {
        let r = Self {
            module,
            state: RwLock::new(RouteState {
                stable,
                canary: None,
                weight: 0,
            }),
            stats: Mutex::new(Default::default()),
        };
        r.export_weight(0);
        r
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, RouteState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, RouteState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn export_weight(&self, weight: u8) {
        metrics::gauge!("agora_rollout_weight", "module" => self.module).set(f64::from(weight));
    }

    /// The side and target for a call keyed by `key` (random without one).
    pub fn pick(&self, key: Option<&str>) -> (Side, Target) {
        let s = self.read();
        let canary = match (&s.canary, s.weight) {
            (Some(c), w) if w > 0 => {
                let b = key.map_or_else(|| fastrand::u8(..100), bucket);
                (b < w).then(|| c.clone())
            }
            _ => None,
        };
        match canary {
            Some(c) => (Side::Canary, Target::Remote(c)),
            None => (Side::Stable, s.stable.clone()),
        }
    }

    /// The stable target now.
    pub fn stable(&self) -> Target {
        self.read().stable.clone()
    }

    /// Every remote pool this route may call now (for health checks).
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let s = self.read();
        s.stable
            .pool()
            .cloned()
            .into_iter()
            .chain(s.canary.clone())
            .collect()
    }

    /// Count a finished call for the running step's analysis.
    pub fn record(&self, side: Side, outcome: Outcome, latency: Duration) {
        if self.read().canary.is_none() {
            return;
        }
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let s = match side {
            Side::Stable => &mut stats.0,
            Side::Canary => &mut stats.1,
        };
        s.record(outcome == Outcome::Ok, latency);
    }

    fn reset_stats(&self) {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = Default::default();
    }

    fn canary_figures(&self) -> (u64, f64, f64) {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        (stats.1.calls, stats.1.error_rate(), stats.1.p99_ms())
    }

    fn set_canary(&self, pool: Option<Arc<Pool>>, weight: u8) {
        let mut s = self.write();
        s.canary = pool;
        s.weight = weight;
        drop(s);
        self.export_weight(weight);
    }

    fn set_weight(&self, weight: u8) {
        self.write().weight = weight;
        self.export_weight(weight);
    }

    /// Make `to` the stable target (no canary); the previous stable one.
    fn switch(&self, to: Target) -> Target {
        let mut s = self.write();
        let previous = std::mem::replace(&mut s.stable, to);
        s.canary = None;
        s.weight = 0;
        drop(s);
        self.export_weight(0);
        previous
    }
}

/// `canary` or `blue_green`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Canary,
    BlueGreen,
}

/// `progressing`, `promoted`, `rolled_back` or `aborted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Progressing,
    Promoted,
    RolledBack,
    Aborted,
}

impl State {
    fn gauge(self) -> f64 {
        match self {
            Self::Progressing => 1.0,
            Self::Promoted => 2.0,
            Self::RolledBack => 3.0,
            Self::Aborted => 4.0,
        }
    }
}

/// `advance`, `hold`, `promote` or `rollback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Advance,
    Hold,
    Promote,
    Rollback,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Advance => "advance",
            Self::Hold => "hold",
            Self::Promote => "promote",
            Self::Rollback => "rollback",
        }
    }
}

/// One judgement of the figures.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Decision {
    pub at: DateTime<Utc>,
    /// The canary's weight when judged, in percent.
    pub weight: u8,
    /// Canary calls in the step so far.
    pub samples: u64,
    /// A fraction: 0.02 is 2 %.
    pub error_rate: f64,
    pub p99_ms: f64,
    #[schema(value_type = String, example = "advance")]
    pub verdict: Verdict,
    pub reason: String,
}

/// A rollout as `GET /admin/rollouts/{module}` answers it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RolloutView {
    pub module: String,
    #[schema(value_type = String, example = "canary")]
    pub strategy: Strategy,
    #[schema(value_type = String, example = "progressing")]
    pub state: State,
    /// The canary's (green's) share in percent.
    pub weight: u8,
    /// The pool it started from (empty: this process's own module).
    pub stable_urls: Vec<String>,
    /// The canary (green) pool, as given.
    pub canary_urls: Vec<String>,
    pub decisions: Vec<Decision>,
}

/// What starting a rollout needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub strategy: Strategy,
    pub urls: Vec<String>,
    pub steps: Vec<u8>,
    pub step: Duration,
}

/// Why a rollout action was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("a rollout of the {0} module is already progressing")]
    Progressing(String),
    #[error("no rollout of the {0} module")]
    NotFound(String),
    #[error("{0}")]
    NotApplicable(String),
}

/// One rollout and its controller.
struct Rollout {
    view: Mutex<RolloutView>,
    /// The target to return to on `rollback` after a promotion.
    previous: Mutex<Option<Target>>,
    stop: CancellationToken,
}

/// The smoke test a green pool must pass: every instance ready, and a read
/// through the module's API.
#[async_trait::async_trait]
pub trait SmokeTest: Send + Sync {
    /// # Errors
    /// Why the pool is not fit for traffic.
    async fn check(&self, module: &'static str, pool: &Pool) -> Result<(), String>;
}

/// Every module's route and rollout, run on this process's runtime.
pub struct Rollouts {
    settings: RolloutSettings,
    routes: BTreeMap<&'static str, Arc<Route>>,
    rollouts: Mutex<BTreeMap<&'static str, Arc<Rollout>>>,
    smoke: Arc<dyn SmokeTest>,
    runtime: tokio::runtime::Handle,
}

const MAX_DECISIONS: usize = 200;

impl Rollouts {
    pub fn new(
        settings: RolloutSettings,
        routes: BTreeMap<&'static str, Arc<Route>>,
        smoke: Arc<dyn SmokeTest>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        for module in routes.keys() {
            metrics::gauge!("agora_rollout_state", "module" => *module).set(0.0);
        }
        Self {
            settings,
            routes,
            rollouts: Mutex::new(BTreeMap::new()),
            smoke,
            runtime,
        }
    }

    pub fn settings(&self) -> &RolloutSettings {
        &self.settings
    }

    pub fn route(&self, module: &str) -> Option<&Arc<Route>> {
        self.routes.get(module)
    }

    fn get(&self, module: &str) -> Result<Arc<Rollout>, RolloutError> {
        self.rollouts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(module)
            .cloned()
            .ok_or_else(|| RolloutError::NotFound(module.to_owned()))
    }

    /// The rollout of `module`, as it stands.
    ///
    /// # Errors
    /// [`RolloutError::NotFound`].
    pub fn view(&self, module: &str) -> Result<RolloutView, RolloutError> {
        let r = self.get(module)?;
        let v = r.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(v)
    }

    /// Start a rollout (the module is known; the plan is valid).
    ///
    /// # Errors
    /// [`RolloutError::Progressing`].
    pub fn start(
        self: &Arc<Self>,
        module: &'static str,
        plan: Plan,
    ) -> Result<RolloutView, RolloutError> {
        let route = self
            .routes
            .get(module)
            .cloned()
            .ok_or_else(|| RolloutError::NotFound(module.to_owned()))?;
        let mut all = self.rollouts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = all.get(module) {
            if r.view.lock().unwrap_or_else(|p| p.into_inner()).state == State::Progressing {
                return Err(RolloutError::Progressing(module.to_owned()));
            }
            r.stop.cancel();
        }
        let pool = Arc::new(Pool::new(module, &plan.urls));
        let rollout = Arc::new(Rollout {
            view: Mutex::new(RolloutView {
                module: module.to_owned(),
                strategy: plan.strategy,
                state: State::Progressing,
                weight: 0,
                stable_urls: route.stable().urls(),
                canary_urls: plan.urls.clone(),
                decisions: Vec::new(),
            }),
            previous: Mutex::new(None),
            stop: CancellationToken::new(),
        });
        all.insert(module, rollout.clone());
        drop(all);
        metrics::gauge!("agora_rollout_state", "module" => module).set(State::Progressing.gauge());
        tracing::info!(module, strategy = ?plan.strategy, urls = ?plan.urls, "rollout started");
        if plan.strategy == Strategy::Canary {
            // The first step starts now (the controller judges it from here).
            route.reset_stats();
            route.set_canary(Some(pool.clone()), plan.steps[0]);
            rollout
                .view
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .weight = plan.steps[0];
        }
        let this = self.clone();
        let view = rollout
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match plan.strategy {
            Strategy::Canary => {
                self.runtime
                    .spawn(this.run_canary(module, route, pool, rollout, plan));
            }
            Strategy::BlueGreen => {
                self.runtime
                    .spawn(this.run_blue_green(module, route, pool, rollout));
            }
        }
        Ok(view)
    }

    /// All traffic back to stable; the rollout ends `aborted`.
    ///
    /// # Errors
    /// [`RolloutError::NotFound`], or it is not progressing.
    pub fn abort(&self, module: &str) -> Result<RolloutView, RolloutError> {
        let r = self.get(module)?;
        let mut view = r.view.lock().unwrap_or_else(|p| p.into_inner());
        if view.state != State::Progressing {
            return Err(RolloutError::NotApplicable(format!(
                "the rollout of {module} is not progressing (it is {:?})",
                view.state
            )));
        }
        r.stop.cancel();
        if let Some(route) = self.routes.get(module) {
            route.set_canary(None, 0);
            route.reset_stats();
        }
        Ok(self.by_operator(module, &mut view, State::Aborted, "aborted by an operator"))
    }

    /// After a promotion: back to the pool it replaced.
    ///
    /// # Errors
    /// [`RolloutError::NotFound`], or it was not promoted.
    pub fn rollback(&self, module: &str) -> Result<RolloutView, RolloutError> {
        let r = self.get(module)?;
        let mut view = r.view.lock().unwrap_or_else(|p| p.into_inner());
        let previous = r.previous.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (State::Promoted, Some(previous)) = (view.state, previous) else {
            return Err(RolloutError::NotApplicable(format!(
                "the rollout of {module} was not promoted, or its previous pool is gone"
            )));
        };
        if let Some(route) = self.routes.get(module) {
            route.switch(previous);
        }
        Ok(self.by_operator(
            module,
            &mut view,
            State::RolledBack,
            "rolled back by an operator to the previous pool",
        ))
    }

    /// An operator ended the rollout in `state`: settle it and record why.
    fn by_operator(
        &self,
        module: &str,
        view: &mut RolloutView,
        state: State,
        why: &str,
    ) -> RolloutView {
        Self::settle(module, view, state, 0);
        self.decide(module, view, Verdict::Rollback, (0, 0.0, 0.0), why.into());
        view.clone()
    }

    fn decide(
        &self,
        module: &str,
        view: &mut RolloutView,
        verdict: Verdict,
        (samples, error_rate, p99_ms): (u64, f64, f64),
        reason: String,
    ) {
        let weight = view.weight;
        tracing::info!(module, weight, samples, error_rate, p99_ms, verdict = verdict.as_str(), reason = %reason, "rollout decision");
        metrics::counter!("agora_rollout_decisions_total", "module" => module.to_owned(), "verdict" => verdict.as_str())
            .increment(1);
        view.decisions.push(Decision {
            at: Utc::now(),
            weight,
            samples,
            error_rate,
            p99_ms,
            verdict,
            reason,
        });
        if view.decisions.len() > MAX_DECISIONS {
            // Keep the first and the latest; holds in between are the least telling.
            let cut = view.decisions.len() - MAX_DECISIONS;
            view.decisions.drain(1..=cut);
        }
    }

    fn finish(&self, module: &str, rollout: &Rollout, state: State, weight: u8) {
        let mut view = rollout.view.lock().unwrap_or_else(|p| p.into_inner());
        Self::settle(module, &mut view, state, weight);
    }

    /// The rollout ended in `state` with the canary at `weight`.
    fn settle(module: &str, view: &mut RolloutView, state: State, weight: u8) {
        view.state = state;
        view.weight = weight;
        metrics::gauge!("agora_rollout_state", "module" => module.to_owned()).set(state.gauge());
    }

    fn log_permanent(module: &str, urls: &[String]) {
        let key = format!("AGORA__REMOTE__{}__URLS", module.to_ascii_uppercase());
        tracing::warn!(module, setting = %key, value = %urls.join(","),
            "promoted: set {key}={} to keep this after a restart", urls.join(","));
    }

    async fn run_canary(
        self: Arc<Self>,
        module: &'static str,
        route: Arc<Route>,
        pool: Arc<Pool>,
        rollout: Arc<Rollout>,
        plan: Plan,
    ) {
        let s = self.settings.clone();
        let every = Duration::from_millis(s.evaluate_every_ms.max(10));
        let mut step = 0usize;
        let mut step_started = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = rollout.stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let figures = route.canary_figures();
            let (samples, error_rate, p99) = figures;
            let elapsed = step_started.elapsed();
            let weight = plan.steps[step];
            let mut view = rollout.view.lock().unwrap_or_else(|p| p.into_inner());
            if rollout.stop.is_cancelled() {
                return;
            }
            let crossed = samples >= s.rollback_min_samples
                && (error_rate > s.rollback_error_rate || p99 > s.rollback_p99_ms);
            if crossed {
                route.set_canary(None, 0);
                let reason = format!(
                    "error rate {:.2} % (roll back above {:.2} %), p99 {p99:.1} ms (above {} ms) over {samples} calls",
                    error_rate * 100.0,
                    s.rollback_error_rate * 100.0,
                    s.rollback_p99_ms
                );
                self.decide(module, &mut view, Verdict::Rollback, figures, reason);
                drop(view);
                self.finish(module, &rollout, State::RolledBack, 0);
                return;
            }
            let healthy = error_rate < s.promote_max_error_rate && p99 < s.promote_max_p99_ms;
            let long_enough = elapsed >= plan.step;
            if long_enough && samples >= s.min_samples && healthy {
                if step + 1 == plan.steps.len() {
                    let previous = route.switch(Target::Remote(pool.clone()));
                    *rollout.previous.lock().unwrap_or_else(|p| p.into_inner()) = Some(previous);
                    let reason = format!(
                        "{samples} calls at {weight} %: error rate {:.3} %, p99 {p99:.1} ms",
                        error_rate * 100.0
                    );
                    view.weight = 100;
                    self.decide(module, &mut view, Verdict::Promote, figures, reason);
                    drop(view);
                    self.finish(module, &rollout, State::Promoted, 100);
                    Self::log_permanent(module, &pool.urls());
                    return;
                }
                step += 1;
                let next = plan.steps[step];
                let reason = format!(
                    "{samples} calls at {weight} %: error rate {:.3} %, p99 {p99:.1} ms; on to {next} %",
                    error_rate * 100.0
                );
                self.decide(module, &mut view, Verdict::Advance, figures, reason);
                view.weight = next;
                route.reset_stats();
                route.set_weight(next);
                step_started = tokio::time::Instant::now();
                continue;
            }
            if elapsed >= plan.step * 3 {
                route.set_canary(None, 0);
                let reason = format!(
                    "inconclusive for {} s (3 × step_secs): {samples} calls, error rate {:.3} %, p99 {p99:.1} ms",
                    elapsed.as_secs(),
                    error_rate * 100.0
                );
                self.decide(module, &mut view, Verdict::Rollback, figures, reason);
                drop(view);
                self.finish(module, &rollout, State::RolledBack, 0);
                return;
            }
            let reason = if samples < s.min_samples {
                format!("{samples} of {} calls needed", s.min_samples)
            } else if !healthy {
                format!(
                    "error rate {:.3} % (advance below {:.3} %), p99 {p99:.1} ms (advance below {} ms)",
                    error_rate * 100.0,
                    s.promote_max_error_rate * 100.0,
                    s.promote_max_p99_ms
                )
            } else {
                format!(
                    "the step lasted {} of {} s",
                    elapsed.as_secs(),
                    plan.step.as_secs()
                )
            };
            self.decide(module, &mut view, Verdict::Hold, figures, reason);
        }
    }

    async fn run_blue_green(
        self: Arc<Self>,
        module: &'static str,
        route: Arc<Route>,
        pool: Arc<Pool>,
        rollout: Arc<Rollout>,
    ) {
        let smoke = self.smoke.check(module, &pool).await;
        let mut view = rollout.view.lock().unwrap_or_else(|p| p.into_inner());
        if rollout.stop.is_cancelled() {
            return;
        }
        match smoke {
            Err(why) => {
                self.decide(
                    module,
                    &mut view,
                    Verdict::Rollback,
                    (0, 0.0, 0.0),
                    format!("smoke test failed: {why}; traffic untouched"),
                );
                drop(view);
                self.finish(module, &rollout, State::RolledBack, 0);
            }
            Ok(()) => {
                let previous = route.switch(Target::Remote(pool.clone()));
                *rollout.previous.lock().unwrap_or_else(|p| p.into_inner()) = Some(previous);
                view.weight = 100;
                self.decide(module, &mut view, Verdict::Promote, (0, 0.0, 0.0), "smoke test passed: every instance ready, a read answered; all traffic switched".into());
                drop(view);
                self.finish(module, &rollout, State::Promoted, 100);
                Self::log_permanent(module, &pool.urls());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread_evenly() {
        assert_eq!(bucket("alice"), bucket("alice"));
        let mut counts = [0u32; 100];
        for i in 0..100_000 {
            counts[bucket(&format!("customer-{i}")) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 800 && *max < 1200, "{min}..{max}");
    }

    #[test]
    fn a_split_is_sticky_per_key_and_within_three_points_of_the_weight() {
        let stable = Arc::new(Pool::new("payment", &["http://stable:1".to_owned()]));
        let canary = Arc::new(Pool::new("payment", &["http://canary:1".to_owned()]));
        let route = Route::new("payment", Target::Remote(stable));
        for weight in [5u8, 25, 50] {
            route.set_canary(Some(canary.clone()), weight);
            let keys = 20_000;
            let mut on_canary = 0;
            for i in 0..keys {
                let key = format!("order-{i}");
                let (side, _) = route.pick(Some(&key));
                for _ in 0..3 {
                    assert_eq!(route.pick(Some(&key)).0, side, "sticky");
                }
                if side == Side::Canary {
                    on_canary += 1;
                }
            }
            let share = f64::from(on_canary) * 100.0 / f64::from(keys);
            assert!(
                (share - f64::from(weight)).abs() <= 3.0,
                "{weight} %: {share}"
            );
        }
        route.set_canary(None, 0);
        assert_eq!(route.pick(Some("x")).0, Side::Stable);
    }

    fn settings() -> RolloutSettings {
        RolloutSettings {
            steps: vec![5, 25, 50, 100],
            step_secs: 60,
            min_samples: 50,
            rollback_min_samples: 10,
            evaluate_every_ms: 5000,
            promote_max_error_rate: 0.001,
            promote_max_p99_ms: 200.0,
            rollback_error_rate: 0.01,
            rollback_p99_ms: 500.0,
        }
    }

    struct Passes(bool);

    #[async_trait::async_trait]
    impl SmokeTest for Passes {
        async fn check(&self, _: &'static str, _: &Pool) -> Result<(), String> {
            if self.0 {
                Ok(())
            } else {
                Err("instance not ready".into())
            }
        }
    }

    fn rollouts(smoke: bool) -> (Arc<Rollouts>, Arc<Route>) {
        let stable = Arc::new(Pool::new("payment", &["http://stable:1".to_owned()]));
        let route = Arc::new(Route::new("payment", Target::Remote(stable)));
        let routes = BTreeMap::from([("payment", route.clone())]);
        let r = Arc::new(Rollouts::new(
            settings(),
            routes,
            Arc::new(Passes(smoke)),
            tokio::runtime::Handle::current(),
        ));
        (r, route)
    }

    fn canary_plan() -> Plan {
        Plan {
            strategy: Strategy::Canary,
            urls: vec!["http://canary:1".into()],
            steps: vec![5, 25, 50, 100],
            step: Duration::from_secs(60),
        }
    }

    /// Feed `calls` canary calls of this outcome and latency, then let the
    /// paused clock run `secs`.
    async fn traffic(route: &Route, calls: u32, outcome: Outcome, ms: u64, secs: u64) {
        for _ in 0..calls {
            route.record(Side::Canary, outcome, Duration::from_millis(ms));
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_canary_is_promoted_step_by_step_and_becomes_stable() {
        let (r, route) = rollouts(true);
        r.start("payment", canary_plan()).unwrap();
        tokio::task::yield_now().await;
        for expected in [5u8, 25, 50, 100] {
            assert_eq!(r.view("payment").unwrap().weight, expected);
            traffic(&route, 60, Outcome::Ok, 20, 61).await;
        }
        let v = r.view("payment").unwrap();
        assert_eq!(v.state, State::Promoted, "{:?}", v.decisions);
        let verdicts: Vec<Verdict> = v
            .decisions
            .iter()
            .map(|d| d.verdict)
            .filter(|v| *v != Verdict::Hold)
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Advance,
                Verdict::Advance,
                Verdict::Advance,
                Verdict::Promote
            ]
        );
        assert_eq!(
            route.stable().pool().map(|p| p.urls()),
            Some(vec!["http://canary:1".to_owned()])
        );
        // Rollback after a promotion: the previous pool again.
        assert_eq!(r.rollback("payment").unwrap().state, State::RolledBack);
        assert_eq!(
            route.stable().pool().map(|p| p.urls()),
            Some(vec!["http://stable:1".to_owned()])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_canary_is_rolled_back_at_the_first_evaluation_past_the_threshold() {
        let (r, route) = rollouts(true);
        r.start("payment", canary_plan()).unwrap();
        tokio::task::yield_now().await;
        traffic(&route, 40, Outcome::Ok, 20, 6).await;
        assert_eq!(r.view("payment").unwrap().state, State::Progressing);
        traffic(&route, 2, Outcome::Error, 20, 5).await;
        let v = r.view("payment").unwrap();
        assert_eq!(v.state, State::RolledBack);
        assert_eq!(v.weight, 0);
        assert_eq!(
            v.decisions.last().map(|d| d.verdict),
            Some(Verdict::Rollback)
        );
        assert_eq!(route.pick(Some("anyone")).0, Side::Stable);
        // A slow canary too (p99 over 500 ms).
        r.start("payment", canary_plan()).unwrap();
        tokio::task::yield_now().await;
        traffic(&route, 20, Outcome::Ok, 800, 6).await;
        assert_eq!(r.view("payment").unwrap().state, State::RolledBack);
    }

    #[tokio::test(start_paused = true)]
    async fn no_data_is_never_success_and_an_inconclusive_step_rolls_back() {
        let (r, _route) = rollouts(true);
        r.start("payment", canary_plan()).unwrap();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_secs(61)).await;
        let v = r.view("payment").unwrap();
        assert_eq!((v.state, v.weight), (State::Progressing, 5), "held");
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(r.view("payment").unwrap().state, State::RolledBack);
    }

    #[tokio::test(start_paused = true)]
    async fn blue_green_switches_at_once_or_not_at_all() {
        let (r, route) = rollouts(true);
        let plan = Plan {
            strategy: Strategy::BlueGreen,
            ..canary_plan()
        };
        r.start("payment", plan.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let v = r.view("payment").unwrap();
        assert_eq!((v.state, v.weight), (State::Promoted, 100));
        assert_eq!(
            route.pick(Some("x")).1.pool().map(|p| p.urls()),
            Some(plan.urls.clone())
        );
        r.rollback("payment").unwrap();
        assert_eq!(
            route.pick(Some("x")).1.pool().map(|p| p.urls()),
            Some(vec!["http://stable:1".to_owned()])
        );

        let (r, route) = rollouts(false);
        r.start("payment", plan).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(r.view("payment").unwrap().state, State::RolledBack);
        assert_eq!(
            route.pick(Some("x")).1.pool().map(|p| p.urls()),
            Some(vec!["http://stable:1".to_owned()]),
            "traffic untouched"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_progressing_rollout_per_module_and_abort_returns_traffic() {
        let (r, route) = rollouts(true);
        r.start("payment", canary_plan()).unwrap();
        assert!(matches!(
            r.start("payment", canary_plan()),
            Err(RolloutError::Progressing(_))
        ));
        tokio::task::yield_now().await;
        let v = r.abort("payment").unwrap();
        assert_eq!((v.state, v.weight), (State::Aborted, 0));
        assert_eq!(route.pick(Some("x")).0, Side::Stable);
        assert!(
            r.start("payment", canary_plan()).is_ok(),
            "a new one may start"
        );
    }

    #[test]
    fn p99_and_error_rate_come_from_the_step_samples() {
        let mut s = SideStats::default();
        for i in 0..100 {
            s.record(i != 0, Duration::from_millis(if i < 99 { 10 } else { 900 }));
        }
        assert!((s.error_rate() - 0.01).abs() < 1e-9);
        assert!((s.p99_ms() - 10.0).abs() < 1e-9, "{}", s.p99_ms());
        s.record(true, Duration::from_millis(900));
        assert!(s.p99_ms() > 800.0);
    }
}
