//! The circuit breaker as a state machine on a clock the test moves, its
//! gauge, and the breaker around the provider (declines never count).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_payment::domain::models::ChargeResult;
use agora_payment::domain::ports::{PaymentProvider, ProviderChargeRequest, ProviderError};
use agora_payment::testing::SimulatedProvider;
use agora_payment::testing::{BreakerConfig, GuardedProvider, STATE_GAUGE};
use agora_payment::{BreakerState, CircuitBreaker, ManualClock};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};

use crate::helpers::{Backend, Harness, assert_unavailable_for, charge, charge_request};

fn breaker(threshold: u32, recovery_secs: u64) -> (CircuitBreaker, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let b = CircuitBreaker::new(
        "payment_provider",
        BreakerConfig {
            failure_threshold: threshold,
            recovery_timeout: Duration::from_secs(recovery_secs),
        },
        clock.clone(),
    );
    (b, clock)
}

/// A breaker of five faults and 30 s recovery, opened by five faults.
fn opened_breaker() -> (CircuitBreaker, Arc<ManualClock>) {
    let (b, clock) = breaker(5, 30);
    for _ in 0..5 {
        fault(&b);
    }
    assert_eq!(b.state(), BreakerState::Open);
    (b, clock)
}

/// An opened breaker whose recovery timeout has just passed: the next call
/// is its trial.
fn breaker_due_for_a_trial() -> (CircuitBreaker, Arc<ManualClock>) {
    let (b, clock) = opened_breaker();
    clock.advance(Duration::from_secs(30));
    (b, clock)
}

fn fault(b: &CircuitBreaker) {
    b.acquire().expect("a call is let through").fault();
}

fn success(b: &CircuitBreaker) {
    b.acquire().expect("a call is let through").success();
}

#[test]
fn a_closed_breaker_opens_after_five_consecutive_faults() {
    let (b, _) = breaker(5, 30);
    for n in 1..=4 {
        fault(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive_faults(), n);
    }
    fault(&b);
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn a_success_resets_the_run_of_faults() {
    let (b, _) = breaker(5, 30);
    for _ in 0..4 {
        fault(&b);
    }
    success(&b);
    assert_eq!(b.consecutive_faults(), 0);
    for _ in 0..4 {
        fault(&b);
    }
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "faults must be consecutive"
    );
}

#[test]
fn an_open_breaker_fails_fast_until_the_recovery_timeout() {
    let (b, clock) = opened_breaker();
    let rejected = b.acquire().err().expect("fails fast");
    assert_eq!(rejected.retry_after, Duration::from_secs(30));
    clock.advance(Duration::from_secs(29));
    let rejected = b.acquire().err().expect("still open");
    assert_eq!(rejected.retry_after, Duration::from_secs(1));
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn after_the_timeout_one_trial_call_goes_through_and_the_others_fail_fast() {
    let (b, _) = breaker_due_for_a_trial();
    let trial = b.acquire().expect("the trial goes through");
    assert!(trial.is_trial());
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert!(b.acquire().is_err(), "only one trial at a time");
    trial.success();
}

#[test]
fn a_successful_trial_closes_the_breaker() {
    let (b, clock) = breaker_due_for_a_trial();
    // Well past the timeout, not just at it.
    clock.advance(Duration::from_secs(1));
    success(&b);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.consecutive_faults(), 0);
    assert!(b.acquire().is_ok());
}

#[test]
fn a_failed_trial_opens_the_breaker_again_for_a_full_timeout() {
    let (b, clock) = breaker_due_for_a_trial();
    fault(&b);
    assert_eq!(b.state(), BreakerState::Open);
    let rejected = b.acquire().err().expect("open again");
    assert_eq!(rejected.retry_after, Duration::from_secs(30));
    clock.advance(Duration::from_secs(30));
    success(&b);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn an_abandoned_trial_frees_the_slot_for_the_next_call() {
    let (b, clock) = breaker(1, 10);
    fault(&b);
    clock.advance(Duration::from_secs(10));
    drop(b.acquire().expect("trial"));
    assert_eq!(b.state(), BreakerState::HalfOpen);
    let next = b.acquire().expect("the slot is free again");
    assert!(next.is_trial());
    next.success();
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn late_answers_of_calls_made_before_the_breaker_opened_do_not_move_it() {
    let (b, _) = breaker(1, 10);
    let early = b.acquire().unwrap();
    fault(&b);
    assert_eq!(b.state(), BreakerState::Open);
    early.success();
    assert_eq!(b.state(), BreakerState::Open);
}

/// Records every gauge value set under the breaker's name.
#[derive(Default, Clone)]
struct GaugeLog(Arc<Mutex<Vec<(String, f64)>>>);

struct LoggedGauge {
    labels: String,
    log: GaugeLog,
}

impl GaugeFn for LoggedGauge {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, value: f64) {
        self.log
            .0
            .lock()
            .unwrap()
            .push((self.labels.clone(), value));
    }
}

struct NoCounter;
impl CounterFn for NoCounter {
    fn increment(&self, _: u64) {}
    fn absolute(&self, _: u64) {}
}

impl Recorder for GaugeLog {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(NoCounter))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        if key.name() != STATE_GAUGE {
            return Gauge::noop();
        }
        let labels = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect::<Vec<_>>()
            .join(",");
        Gauge::from_arc(Arc::new(LoggedGauge {
            labels,
            log: self.clone(),
        }))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn the_state_is_exported_as_a_gauge_on_every_transition() {
    let log = GaugeLog::default();
    metrics::with_local_recorder(&log, || {
        let (b, clock) = breaker(2, 5);
        fault(&b);
        fault(&b);
        clock.advance(Duration::from_secs(5));
        let trial = b.acquire().unwrap();
        trial.fault();
        clock.advance(Duration::from_secs(5));
        success(&b);
    });
    let values: Vec<f64> = log.0.lock().unwrap().iter().map(|(_, v)| *v).collect();
    // closed (start), open, half-open, open, half-open, closed
    assert_eq!(values, [0.0, 1.0, 2.0, 1.0, 2.0, 0.0]);
    assert!(
        log.0
            .lock()
            .unwrap()
            .iter()
            .all(|(labels, _)| labels == "breaker=payment_provider")
    );
}

fn provider_call(method: &str) -> ProviderChargeRequest {
    let req = charge_request("alice", 100, method);
    ProviderChargeRequest {
        idempotency_key: "k".into(),
        payment_id: agora_payment::domain::models::PaymentId::new(),
        order_id: req.order_id,
        customer_id: req.customer_id,
        amount: req.amount,
        payment_method: req.payment_method,
    }
}

#[tokio::test]
async fn declines_never_count_as_faults_but_processing_errors_do() {
    let (b, _) = breaker(5, 30);
    let b = Arc::new(b);
    let guarded = GuardedProvider::new(Arc::new(SimulatedProvider::new(Duration::ZERO)), b.clone());
    for _ in 0..20 {
        let r = guarded.charge(&provider_call("tok_chargeDeclined")).await;
        assert!(matches!(r, Ok(ChargeResult::Declined { .. })));
    }
    assert_eq!(b.state(), BreakerState::Closed);
    for _ in 0..5 {
        let r = guarded.charge(&provider_call("tok_processing_error")).await;
        assert!(matches!(r, Err(ProviderError::Fault { .. })));
    }
    assert_eq!(b.state(), BreakerState::Open);
    let r = guarded.charge(&provider_call("tok_visa")).await;
    assert!(
        matches!(r, Err(ProviderError::Unavailable { retry_after }) if retry_after == Duration::from_secs(30)),
        "fails fast without calling the provider: {r:?}"
    );
}

#[tokio::test]
async fn the_module_fails_fast_with_retry_after_while_the_breaker_is_open_and_recovers() {
    let Some(h) = Harness::start_with(Backend::Sqlite, |s| {
        s.breaker.failure_threshold = 2;
        s.breaker.recovery_timeout_secs = 30;
    })
    .await
    else {
        return;
    };
    for _ in 0..2 {
        let err = charge(&h.api, "alice", 100, "tok_processing_error")
            .await
            .unwrap_err();
        assert_unavailable_for(&err, 1);
    }
    assert_eq!(h.module.breaker().state(), BreakerState::Open);
    let err = charge(&h.api, "alice", 100, "tok_visa").await.unwrap_err();
    assert_unavailable_for(&err, 30);
    h.clock.advance(Duration::from_secs(30));
    let ok = charge(&h.api, "alice", 100, "tok_visa").await.unwrap();
    assert!(ok.charged_now);
    assert_eq!(h.module.breaker().state(), BreakerState::Closed);
}
