//! One BZZZ node and what the gateway knows of it: its breaker, its load (peak
//! EWMA latency, requests in flight), its health, a `Retry-After` it asked for, its last
//! error, and its gauges. Every change is made under the endpoint's lock and published to
//! the gauges at once; transitions are logged and counted.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::ucxi::AttemptError;
use crate::backend::{BreakerStatus, EndpointStatus};
use crate::config::{BreakerConfig, EndpointUrl};
use crate::resilience::balance::Load;
use crate::resilience::breaker::{self, Breaker, Permit, State, Transition};

/// Consecutive health results that flip an endpoint up or down (hysteresis).
pub const HEALTH_THRESHOLD: u32 = 2;
/// An endpoint with requests in flight and no answer for this long (at least; more for
/// a slow one: [`STALL_FACTOR`] times when its answers are late) is stalled: a hung node
/// (a paused VM, a stalled disk) accepts connections and never answers, and neither
/// health checks (every interval) nor timeouts (per attempt) notice it as soon.
pub const STALL_MIN: Duration = Duration::from_millis(250);
/// See [`STALL_MIN`].
pub const STALL_FACTOR: u32 = 8;

/// What an endpoint knows of itself.
#[derive(Debug)]
pub(crate) struct EndpointState {
    pub(crate) breaker: Breaker,
    pub(crate) load: Load,
    pub(crate) up: bool,
    pub(crate) passes: u32,
    pub(crate) failures: u32,
    pub(crate) skip_until: Option<Instant>,
    /// The last error, without dependency error text (status and client answers show it;
    /// the full text goes to the log).
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_at: Option<DateTime<Utc>>,
    pub(crate) last_health: Option<DateTime<Utc>>,
    /// When the endpoint last made progress: answered (or failed) an attempt, or got its
    /// first request in flight after being idle.
    pub(crate) progress: Instant,
}

/// One BZZZ node and what the gateway knows of it.
#[derive(Debug)]
pub struct Endpoint {
    url: EndpointUrl,
    state: Mutex<EndpointState>,
    gauges: Gauges,
    counters: Counters,
}

/// The endpoint's gauges, registered once: a handle update is an atomic store, where a
/// `gauge!` with labels built the key and looked it up on every request.
#[derive(Debug)]
struct Gauges {
    breaker_state: metrics::Gauge,
    /// `rustle_circuit_state`: the deprecated name of `rustle_breaker_state`, kept one
    /// release so dashboards and alerts can move.
    circuit_state: metrics::Gauge,
    up: metrics::Gauge,
    latency_ewma: metrics::Gauge,
}

impl Gauges {
    fn new(url: &str) -> Self {
        // The transitions into `open` exist from the start at 0: Prometheus's `increase()`
        // takes a series' first sample as its baseline, so a series born at 1 would hide the
        // first opening from the flapping alert.
        for name in [
            "rustle_breaker_transitions_total",
            "rustle_circuit_transitions_total",
        ] {
            for from in ["closed", "half_open"] {
                metrics::counter!(
                    name,
                    "endpoint" => url.to_owned(),
                    "from" => from,
                    "to" => "open"
                )
                .increment(0);
            }
        }
        Self {
            breaker_state: metrics::gauge!("rustle_breaker_state", "endpoint" => url.to_owned()),
            circuit_state: metrics::gauge!("rustle_circuit_state", "endpoint" => url.to_owned()),
            up: metrics::gauge!("rustle_endpoint_up", "endpoint" => url.to_owned()),
            latency_ewma: metrics::gauge!(
                "rustle_endpoint_latency_ewma_seconds",
                "endpoint" => url.to_owned()
            ),
        }
    }
}

/// The labels of `rustle_backend_attempts_total` (`ok` first, then the errors of
/// [`outcome_label`]); `rustle_retries_total`'s reasons are the errors.
const OUTCOMES: [&str; 7] = [
    "ok",
    "connect_error",
    "timeout",
    "too_many_requests",
    "unavailable",
    "bad_answer",
    "credentials_refused",
];

/// The endpoint's counters, registered once, when the endpoint is made (a reload that adds
/// an endpoint makes its counters, one that keeps it keeps them): an attempt increments an
/// atomic, where `counter!` with labels built the key and looked it up every time. Every
/// outcome's series exists from then on, at 0, so `increase()` sees its first one.
#[derive(Debug)]
struct Counters {
    /// `rustle_backend_attempts_total`, by outcome ([`OUTCOMES`]).
    attempts: [metrics::Counter; OUTCOMES.len()],
    /// `rustle_retries_total`, by reason ([`OUTCOMES`] without `ok`).
    retries: [metrics::Counter; OUTCOMES.len() - 1],
}

impl Counters {
    fn new(url: &str) -> Self {
        Self {
            attempts: std::array::from_fn(|i| {
                metrics::counter!(
                    "rustle_backend_attempts_total",
                    "endpoint" => url.to_owned(),
                    "outcome" => OUTCOMES[i]
                )
            }),
            retries: std::array::from_fn(|i| {
                metrics::counter!(
                    "rustle_retries_total",
                    "endpoint" => url.to_owned(),
                    "reason" => OUTCOMES[i + 1]
                )
            }),
        }
    }
}

/// What a health check result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthChange {
    /// The endpoint was down and is up now.
    pub came_up: bool,
    /// The endpoint is down but passed: the next check should come soon to confirm it.
    pub confirming: bool,
}

/// The label of `rustle_backend_attempts_total` and `rustle_retries_total` for an error.
#[must_use]
pub fn outcome_label(e: &AttemptError) -> &'static str {
    OUTCOMES[outcome_index(e)]
}

/// Where `e`'s label is in [`OUTCOMES`] (never 0, `ok`).
fn outcome_index(e: &AttemptError) -> usize {
    match e {
        AttemptError::Connect(_) => 1,
        AttemptError::Timeout(_) => 2,
        AttemptError::Unavailable { status: 429, .. } => 3,
        AttemptError::Unavailable { .. } => 4,
        AttemptError::BadAnswer(_) | AttemptError::WrongAddress(_) => 5,
        AttemptError::Credentials(_) => 6,
    }
}

impl Endpoint {
    /// A fresh endpoint: up, breaker closed, no latency known.
    #[must_use]
    pub fn new(url: EndpointUrl, breaker_config: BreakerConfig, jitter: breaker::Jitter) -> Self {
        let endpoint = Self {
            gauges: Gauges::new(url.as_str()),
            counters: Counters::new(url.as_str()),
            url,
            state: Mutex::new(EndpointState {
                breaker: Breaker::new(breaker_config, jitter),
                load: Load::new(Instant::now()),
                up: true,
                passes: 0,
                failures: 0,
                skip_until: None,
                last_error: None,
                last_error_at: None,
                last_health: None,
                progress: Instant::now(),
            }),
        };
        endpoint.publish(&endpoint.lock());
        endpoint
    }

    /// Its URL.
    #[must_use]
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Its URL, parsed.
    #[must_use]
    pub fn endpoint_url(&self) -> &EndpointUrl {
        &self.url
    }

    // State changes are single assignments under the lock, so a poisoned lock still holds
    // consistent state.
    pub(crate) fn lock(&self) -> MutexGuard<'_, EndpointState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn available_in(state: &EndpointState, now: Instant) -> bool {
        state.up
            && state.skip_until.is_none_or(|t| now >= t)
            && state.breaker.available(now)
            && !Self::stalled_in(state, now)
    }

    /// True when requests are in flight and nothing was answered for longer than the
    /// stall time: new requests go elsewhere until it answers or its attempts time out.
    fn stalled_in(state: &EndpointState, now: Instant) -> bool {
        let stall_after = (state.load.late_after() * STALL_FACTOR).max(STALL_MIN);
        state.load.in_flight() > 0 && now.saturating_duration_since(state.progress) > stall_after
    }

    /// Whether it would take a request now (up, breaker admitting, no `Retry-After`).
    #[must_use]
    pub fn available(&self, now: Instant) -> bool {
        Self::available_in(&self.lock(), now)
    }

    /// Whether it is available with its breaker closed (takes any number of calls, where
    /// a half-open one admits a few probes).
    #[must_use]
    pub fn closed_and_available(&self, now: Instant) -> bool {
        let state = self.lock();
        Self::available_in(&state, now) && state.breaker.state() == State::Closed
    }

    /// Asks the breaker to admit a call now (publishing and logging any transition).
    pub(crate) fn admit(&self, now: Instant) -> Option<Permit> {
        let mut state = self.lock();
        let (permit, transition) = state.breaker.acquire(now);
        self.publish(&state);
        drop(state);
        self.transitioned(transition);
        permit
    }

    /// Counts an admitted call as started (in flight).
    pub(crate) fn start(&self) {
        let mut state = self.lock();
        if state.load.in_flight() == 0 {
            state.progress = Instant::now();
        }
        state.load.start();
    }

    /// Gives back a permit whose call never completed (the request was abandoned, or
    /// another endpoint answered first) after `waited`.
    pub(crate) fn release(&self, permit: Permit, waited: Duration) {
        let mut state = self.lock();
        state.breaker.release(permit);
        state.load.cancel(waited, Instant::now());
        self.publish(&state);
    }

    /// Counts a retry after this endpoint failed with `e`.
    pub(crate) fn retried(&self, e: &AttemptError) {
        self.counters.retries[outcome_index(e) - 1].increment(1);
    }

    /// When an answer of this endpoint is late: a request still waiting then is hedged.
    #[must_use]
    pub fn late_after(&self) -> Duration {
        self.lock().load.late_after()
    }

    /// Records an attempt's outcome; true when its breaker closed again.
    ///
    /// A failure counts as an answer as slow as `attempt_timeout`: a node that fails fast
    /// must not look like the fastest one to the balancer.
    pub(crate) fn record(
        &self,
        permit: Permit,
        outcome: Result<(), &AttemptError>,
        rtt: Duration,
        attempt_timeout: Duration,
    ) -> bool {
        let now = Instant::now();
        self.counters.attempts[outcome.err().map_or(0, outcome_index)].increment(1);
        let sample = if outcome.is_err() {
            rtt.max(attempt_timeout)
        } else {
            rtt
        };
        let mut state = self.lock();
        state.load.finish(sample, now, outcome.is_ok());
        state.progress = now;
        let before = state.breaker.state();
        let transition = state.breaker.record(permit, outcome.is_err(), now);
        if let Err(e) = outcome {
            state.last_error = Some(e.public());
            state.last_error_at = Some(Utc::now());
            if let AttemptError::Unavailable {
                retry_after: Some(wait),
                ..
            } = e
            {
                state.skip_until = Some(now + *wait);
            }
        }
        let closed = before != State::Closed && state.breaker.state() == State::Closed;
        self.publish(&state);
        drop(state);
        self.transitioned(transition);
        closed
    }

    /// Records a health check: `error` is the public description and the full cause of a
    /// failed one.
    pub(crate) fn health_result(
        &self,
        passed: bool,
        error: Option<(String, String)>,
    ) -> HealthChange {
        let mut state = self.lock();
        state.last_health = Some(Utc::now());
        let mut came_up = false;
        let mut transition = None;
        if passed {
            state.passes = state.passes.saturating_add(1);
            state.failures = 0;
            transition = state.breaker.health_passed();
            if !state.up && state.passes >= HEALTH_THRESHOLD {
                state.up = true;
                came_up = true;
            }
        } else {
            state.failures = state.failures.saturating_add(1);
            state.passes = 0;
            let (public, cause) = error.unwrap_or_default();
            state.last_error = Some(public);
            state.last_error_at = Some(Utc::now());
            if state.up && state.failures >= HEALTH_THRESHOLD {
                state.up = false;
                tracing::warn!(
                    endpoint = self.url(),
                    failures = state.failures,
                    error = %cause,
                    "endpoint down: health checks failing"
                );
            }
        }
        let confirming = passed && !state.up;
        self.publish(&state);
        drop(state);
        self.transitioned(transition);
        if came_up {
            tracing::info!(endpoint = self.url(), "endpoint up: health checks passing");
        }
        HealthChange {
            came_up,
            confirming,
        }
    }

    /// Applies reloaded breaker thresholds.
    pub(crate) fn set_breaker_config(&self, config: BreakerConfig) {
        self.lock().breaker.set_config(config);
    }

    /// Why it would not take a request now (for answers when nothing was tried), with its
    /// last error.
    pub(crate) fn known_error(&self, now: Instant) -> String {
        let s = self.lock();
        let why = if !s.up {
            "down (health checks failing)".to_owned()
        } else if Self::stalled_in(&s, now) {
            format!(
                "stalled ({} requests in flight, no answer for {} ms)",
                s.load.in_flight(),
                now.saturating_duration_since(s.progress).as_millis()
            )
        } else if s.skip_until.is_some_and(|t| t > now) {
            "skipped (Retry-After)".to_owned()
        } else if !s.breaker.available(now) {
            format!(
                "breaker {}: {}",
                s.breaker.state().as_str(),
                s.breaker.reason()
            )
        } else {
            "available".to_owned()
        };
        let last = s
            .last_error
            .as_ref()
            .map_or_else(String::new, |l| format!("; last error: {l}"));
        format!("{why}{last}")
    }

    /// Its load, for the balancer.
    pub(crate) fn load(&self) -> Load {
        self.lock().load.clone()
    }

    /// The gauges of this endpoint.
    fn publish(&self, state: &EndpointState) {
        let g = &self.gauges;
        let breaker = f64::from(state.breaker.state().gauge());
        g.breaker_state.set(breaker);
        g.circuit_state.set(breaker);
        g.up.set(if state.up { 1.0 } else { 0.0 });
        g.latency_ewma.set(state.load.ewma().as_secs_f64());
    }

    fn transitioned(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        tracing::warn!(
            endpoint = self.url(),
            from = t.from.as_str(),
            to = t.to.as_str(),
            reason = %t.reason,
            "breaker changed state"
        );
        for name in [
            "rustle_breaker_transitions_total",
            "rustle_circuit_transitions_total",
        ] {
            metrics::counter!(
                name,
                "endpoint" => self.url().to_owned(),
                "from" => t.from.as_str(),
                "to" => t.to.as_str()
            )
            .increment(1);
        }
    }

    /// Marks its gauges gone (NaN) when a reload removes it.
    pub(crate) fn retire(&self) {
        let url = self.url().to_owned();
        for name in [
            "rustle_breaker_state",
            "rustle_circuit_state",
            "rustle_endpoint_up",
            "rustle_endpoint_latency_ewma_seconds",
        ] {
            metrics::gauge!(name, "endpoint" => url.clone()).set(f64::NAN);
        }
    }

    /// What `/v1/status` shows.
    pub(crate) fn status(&self, now: Instant) -> EndpointStatus {
        let s = self.lock();
        let wall = |at: Instant| {
            let ahead = at.saturating_duration_since(now);
            Utc::now() + chrono::Duration::from_std(ahead).unwrap_or_default()
        };
        EndpointStatus {
            url: self.url().to_owned(),
            up: s.up,
            available: Self::available_in(&s, now),
            stalled: Self::stalled_in(&s, now),
            breaker: BreakerStatus {
                state: s.breaker.state().as_str().to_owned(),
                reason: s.breaker.reason().to_owned(),
                consecutive_failures: s.breaker.consecutive_failures(),
                next_probe: s.breaker.next_probe().map(wall),
                next_open_ms: u64::try_from(s.breaker.next_open_period().as_millis())
                    .unwrap_or(u64::MAX),
            },
            ewma_latency_ms: s.load.ewma_at(now).as_secs_f64() * 1e3,
            in_flight: s.load.in_flight(),
            last_error: s.last_error.clone(),
            last_error_at: s.last_error_at,
            last_health_check: s.last_health,
            health_passes: s.passes,
            health_failures: s.failures,
            skipped_until: s.skip_until.filter(|t| *t > now).map(wall),
        }
    }
}

/// An admitted attempt whose outcome is not recorded yet; dropped unrecorded (abandoned,
/// or another endpoint answered first), it gives its permit back and counts as no failure,
/// but how long it waited still tells the balancer the endpoint is at least that slow.
pub(crate) struct Unrecorded<'a> {
    pub(crate) endpoint: &'a Endpoint,
    pub(crate) permit: Option<Permit>,
    pub(crate) started: Instant,
}

impl Drop for Unrecorded<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.endpoint.release(permit, self.started.elapsed());
        }
    }
}
