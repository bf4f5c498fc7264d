//! The BZZZ endpoints as one resilient service (SPEC §7): every call to the cluster goes
//! through [`Cluster::execute`] (one request, retried elsewhere) or
//! [`Cluster::fan_out`] (one call per available endpoint), which apply the request
//! deadline, the per-attempt timeout, retry classification, full-jitter backoff, the retry
//! budget, `Retry-After`, the per-endpoint circuit breakers and P2C peak-EWMA balancing.
//! A background task runs the active health checks. Handlers never see any of it.
//!
//! The cluster outlives mode switches and reloads: breaker, health and latency state stay
//! with each endpoint URL, and a reload that keeps a URL keeps its state.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ucxi::{Answer, AttemptError, AttemptSpec, ClientError, ClientSettings, NodeClient};
use crate::backend::{BreakerStatus, Call, EndpointStatus};
use crate::config::{BreakerConfig, Config, EndpointUrl, RetryConfig};
use crate::resilience::balance::{Load, p2c};
use crate::resilience::breaker::{self, Breaker, Permit, State, Transition};
use crate::resilience::retry::{self, Backoff, RetryBudget};

/// Consecutive health results that flip an endpoint up or down (hysteresis).
pub const HEALTH_THRESHOLD: u32 = 2;
/// A down endpoint that passed a health check is checked again after this fraction of the
/// health interval.
const CONFIRM_DIVISOR: u32 = 4;

/// The resilience settings that a reload may change.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Per-attempt timeout.
    pub attempt_timeout: Duration,
    /// Retries and budget.
    pub retry: RetryConfig,
    /// Breaker thresholds.
    pub breaker: BreakerConfig,
    /// Health check period.
    pub health_interval: Duration,
    /// Health check timeout.
    pub health_timeout: Duration,
    /// How the gateway connects to nodes (the HTTP client is rebuilt when it changes).
    pub client: ClientSettings,
    /// Largest answer about one envelope; list answers may be
    /// [`LIST_ANSWER_FACTOR`] times larger.
    pub max_answer_bytes: usize,
}

/// How much larger than an envelope answer a list answer (history, discover) may be.
pub const LIST_ANSWER_FACTOR: usize = 8;
/// Largest health check answer.
const HEALTH_ANSWER_BYTES: usize = 64 << 10;

impl Policy {
    /// The policy of `config`.
    #[must_use]
    pub fn of(config: &Config) -> Self {
        Self {
            attempt_timeout: config.attempt_timeout,
            retry: config.retry.clone(),
            breaker: config.breaker.clone(),
            health_interval: config.health_interval,
            health_timeout: config.health_timeout,
            client: ClientSettings::of(config),
            max_answer_bytes: config.max_answer_bytes,
        }
    }
}

/// Randomness, injected so tests run without it.
#[derive(Debug, Clone, Copy)]
pub struct Jitters {
    /// Breaker open periods.
    pub breaker: breaker::Jitter,
    /// Backoff waits.
    pub backoff: retry::JitterFn,
    /// P2C picks: a random index below `n`.
    pub pick: fn(usize) -> usize,
}

impl Default for Jitters {
    fn default() -> Self {
        Self {
            breaker: breaker::default_jitter,
            backoff: retry::full_jitter,
            pick: fastrand::usize_below,
        }
    }
}

mod fastrand {
    /// A random index below `n` (`n > 0`).
    pub fn usize_below(n: usize) -> usize {
        ::fastrand::usize(..n.max(1))
    }
}

#[derive(Debug)]
struct EndpointState {
    breaker: Breaker,
    load: Load,
    up: bool,
    passes: u32,
    failures: u32,
    skip_until: Option<Instant>,
    /// The last error, without dependency error text (status and client answers show it;
    /// the full text goes to the log).
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
    last_health: Option<DateTime<Utc>>,
}

/// One BZZZ node and what the gateway knows of it.
#[derive(Debug)]
pub struct Endpoint {
    url: EndpointUrl,
    state: Mutex<EndpointState>,
    gauges: Gauges,
}

/// The endpoint's gauges, registered once: a handle update is an atomic store, where a
/// `gauge!` with labels built the key and looked it up on every request.
#[derive(Debug)]
struct Gauges {
    circuit_state: metrics::Gauge,
    up: metrics::Gauge,
    latency_ewma: metrics::Gauge,
}

impl Gauges {
    fn new(url: &str) -> Self {
        // The transitions into `open` exist from the start at 0: Prometheus's `increase()`
        // takes a series' first sample as its baseline, so a series born at 1 would hide the
        // first opening from the flapping alert.
        for from in ["closed", "half_open"] {
            metrics::counter!(
                "rustle_circuit_transitions_total",
                "endpoint" => url.to_owned(),
                "from" => from,
                "to" => "open"
            )
            .increment(0);
        }
        Self {
            circuit_state: metrics::gauge!("rustle_circuit_state", "endpoint" => url.to_owned()),
            up: metrics::gauge!("rustle_endpoint_up", "endpoint" => url.to_owned()),
            latency_ewma: metrics::gauge!(
                "rustle_endpoint_latency_ewma_seconds",
                "endpoint" => url.to_owned()
            ),
        }
    }
}

impl Endpoint {
    fn new(url: EndpointUrl, policy: &Policy, jitter: breaker::Jitter) -> Self {
        let endpoint = Self {
            gauges: Gauges::new(url.as_str()),
            url,
            state: Mutex::new(EndpointState {
                breaker: Breaker::new(policy.breaker.clone(), jitter),
                load: Load::new(Instant::now()),
                up: true,
                passes: 0,
                failures: 0,
                skip_until: None,
                last_error: None,
                last_error_at: None,
                last_health: None,
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

    // State changes are single assignments under the lock, so a poisoned lock still holds
    // consistent state.
    fn lock(&self) -> MutexGuard<'_, EndpointState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn available(state: &EndpointState, now: Instant) -> bool {
        state.up && state.skip_until.is_none_or(|t| now >= t) && state.breaker.available(now)
    }

    /// Asks the breaker to admit a call now (publishing and logging any transition).
    fn admit(&self, now: Instant) -> Option<Permit> {
        let mut state = self.lock();
        let (permit, transition) = state.breaker.acquire(now);
        self.publish(&state);
        drop(state);
        self.transitioned(transition);
        permit
    }

    /// The gauges of this endpoint.
    fn publish(&self, state: &EndpointState) {
        let g = &self.gauges;
        g.circuit_state
            .set(f64::from(state.breaker.state().gauge()));
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
            "circuit breaker changed state"
        );
        metrics::counter!(
            "rustle_circuit_transitions_total",
            "endpoint" => self.url().to_owned(),
            "from" => t.from.as_str(),
            "to" => t.to.as_str()
        )
        .increment(1);
    }

    /// What `/v1/status` shows.
    fn status(&self, now: Instant) -> EndpointStatus {
        let s = self.lock();
        let wall = |at: Instant| {
            let ahead = at.saturating_duration_since(now);
            Utc::now() + chrono::Duration::from_std(ahead).unwrap_or_default()
        };
        EndpointStatus {
            url: self.url().to_owned(),
            up: s.up,
            available: Self::available(&s, now),
            breaker: BreakerStatus {
                state: s.breaker.state().as_str().to_owned(),
                reason: s.breaker.reason().to_owned(),
                consecutive_failures: s.breaker.consecutive_failures(),
                next_probe: s.breaker.next_probe().map(wall),
                next_open_ms: u64::try_from(s.breaker.next_open_period().as_millis())
                    .unwrap_or(u64::MAX),
            },
            ewma_latency_ms: s.load.ewma().as_secs_f64() * 1e3,
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

/// An admitted attempt whose outcome is not recorded yet; dropped unrecorded, it gives
/// its permit back as if the call never happened.
struct Unrecorded<'a> {
    endpoint: &'a Endpoint,
    permit: Option<Permit>,
}

impl Drop for Unrecorded<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let mut state = self.endpoint.lock();
            state.breaker.release(permit);
            state.load.cancel();
        }
    }
}

/// One request to a node, as sent (the body is shared between attempts).
#[derive(Debug, Clone)]
pub struct NodeRequest {
    /// The method.
    pub method: axum::http::Method,
    /// Path and query, e.g. `/ucxi/v1/get?address=...`.
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: Option<Bytes>,
    /// The endpoint to try first when it is available (the one that took the address's
    /// last write, so a client reads its own writes even before every replica has them).
    pub prefer: Option<String>,
    /// Whether the answer is a list (history, discover), allowed [`LIST_ANSWER_FACTOR`]
    /// times the size of an envelope answer.
    pub list: bool,
}

impl NodeRequest {
    /// The largest answer believed under `policy`.
    fn answer_limit(&self, policy: &Policy) -> usize {
        if self.list {
            policy.max_answer_bytes.saturating_mul(LIST_ANSWER_FACTOR)
        } else {
            policy.max_answer_bytes
        }
    }
}

/// A node's answer and how it was obtained.
#[derive(Debug)]
pub struct Executed<T> {
    /// The answer (data or a definite refusal).
    pub answer: Answer<T>,
    /// The endpoint that answered.
    pub endpoint: String,
    /// Attempts made.
    pub attempts: u32,
}

/// Why the cluster could not answer a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// No endpoint was available: nothing was tried.
    NoneAvailable,
    /// Every attempt allowed failed (retries or budget exhausted).
    Exhausted,
    /// The request deadline passed.
    Deadline,
    /// A node answered with something unusable (not retried).
    BadAnswer,
}

/// The cluster's failure to answer, with each endpoint's last error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} after {attempts} attempts")]
pub struct ClusterFailure {
    /// What went wrong.
    pub kind: FailureKind,
    /// Attempts made.
    pub attempts: u32,
    /// Per endpoint: the error of this request's attempt, else the last error known.
    pub endpoints: Vec<(String, String)>,
}

impl ClusterFailure {
    /// The `details` of the client's error answer: each endpoint and its error.
    #[must_use]
    pub fn details(&self) -> Value {
        json!({
            "attempts": self.attempts,
            "endpoints": self.endpoints.iter().map(|(url, error)| json!({"url": url, "error": error})).collect::<Vec<_>>(),
        })
    }

    /// The label of `rustle_fallback_events_total`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self.kind {
            FailureKind::NoneAvailable => "no_endpoint_available",
            FailureKind::Exhausted => "attempts_exhausted",
            FailureKind::Deadline => "deadline",
            FailureKind::BadAnswer => "bad_answer",
        }
    }
}

fn outcome_label(e: &AttemptError) -> &'static str {
    match e {
        AttemptError::Connect(_) => "connect_error",
        AttemptError::Timeout(_) => "timeout",
        AttemptError::Unavailable { status: 429, .. } => "too_many_requests",
        AttemptError::Unavailable { .. } => "unavailable",
        AttemptError::BadAnswer(_) => "bad_answer",
        AttemptError::Credentials(_) => "credentials_refused",
    }
}

/// The BZZZ endpoints with their resilience state.
#[derive(Debug)]
pub struct Cluster {
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    client: ArcSwap<NodeClient>,
    policy: ArcSwap<Policy>,
    budget: Mutex<RetryBudget>,
    jitters: Jitters,
    /// Woken when an endpoint comes up or a breaker closes (the journal replayer waits).
    recovered: Notify,
    /// Woken when endpoints or the health interval change.
    reconfigured: Notify,
}

impl Cluster {
    /// The cluster of `config`'s endpoints.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(config: &Config, jitters: Jitters) -> Result<Self, ClientError> {
        let policy = Policy::of(config);
        let endpoints = config
            .bzzz_endpoints
            .iter()
            .map(|u| Arc::new(Endpoint::new(u.clone(), &policy, jitters.breaker)))
            .collect();
        Ok(Self {
            endpoints: ArcSwap::from_pointee(endpoints),
            client: ArcSwap::from_pointee(NodeClient::new(&policy.client)?),
            budget: Mutex::new(RetryBudget::new(&policy.retry, Instant::now())),
            policy: ArcSwap::from_pointee(policy),
            jitters,
            recovered: Notify::new(),
            reconfigured: Notify::new(),
        })
    }

    /// Applies a reloaded configuration: endpoints (keeping the state of URLs that stay),
    /// the resilience policy and the connect timeout.
    ///
    /// # Errors
    /// When a new HTTP client cannot be built (nothing is changed then).
    pub fn reconfigure(&self, config: &Config) -> Result<(), ClientError> {
        let policy = Policy::of(config);
        // A new client drops the warm connection pool: only when its settings changed.
        let client = if policy.client == self.policy.load().client {
            None
        } else {
            Some(NodeClient::new(&policy.client)?)
        };
        let old = self.endpoints.load_full();
        let endpoints: Vec<Arc<Endpoint>> = config
            .bzzz_endpoints
            .iter()
            .map(|u| {
                old.iter().find(|e| e.url == *u).map_or_else(
                    || Arc::new(Endpoint::new(u.clone(), &policy, self.jitters.breaker)),
                    Arc::clone,
                )
            })
            .collect();
        for endpoint in &endpoints {
            endpoint.lock().breaker.set_config(policy.breaker.clone());
        }
        for gone in old
            .iter()
            .filter(|e| !endpoints.iter().any(|n| n.url == e.url))
        {
            let url = gone.url().to_owned();
            for name in [
                "rustle_circuit_state",
                "rustle_endpoint_up",
                "rustle_endpoint_latency_ewma_seconds",
            ] {
                metrics::gauge!(name, "endpoint" => url.clone()).set(f64::NAN);
            }
        }
        self.endpoints.store(Arc::new(endpoints));
        if let Some(client) = client {
            self.client.store(Arc::new(client));
        }
        self.lock_budget().set_config(&policy.retry);
        self.policy.store(Arc::new(policy));
        self.reconfigured.notify_waiters();
        Ok(())
    }

    /// The endpoints.
    #[must_use]
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// True when some endpoint would take a request now.
    #[must_use]
    pub fn any_available(&self) -> bool {
        let now = Instant::now();
        self.endpoints
            .load()
            .iter()
            .any(|e| Endpoint::available(&e.lock(), now))
    }

    /// True when an available endpoint's breaker is closed (takes any number of calls,
    /// where a half-open one admits a few probes).
    #[must_use]
    pub fn any_closed(&self) -> bool {
        let now = Instant::now();
        self.endpoints.load().iter().any(|e| {
            let state = e.lock();
            Endpoint::available(&state, now) && state.breaker.state() == breaker::State::Closed
        })
    }

    /// Per-endpoint status.
    #[must_use]
    pub fn status(&self) -> Vec<EndpointStatus> {
        let now = Instant::now();
        self.endpoints
            .load()
            .iter()
            .map(|e| e.status(now))
            .collect()
    }

    /// The signal [`Cluster::wait_for_recovery`] waits for, to be enabled before work whose
    /// failure is followed by a wait, so a recovery during the work is not missed.
    pub fn recovery_signal(&self) -> tokio::sync::futures::Notified<'_> {
        self.recovered.notified()
    }

    /// Waits until an endpoint comes up or a breaker closes, or `timeout` passes.
    pub async fn wait_for_recovery(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.recovered.notified()).await;
    }

    /// Chooses an available endpoint (not in `tried` when another is available) and
    /// admits a call on it.
    fn choose(
        &self,
        tried: &[String],
        prefer: Option<&str>,
        now: Instant,
    ) -> Option<(Arc<Endpoint>, Permit)> {
        let endpoints = self.endpoints.load_full();
        let fresh = |i: &usize| !tried.iter().any(|t| t == endpoints[*i].url());
        let mut candidates: Vec<usize> = (0..endpoints.len())
            .filter(|i| Endpoint::available(&endpoints[*i].lock(), now))
            .collect();
        if candidates.iter().any(fresh) {
            candidates.retain(fresh);
        }
        if let Some(i) = prefer.and_then(|p| {
            candidates
                .iter()
                .copied()
                .find(|i| endpoints[*i].url() == p)
        }) {
            if let Some(permit) = endpoints[i].admit(now) {
                return Some((Arc::clone(&endpoints[i]), permit));
            }
            candidates.retain(|c| *c != i);
        }
        while !candidates.is_empty() {
            let loads: Vec<Load> = endpoints.iter().map(|e| e.lock().load.clone()).collect();
            let pick = self.jitters.pick;
            let chosen = p2c(&candidates, &loads, &mut |n| pick(n))?;
            if let Some(permit) = endpoints[chosen].admit(now) {
                return Some((Arc::clone(&endpoints[chosen]), permit));
            }
            // Another request took the last probe: choose again without it.
            candidates.retain(|i| *i != chosen);
        }
        None
    }

    /// Records an attempt's outcome on its endpoint.
    fn record(
        &self,
        endpoint: &Endpoint,
        permit: Permit,
        outcome: Result<(), &AttemptError>,
        rtt: Duration,
    ) {
        let now = Instant::now();
        let label = outcome.err().map_or("ok", outcome_label);
        metrics::counter!(
            "rustle_backend_attempts_total",
            "endpoint" => endpoint.url().to_owned(),
            "outcome" => label
        )
        .increment(1);
        // A failure counts as an answer as slow as the attempt timeout: a node that fails
        // fast must not look like the fastest one to the balancer.
        let sample = if outcome.is_err() {
            rtt.max(self.policy.load().attempt_timeout)
        } else {
            rtt
        };
        let mut state = endpoint.lock();
        state.load.finish(sample, now);
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
        endpoint.publish(&state);
        drop(state);
        endpoint.transitioned(transition);
        if closed {
            self.recovered.notify_waiters();
        }
    }

    /// Each endpoint's last known error (for answers when nothing was tried).
    fn known_errors(&self, now: Instant) -> Vec<(String, String)> {
        self.endpoints
            .load()
            .iter()
            .map(|e| {
                let s = e.lock();
                let why = if !s.up {
                    "down (health checks failing)".to_owned()
                } else if s.skip_until.is_some_and(|t| t > now) {
                    "skipped (Retry-After)".to_owned()
                } else if !s.breaker.available(now) {
                    format!(
                        "circuit {}: {}",
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
                (e.url().to_owned(), format!("{why}{last}"))
            })
            .collect()
    }

    /// The failure of a request: its own attempts' errors first, then what is known of
    /// the endpoints it did not try.
    pub(crate) fn failure(
        &self,
        kind: FailureKind,
        attempts: u32,
        attempted: Vec<(String, String)>,
    ) -> ClusterFailure {
        // One line per endpoint: its latest error in this request.
        let mut errors: Vec<(String, String)> = Vec::new();
        for (url, why) in attempted {
            match errors.iter_mut().find(|(u, _)| *u == url) {
                Some(line) => line.1 = why,
                None => errors.push((url, why)),
            }
        }
        for (url, why) in self.known_errors(Instant::now()) {
            if !errors.iter().any(|(u, _)| *u == url) {
                errors.push((url, why));
            }
        }
        ClusterFailure {
            kind,
            attempts,
            endpoints: errors,
        }
    }

    /// One attempt on `endpoint` (admitted by `permit`), recorded on it.
    async fn attempt<T: DeserializeOwned>(
        &self,
        endpoint: &Endpoint,
        permit: Permit,
        call: &Call,
        request: &NodeRequest,
        timeout: Duration,
    ) -> Result<Answer<T>, AttemptError> {
        endpoint.lock().load.start();
        // Until the outcome is recorded, dropping this (the request was abandoned) frees
        // the permit and the in-flight count without counting anything.
        let mut pending = Unrecorded {
            endpoint,
            permit: Some(permit),
        };
        let started = Instant::now();
        let client = self.client.load_full();
        let result = client
            .call::<T>(
                AttemptSpec {
                    endpoint: &endpoint.url,
                    request_id: &call.request_id,
                    timeout,
                    max_answer_bytes: request.answer_limit(&self.policy.load()),
                },
                request.method.clone(),
                &request.path,
                &request.headers,
                request.body.clone(),
            )
            .await;
        // A timeout shorter than the attempt timeout is the client's own deadline running
        // out: it says nothing about the endpoint, so a client cannot trip breakers by
        // sending tiny deadlines.
        let clients_deadline = matches!(result, Err(AttemptError::Timeout(_)))
            && timeout < self.policy.load().attempt_timeout;
        if !clients_deadline && let Some(permit) = pending.permit.take() {
            self.record(
                endpoint,
                permit,
                result.as_ref().map(|_| ()),
                started.elapsed(),
            );
        }
        result
    }

    /// Sends `request` to one endpoint after another until one answers definitely, within
    /// the deadline, the retry limit and the retry budget.
    ///
    /// # Errors
    /// [`ClusterFailure`] when no endpoint answered definitely.
    pub async fn execute<T: DeserializeOwned>(
        &self,
        call: &Call,
        request: &NodeRequest,
    ) -> Result<Executed<T>, ClusterFailure> {
        let policy = self.policy.load_full();
        self.lock_budget().record_request(Instant::now());
        let mut backoff = Backoff::new(&policy.retry, self.jitters.backoff);
        let mut tried: Vec<String> = Vec::new();
        let mut errors: Vec<(String, String)> = Vec::new();
        let mut attempts = 0u32;
        loop {
            let remaining = call.remaining();
            if remaining.is_zero() {
                return Err(self.failure(FailureKind::Deadline, attempts, errors));
            }
            let Some((endpoint, permit)) =
                self.choose(&tried, request.prefer.as_deref(), Instant::now())
            else {
                let kind = if attempts == 0 {
                    FailureKind::NoneAvailable
                } else {
                    FailureKind::Exhausted
                };
                return Err(self.failure(kind, attempts, errors));
            };
            attempts += 1;
            tried.push(endpoint.url().to_owned());
            let timeout = policy.attempt_timeout.min(remaining);
            let span =
                tracing::debug_span!("attempt", endpoint = endpoint.url(), attempt = attempts);
            let result = tracing::Instrument::instrument(
                self.attempt::<T>(&endpoint, permit, call, request, timeout),
                span,
            )
            .await;
            let e = match result {
                Ok(answer) => {
                    return Ok(Executed {
                        answer,
                        endpoint: endpoint.url().to_owned(),
                        attempts,
                    });
                }
                Err(e) => e,
            };
            tracing::debug!(endpoint = endpoint.url(), attempt = attempts, error = %e, "attempt failed");
            errors.push((endpoint.url().to_owned(), e.public()));
            let now = Instant::now();
            if let Err(kind) = self.may_retry(&e, endpoint.url(), attempts, &policy, call, now) {
                return Err(self.failure(kind, attempts, errors));
            }
            metrics::counter!(
                "rustle_retries_total",
                "endpoint" => endpoint.url().to_owned(),
                "reason" => outcome_label(&e)
            )
            .increment(1);
            // After a Retry-After the retry goes elsewhere at once; otherwise back off.
            let retry_after = matches!(
                e,
                AttemptError::Unavailable {
                    retry_after: Some(_),
                    ..
                }
            );
            let wait = if retry_after {
                Duration::ZERO
            } else {
                backoff.next_wait()
            };
            if now + wait >= call.deadline {
                tokio::time::sleep_until(call.deadline).await;
                return Err(self.failure(FailureKind::Deadline, attempts, errors));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends `request` once to every available endpoint in parallel, each inside the
    /// deadline; returns each endpoint's result, and the endpoints not asked (unavailable).
    pub async fn fan_out<T: DeserializeOwned + Send + 'static>(
        &self,
        call: &Call,
        request: &NodeRequest,
    ) -> FanOut<T> {
        let policy = self.policy.load_full();
        let now = Instant::now();
        let endpoints = self.endpoints.load_full();
        let mut skipped = Vec::new();
        let mut admitted = Vec::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let available = Endpoint::available(&endpoint.lock(), now);
            match available.then(|| endpoint.admit(now)).flatten() {
                Some(p) => admitted.push((index, p)),
                None => skipped.push(endpoint.url().to_owned()),
            }
        }
        let timeout = policy.attempt_timeout.min(call.remaining());
        let branches = admitted.into_iter().map(|(index, permit)| {
            let endpoint = Arc::clone(&endpoints[index]);
            async move {
                let result = self
                    .attempt::<T>(&endpoint, permit, call, request, timeout)
                    .await;
                (endpoint.url().to_owned(), result)
            }
        });
        let results = futures_util::future::join_all(branches).await;
        FanOut { results, skipped }
    }

    /// Whether a failed attempt may be retried: retryable, inside the deadline, the retry
    /// limit and the budget.
    fn may_retry(
        &self,
        e: &AttemptError,
        url: &str,
        attempts: u32,
        policy: &Policy,
        call: &Call,
        now: Instant,
    ) -> Result<(), FailureKind> {
        if !e.retryable() {
            return Err(FailureKind::BadAnswer);
        }
        if call.deadline <= now {
            return Err(FailureKind::Deadline);
        }
        if attempts > policy.retry.max_retries {
            return Err(FailureKind::Exhausted);
        }
        if !self.lock_budget().try_retry(now) {
            metrics::counter!("rustle_retry_budget_exhausted_total").increment(1);
            tracing::warn!(endpoint = url, "retry budget exhausted: not retrying");
            return Err(FailureKind::Exhausted);
        }
        Ok(())
    }

    fn lock_budget(&self) -> MutexGuard<'_, RetryBudget> {
        self.budget.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the active health checks until `stop` is cancelled: every endpoint's
    /// `/health` each interval, all in parallel.
    pub async fn run_health_checks(self: Arc<Self>, stop: CancellationToken) {
        let this: &Self = &self;
        loop {
            let policy = self.policy.load_full();
            let endpoints = self.endpoints.load_full();
            let client = self.client.load_full();
            let checks = endpoints.iter().map(|e| {
                let client = Arc::clone(&client);
                let timeout = policy.health_timeout;
                async move {
                    let spec = AttemptSpec {
                        endpoint: &e.url,
                        request_id: "health-check",
                        timeout,
                        max_answer_bytes: HEALTH_ANSWER_BYTES,
                    };
                    let result = client
                        .call::<Value>(spec, axum::http::Method::GET, "/health", &[], None)
                        .await;
                    let passed = matches!(result, Ok(Answer::Ok { .. }));
                    let error = match result {
                        Ok(Answer::Ok { .. }) => None,
                        Ok(Answer::Refused(r)) => {
                            Some((format!("health check answered {}", r.code), r.message))
                        }
                        Err(e) => Some((format!("health check: {}", e.public()), e.to_string())),
                    };
                    this.health_result(e, passed, error)
                }
            });
            let confirming = futures_util::future::join_all(checks)
                .await
                .into_iter()
                .any(|c| c);
            // A down endpoint that just passed is checked again soon: it still needs two
            // consecutive passes, but a recovered node is not left idle for a whole period.
            let pause = if confirming {
                policy.health_interval / CONFIRM_DIVISOR
            } else {
                policy.health_interval
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.reconfigured.notified() => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// `error`: the public description and the full cause of a failed check. True when
    /// the endpoint is down and passing: the next check confirms it.
    fn health_result(
        &self,
        endpoint: &Endpoint,
        passed: bool,
        error: Option<(String, String)>,
    ) -> bool {
        let mut state = endpoint.lock();
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
                    endpoint = endpoint.url(),
                    failures = state.failures,
                    error = %cause,
                    "endpoint down: health checks failing"
                );
            }
        }
        let confirming = passed && !state.up;
        endpoint.publish(&state);
        drop(state);
        endpoint.transitioned(transition);
        if came_up {
            tracing::info!(
                endpoint = endpoint.url(),
                "endpoint up: health checks passing"
            );
        }
        if came_up || passed {
            self.recovered.notify_waiters();
        }
        confirming
    }
}

/// What a fan-out produced.
#[derive(Debug)]
pub struct FanOut<T> {
    /// Per endpoint asked: its URL and result.
    pub results: Vec<(String, Result<Answer<T>, AttemptError>)>,
    /// Endpoints not asked (down, open breaker, Retry-After).
    pub skipped: Vec<String>,
}
