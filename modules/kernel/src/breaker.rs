//! The circuit breaker: a small state machine with an injectable clock, one
//! implementation for every call agora guards — the payment module's provider
//! calls and the calls one process makes to a module in another.
//!
//! closed ──N consecutive faults──► open ──recovery timeout──► half-open
//!   ▲                               ▲                            │ one trial call
//!   └──────────── trial succeeds ───┼──────── trial faults ──────┘
//!
//! The caller decides what a fault is (time-outs, transport errors, 5xx); an
//! answer from a healthy peer — a payment decline, a 4xx — is a success (it
//! resets the run of consecutive faults and closes a half-open breaker). The
//! state is exported as `agora_circuit_breaker_state{breaker}` (0 closed,
//! 1 open, 2 half-open) and every transition is logged.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The metric the breaker's state is exported as.
pub const STATE_GAUGE: &str = "agora_circuit_breaker_state";

/// Where the breaker reads the time; tests move a [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    elapsed: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    pub fn advance(&self, by: Duration) {
        let mut e = self.elapsed.lock().unwrap_or_else(|p| p.into_inner());
        *e += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let e = *self.elapsed.lock().unwrap_or_else(|p| p.into_inner());
        self.start + e
    }
}

/// The breaker's state as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The gauge's value: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// When the breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive faults that open a closed breaker (at least 1).
    pub failure_threshold: u32,
    /// How long an open breaker fails fast before letting a trial through.
    pub recovery_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Closed { faults: u32 },
    Open { since: Instant },
    HalfOpen { trial_in_flight: bool },
}

impl Inner {
    fn state(self) -> BreakerState {
        match self {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// A call was refused without reaching the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// When the breaker may let a call through again.
    pub retry_after: Duration,
}

/// A circuit breaker; share it as `Arc<CircuitBreaker>`.
pub struct CircuitBreaker {
    name: &'static str,
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("state", &self.state())
            .finish()
    }
}

/// The right to make one call; report how it went with [`Permit::success`] or
/// [`Permit::fault`]. Dropping it unreported (the call was cancelled) frees a
/// half-open breaker's trial slot without judging the provider.
#[must_use = "report the call's outcome"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    trial: bool,
    reported: bool,
}

impl Permit<'_> {
    /// Whether this is a half-open breaker's trial call.
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    pub fn success(mut self) {
        self.reported = true;
        self.breaker.on_success(self.trial);
    }

    pub fn fault(mut self) {
        self.reported = true;
        self.breaker.on_fault(self.trial);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported && self.trial {
            self.breaker.on_abandoned_trial();
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker. `failure_threshold` below 1 is taken as 1.
    pub fn new(name: &'static str, config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        let config = BreakerConfig {
            failure_threshold: config.failure_threshold.max(1),
            ..config
        };
        let b = Self {
            name,
            config,
            clock,
            inner: Mutex::new(Inner::Closed { faults: 0 }),
        };
        b.export(BreakerState::Closed);
        b
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state (an open breaker whose timeout has passed still reads
    /// `Open` until the next call turns it half-open).
    pub fn state(&self) -> BreakerState {
        self.lock().state()
    }

    /// Consecutive faults counted while closed.
    pub fn consecutive_faults(&self) -> u32 {
        match *self.lock() {
            Inner::Closed { faults } => faults,
            _ => 0,
        }
    }

    fn export(&self, state: BreakerState) {
        metrics::gauge!(STATE_GAUGE, "breaker" => self.name).set(state.gauge_value());
    }

    fn transition(&self, inner: &mut Inner, to: Inner, why: &str) {
        let from = inner.state();
        *inner = to;
        let to = to.state();
        if from != to {
            self.export(to);
            match to {
                BreakerState::Open => tracing::warn!(
                    breaker = self.name,
                    from = from.as_str(),
                    to = to.as_str(),
                    reason = why,
                    "circuit breaker opened"
                ),
                _ => tracing::info!(
                    breaker = self.name,
                    from = from.as_str(),
                    to = to.as_str(),
                    reason = why,
                    "circuit breaker state changed"
                ),
            }
        }
    }

    /// Ask to make a call: `Err` when the breaker is open (or its half-open
    /// trial is already under way) — fail fast, the provider is not called.
    ///
    /// # Errors
    /// [`Rejected`] with how long to wait.
    pub fn acquire(&self) -> Result<Permit<'_>, Rejected> {
        let mut inner = self.lock();
        let trial = match *inner {
            Inner::Closed { .. } => false,
            Inner::Open { since } => {
                let elapsed = self.clock.now().saturating_duration_since(since);
                if elapsed < self.config.recovery_timeout {
                    return Err(Rejected {
                        retry_after: self.config.recovery_timeout - elapsed,
                    });
                }
                self.transition(
                    &mut inner,
                    Inner::HalfOpen {
                        trial_in_flight: true,
                    },
                    "recovery timeout elapsed; letting one trial call through",
                );
                true
            }
            Inner::HalfOpen { trial_in_flight } => {
                if trial_in_flight {
                    return Err(Rejected {
                        retry_after: Duration::from_secs(1),
                    });
                }
                *inner = Inner::HalfOpen {
                    trial_in_flight: true,
                };
                true
            }
        };
        Ok(Permit {
            breaker: self,
            trial,
            reported: false,
        })
    }

    fn on_success(&self, trial: bool) {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => *inner = Inner::Closed { faults: 0 },
            Inner::HalfOpen { .. } if trial => {
                self.transition(
                    &mut inner,
                    Inner::Closed { faults: 0 },
                    "trial call succeeded",
                );
            }
            // A late answer to a call made before the breaker opened proves little.
            _ => {}
        }
    }

    fn on_fault(&self, trial: bool) {
        let now = self.clock.now();
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { faults } => {
                let faults = faults + 1;
                if faults >= self.config.failure_threshold {
                    self.transition(
                        &mut inner,
                        Inner::Open { since: now },
                        "consecutive faults reached the threshold",
                    );
                } else {
                    *inner = Inner::Closed { faults };
                }
            }
            Inner::HalfOpen { .. } if trial => {
                self.transition(&mut inner, Inner::Open { since: now }, "trial call failed");
            }
            _ => {}
        }
    }

    fn on_abandoned_trial(&self) {
        let mut inner = self.lock();
        if let Inner::HalfOpen { .. } = *inner {
            *inner = Inner::HalfOpen {
                trial_in_flight: false,
            };
        }
    }
}
