//! The breaker (circuit breaker) of one endpoint (SPEC §7): a small state machine fed by classified
//! outcomes.
//!
//! - `closed`: every call is admitted. It opens after `consecutive_failures` failures in a
//!   row, or when at least `min_calls` of the last `window` calls are known and at least
//!   `failure_rate_percent` of them failed.
//! - `open`: nothing is admitted until the open period ends (1 s at first, doubling with
//!   jitter up to `open_max` while probes keep failing); a passing health check ends it at
//!   once.
//! - `half_open`: at most `half_open_probes` probe calls are admitted; as many successes
//!   close the breaker, one failure opens it again for a longer period.
//!
//! Time is passed in (`tokio::time::Instant`), so tests run with paused time, and jitter is
//! a function, so tests use none.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::BreakerConfig;

/// The breaker states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Calls flow.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// A few probe calls test the endpoint.
    HalfOpen,
}

impl State {
    /// The state's name (`closed`, `open`, `half_open`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The `rustle_breaker_state` gauge value: 0 closed, 1 half-open, 2 open.
    #[must_use]
    pub fn gauge(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

/// A change of state, for logs and `rustle_breaker_transitions_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// The rule and the numbers that caused it.
    pub reason: String,
}

/// What kind of call a breaker admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// A call while closed.
    Normal,
    /// A probe while half-open.
    Probe,
}

/// Adds jitter to an open period.
pub type Jitter = fn(Duration) -> Duration;

/// Up to +20 % of the period, so breakers of endpoints that failed together do not probe
/// in lockstep.
#[must_use]
pub fn default_jitter(period: Duration) -> Duration {
    period.mul_f64(1.0 + fastrand::f64() * 0.2)
}

/// No jitter (tests).
#[must_use]
pub fn no_jitter(period: Duration) -> Duration {
    period
}

#[derive(Debug, Clone)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

/// One endpoint's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    jitter: Jitter,
    phase: Phase,
    /// Outcomes of the last `window` calls while closed (`true` = failure).
    window: VecDeque<bool>,
    consecutive_failures: u32,
    /// The next open period (grows while probes fail).
    next_open: Duration,
    reason: String,
}

impl Breaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(config: BreakerConfig, jitter: Jitter) -> Self {
        let next_open = config.open;
        Self {
            config,
            jitter,
            phase: Phase::Closed,
            window: VecDeque::new(),
            consecutive_failures: 0,
            next_open,
            reason: "no failures yet".into(),
        }
    }

    /// The current state (an elapsed open period still reads `open` until a call or a
    /// health check moves it on).
    #[must_use]
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Closed => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Why the breaker is in its state.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Failures in a row.
    #[must_use]
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When an open breaker admits its first probe.
    #[must_use]
    pub fn next_probe(&self) -> Option<Instant> {
        match self.phase {
            Phase::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Whether a call would be admitted now (without admitting it).
    #[must_use]
    pub fn available(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Closed => true,
            Phase::Open { until } => now >= until,
            Phase::HalfOpen { in_flight, .. } => in_flight < self.config.half_open_probes,
        }
    }

    fn transition(&mut self, phase: Phase, reason: String) -> Transition {
        let from = self.state();
        self.phase = phase;
        self.reason.clone_from(&reason);
        Transition {
            from,
            to: self.state(),
            reason,
        }
    }

    fn open(&mut self, now: Instant, reason: &str) -> Transition {
        let period = (self.jitter)(self.next_open).min(self.config.open_max);
        self.next_open = self.next_open.saturating_mul(2).min(self.config.open_max);
        self.window.clear();
        self.transition(
            Phase::Open {
                until: now + period,
            },
            format!("{reason}; open for {} ms", period.as_millis()),
        )
    }

    /// Admits a call (`Some(permit)`) or refuses it (`None`). An elapsed open period turns
    /// half-open here; the transition, if any, comes second.
    pub fn acquire(&mut self, now: Instant) -> (Option<Permit>, Option<Transition>) {
        match self.phase {
            Phase::Closed => (Some(Permit::Normal), None),
            Phase::Open { until } if now >= until => {
                let t = self.transition(
                    Phase::HalfOpen {
                        in_flight: 1,
                        successes: 0,
                    },
                    "open period over: probing".into(),
                );
                (Some(Permit::Probe), Some(t))
            }
            Phase::HalfOpen {
                ref mut in_flight, ..
            } if *in_flight < self.config.half_open_probes => {
                *in_flight += 1;
                (Some(Permit::Probe), None)
            }
            Phase::Open { .. } | Phase::HalfOpen { .. } => (None, None),
        }
    }

    /// Records the outcome of an admitted call.
    pub fn record(&mut self, permit: Permit, failed: bool, now: Instant) -> Option<Transition> {
        if failed {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        } else {
            self.consecutive_failures = 0;
        }
        match (&mut self.phase, permit) {
            (Phase::Closed, Permit::Normal) => {
                self.window.push_back(failed);
                while self.window.len() > self.config.window as usize {
                    self.window.pop_front();
                }
                self.check_closed(now)
            }
            (
                Phase::HalfOpen {
                    in_flight,
                    successes,
                },
                Permit::Probe,
            ) => {
                *in_flight = in_flight.saturating_sub(1);
                if failed {
                    return Some(self.open(now, "a probe failed"));
                }
                *successes += 1;
                if *successes >= self.config.half_open_probes {
                    let probes = self.config.half_open_probes;
                    self.next_open = self.config.open;
                    return Some(
                        self.transition(Phase::Closed, format!("{probes} probes succeeded")),
                    );
                }
                None
            }
            // A call admitted before the state changed: its outcome says nothing new.
            _ => None,
        }
    }

    /// Returns a permit whose call said nothing about the endpoint (it was abandoned, or
    /// ran out of the client's own deadline before the attempt timeout): a probe slot is
    /// freed, nothing is counted.
    pub fn release(&mut self, permit: Permit) {
        if let (Phase::HalfOpen { in_flight, .. }, Permit::Probe) = (&mut self.phase, permit) {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    fn check_closed(&mut self, now: Instant) -> Option<Transition> {
        let threshold = self.config.consecutive_failures;
        if self.consecutive_failures >= threshold {
            let reason = format!(
                "{} consecutive failures (threshold {threshold})",
                self.consecutive_failures
            );
            return Some(self.open(now, &reason));
        }
        let calls = self.window.len();
        let failures = self.window.iter().filter(|f| **f).count();
        let rate = self.config.failure_rate_percent as usize;
        if calls >= self.config.min_calls as usize && failures * 100 >= rate * calls {
            let reason = format!(
                "{failures} of the last {calls} calls failed ({}% >= {rate}%)",
                failures * 100 / calls.max(1)
            );
            return Some(self.open(now, &reason));
        }
        None
    }

    /// A passing active health check: an open breaker moves to half-open at once.
    pub fn health_passed(&mut self) -> Option<Transition> {
        match self.phase {
            Phase::Open { .. } => Some(self.transition(
                Phase::HalfOpen {
                    in_flight: 0,
                    successes: 0,
                },
                "health check passed: probing".into(),
            )),
            _ => None,
        }
    }

    /// Applies reloaded thresholds; the state and its history stay.
    pub fn set_config(&mut self, config: BreakerConfig) {
        self.next_open = self
            .next_open
            .clamp(config.open, config.open_max.max(config.open));
        self.config = config;
    }

    /// The open period the next opening will use (for status).
    #[must_use]
    pub fn next_open_period(&self) -> Duration {
        self.next_open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate_percent: 50,
            window: 20,
            min_calls: 10,
            open: Duration::from_secs(1),
            open_max: Duration::from_secs(30),
            half_open_probes: 3,
        }
    }

    fn call(b: &mut Breaker, failed: bool) -> Option<Transition> {
        let now = Instant::now();
        let (permit, _) = b.acquire(now);
        let permit = permit.expect("admitted");
        b.record(permit, failed, now)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_five_consecutive_failures() {
        let mut b = Breaker::new(config(), no_jitter);
        for _ in 0..4 {
            assert_eq!(call(&mut b, true), None);
        }
        let t = call(&mut b, true).expect("opens");
        assert_eq!((t.from, t.to), (State::Closed, State::Open));
        assert!(
            t.reason.starts_with("5 consecutive failures"),
            "{}",
            t.reason
        );
        assert_eq!(b.acquire(Instant::now()).0, None, "open refuses calls");
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_the_failure_rate_over_the_window() {
        let mut b = Breaker::new(config(), no_jitter);
        // alternate: never 5 in a row, but 50% failures once 10 calls are known
        for i in 0..9 {
            assert_eq!(call(&mut b, i % 2 == 0), None, "call {i}");
        }
        let t = call(&mut b, true).expect("opens at 10 calls");
        assert!(
            t.reason.contains("6 of the last 10 calls failed"),
            "{}",
            t.reason
        );
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_rate_or_the_minimum_it_stays_closed() {
        let mut b = Breaker::new(config(), no_jitter);
        for i in 0..40 {
            // one failure in three: 33% < 50%
            assert_eq!(call(&mut b, i % 3 == 0), None);
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_three_probes_and_three_successes_close() {
        let mut b = Breaker::new(config(), no_jitter);
        for _ in 0..5 {
            call(&mut b, true);
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(b.acquire(Instant::now()).0, None, "still open");
        tokio::time::advance(Duration::from_millis(1)).await;
        let now = Instant::now();
        let (p1, t) = b.acquire(now);
        assert_eq!(t.map(|t| t.to), Some(State::HalfOpen));
        let (p2, _) = b.acquire(now);
        let (p3, _) = b.acquire(now);
        assert_eq!(b.acquire(now).0, None, "a fourth probe is refused");
        for (i, p) in [p1, p2, p3].into_iter().enumerate() {
            let t = b.record(p.expect("probe"), false, now);
            if i < 2 {
                assert_eq!(t, None);
            } else {
                assert_eq!(t.map(|t| t.to), Some(State::Closed));
            }
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_probes_double_the_open_period_up_to_the_cap() {
        let mut b = Breaker::new(config(), no_jitter);
        for _ in 0..5 {
            call(&mut b, true);
        }
        let mut expected = Duration::from_secs(1);
        for _ in 0..8 {
            let opened = Instant::now();
            assert_eq!(b.next_probe(), Some(opened + expected));
            tokio::time::advance(expected).await;
            let t = call(&mut b, true).expect("the probe fails and reopens");
            assert_eq!(t.to, State::Open);
            expected = (expected * 2).min(Duration::from_secs(30));
        }
        assert_eq!(
            b.next_probe(),
            Some(Instant::now() + Duration::from_secs(30))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_passing_health_check_ends_the_open_period() {
        let mut b = Breaker::new(config(), no_jitter);
        for _ in 0..5 {
            call(&mut b, true);
        }
        let t = b.health_passed().expect("half-open");
        assert_eq!((t.from, t.to), (State::Open, State::HalfOpen));
        assert!(b.available(Instant::now()));
        assert_eq!(b.health_passed(), None, "only from open");
    }

    #[tokio::test(start_paused = true)]
    async fn closing_resets_the_open_period() {
        let mut b = Breaker::new(config(), no_jitter);
        for _ in 0..5 {
            call(&mut b, true);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        call(&mut b, true); // probe fails: next period 2 s... then 4 s
        assert_eq!(b.next_open_period(), Duration::from_secs(4));
        b.health_passed();
        for _ in 0..3 {
            call(&mut b, false);
        }
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.next_open_period(), Duration::from_secs(1));
    }

    #[test]
    fn default_jitter_adds_at_most_a_fifth() {
        for _ in 0..1000 {
            let d = default_jitter(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(10) && d <= Duration::from_secs(12));
        }
    }

    #[test]
    fn gauge_values() {
        assert_eq!(State::Closed.gauge(), 0);
        assert_eq!(State::HalfOpen.gauge(), 1);
        assert_eq!(State::Open.gauge(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_probe_frees_its_slot_and_counts_nothing() {
        let mut b = Breaker::new(config(), no_jitter);
        for _ in 0..5 {
            call(&mut b, true);
        }
        b.health_passed();
        let now = Instant::now();
        let probes: Vec<Permit> = (0..3)
            .map(|_| b.acquire(now).0.expect("a probe slot"))
            .collect();
        assert_eq!(b.acquire(now).0, None, "all three slots taken");
        for p in probes {
            b.release(p);
        }
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(
            b.acquire(now).0,
            Some(Permit::Probe),
            "the slots are free again"
        );
        assert_eq!(b.consecutive_failures(), 5, "nothing was counted");
    }
}
