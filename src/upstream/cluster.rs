//! The BZZZ endpoints as one resilient service (SPEC §7): every call to the cluster goes
//! through [`Cluster::execute`] (one request, retried elsewhere) or
//! [`Cluster::fan_out`] (one call per available endpoint). They apply the request
//! deadline, the per-attempt timeout, the retry policy (`resilience::retry`), the retry
//! budget, `Retry-After`, the per-endpoint breakers and P2C peak-EWMA balancing,
//! and speak to nodes only through the transport seam (`transport`). The health checker
//! (`resilience::health`) runs beside them. Handlers never see any of it.
//!
//! The cluster outlives mode switches and reloads: breaker, health and latency state stay
//! with each endpoint URL, and a reload that keeps a URL keeps its state.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::endpoint::{Endpoint, Unrecorded, outcome_label};
use super::transport::{
    ClientError, ClientSettings, Exchange, HttpTransport, Transport, TransportFactory,
};
use super::ucxi::{self, About, Answer, AttemptError, NodeRequest};
use crate::backend::{Call, EndpointStatus};
use crate::config::{BreakerConfig, Config, RetryConfig};
use crate::resilience::balance::{Load, p2c};
use crate::resilience::breaker::{self, Permit};
use crate::resilience::budget::RetryBudget;
use crate::resilience::retry::{self, Backoff, Stop};

/// How much costlier than the cheapest candidate a preferred endpoint may be and still be
/// preferred: twice the cost, or [`PREFER_MARGIN`] more (costs of idle endpoints decay
/// towards zero, so a ratio alone would drop the preference of a healthy writer).
pub const PREFER_SLACK: f64 = 2.0;
/// See [`PREFER_SLACK`].
pub const PREFER_MARGIN: Duration = Duration::from_millis(10);

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
    /// How the gateway connects to nodes (the transport is rebuilt when it changes).
    pub client: ClientSettings,
    /// Largest answer about one envelope; list answers may be
    /// [`ucxi::LIST_ANSWER_FACTOR`] times larger.
    pub max_answer_bytes: usize,
}

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

/// The cluster's failure to answer a request, with each endpoint's last error.
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

/// The BZZZ endpoints with their resilience state.
pub struct Cluster {
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    transport: ArcSwap<Transport>,
    make_transport: TransportFactory,
    policy: ArcSwap<Policy>,
    budget: Mutex<RetryBudget>,
    jitters: Jitters,
    /// Woken when an endpoint comes up or a breaker closes (the journal replayer waits).
    recovered: Notify,
    /// Woken when endpoints or the health interval change.
    reconfigured: Notify,
    hedges: Hedges,
}

/// `rustle_hedges_total` by outcome, registered once.
#[derive(Debug)]
struct Hedges {
    /// The hedge answered first.
    won: metrics::Counter,
    /// The first attempt answered first.
    lost: metrics::Counter,
    /// No other endpoint was available.
    no_endpoint: metrics::Counter,
    /// The retry budget was spent.
    budget: metrics::Counter,
}

impl Hedges {
    fn new() -> Self {
        let outcome = |o: &'static str| metrics::counter!("rustle_hedges_total", "outcome" => o);
        Self {
            won: outcome("won"),
            lost: outcome("lost"),
            no_endpoint: outcome("no_endpoint"),
            budget: outcome("budget"),
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoints", &self.endpoints.load())
            .field("policy", &self.policy.load())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The cluster of `config`'s endpoints over HTTP.
    ///
    /// # Errors
    /// When the HTTP transport cannot be built.
    pub fn new(config: &Config, jitters: Jitters) -> Result<Self, ClientError> {
        Self::with_transport(config, jitters, Arc::new(HttpTransport::boxed))
    }

    /// The cluster of `config`'s endpoints over the transports `make_transport` builds
    /// (tests pass a fake).
    ///
    /// # Errors
    /// When the transport cannot be built.
    pub fn with_transport(
        config: &Config,
        jitters: Jitters,
        make_transport: TransportFactory,
    ) -> Result<Self, ClientError> {
        let policy = Policy::of(config);
        let endpoints = config
            .bzzz_endpoints
            .iter()
            .map(|u| {
                Arc::new(Endpoint::new(
                    u.clone(),
                    policy.breaker.clone(),
                    jitters.breaker,
                ))
            })
            .collect();
        Ok(Self {
            endpoints: ArcSwap::from_pointee(endpoints),
            transport: ArcSwap::from_pointee(make_transport(&policy.client)?),
            make_transport,
            budget: Mutex::new(RetryBudget::new(&policy.retry, Instant::now())),
            policy: ArcSwap::from_pointee(policy),
            jitters,
            recovered: Notify::new(),
            reconfigured: Notify::new(),
            hedges: Hedges::new(),
        })
    }

    /// Applies a reloaded configuration: endpoints (keeping the state of URLs that stay),
    /// the resilience policy and the client settings.
    ///
    /// # Errors
    /// When a new transport cannot be built (nothing is changed then).
    pub fn reconfigure(&self, config: &Config) -> Result<(), ClientError> {
        let policy = Policy::of(config);
        // A new transport drops the warm connection pool: only when its settings changed.
        let transport = if policy.client == self.policy.load().client {
            None
        } else {
            Some((self.make_transport)(&policy.client)?)
        };
        let old = self.endpoints.load_full();
        let endpoints: Vec<Arc<Endpoint>> = config
            .bzzz_endpoints
            .iter()
            .map(|u| {
                old.iter().find(|e| e.endpoint_url() == u).map_or_else(
                    || {
                        Arc::new(Endpoint::new(
                            u.clone(),
                            policy.breaker.clone(),
                            self.jitters.breaker,
                        ))
                    },
                    Arc::clone,
                )
            })
            .collect();
        for endpoint in &endpoints {
            endpoint.set_breaker_config(policy.breaker.clone());
        }
        for gone in old
            .iter()
            .filter(|e| !endpoints.iter().any(|n| n.url() == e.url()))
        {
            gone.retire();
        }
        self.endpoints.store(Arc::new(endpoints));
        if let Some(transport) = transport {
            self.transport.store(Arc::new(transport));
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

    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The transport in force.
    #[must_use]
    pub fn transport(&self) -> Transport {
        Transport::clone(&self.transport.load())
    }

    /// True when some endpoint would take a request now.
    #[must_use]
    pub fn any_available(&self) -> bool {
        let now = Instant::now();
        self.endpoints.load().iter().any(|e| e.available(now))
    }

    /// True when an available endpoint's breaker is closed (takes any number of calls,
    /// where a half-open one admits a few probes).
    #[must_use]
    pub fn any_closed(&self) -> bool {
        let now = Instant::now();
        self.endpoints
            .load()
            .iter()
            .any(|e| e.closed_and_available(now))
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

    /// Wakes whoever waits for a recovery (an endpoint came up or passed a health check).
    pub(crate) fn notify_recovered(&self) {
        self.recovered.notify_waiters();
    }

    /// Resolves when endpoints or the health interval change.
    pub(crate) fn reconfigured(&self) -> tokio::sync::futures::Notified<'_> {
        self.reconfigured.notified()
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
            .filter(|i| endpoints[*i].available(now))
            .collect();
        if candidates.iter().any(fresh) {
            candidates.retain(fresh);
        }
        // A preference (the endpoint that took the address's last write) counts only while
        // that endpoint is not much slower than the others: read-your-writes, not pinning.
        let cheapest = candidates
            .iter()
            .map(|i| endpoints[*i].load().cost(now))
            .fold(f64::INFINITY, f64::min);
        if let Some(i) = prefer.and_then(|p| {
            candidates.iter().copied().find(|i| {
                endpoints[*i].url() == p
                    && endpoints[*i].load().cost(now)
                        <= (PREFER_SLACK * cheapest).max(cheapest + PREFER_MARGIN.as_secs_f64())
            })
        }) {
            if let Some(permit) = endpoints[i].admit(now) {
                return Some((Arc::clone(&endpoints[i]), permit));
            }
            candidates.retain(|c| *c != i);
        }
        while !candidates.is_empty() {
            let loads: Vec<Load> = endpoints.iter().map(|e| e.load()).collect();
            let pick = self.jitters.pick;
            let chosen = p2c(&candidates, &loads, now, &mut |n| pick(n))?;
            if let Some(permit) = endpoints[chosen].admit(now) {
                return Some((Arc::clone(&endpoints[chosen]), permit));
            }
            // Another request took the last probe: choose again without it.
            candidates.retain(|i| *i != chosen);
        }
        None
    }

    /// Records an attempt's outcome on its endpoint, waking the journal replayer when a
    /// breaker closed.
    fn record(
        &self,
        endpoint: &Endpoint,
        permit: Permit,
        outcome: Result<(), &AttemptError>,
        rtt: Duration,
    ) {
        let attempt_timeout = self.policy.load().attempt_timeout;
        if endpoint.record(permit, outcome, rtt, attempt_timeout) {
            self.recovered.notify_waiters();
        }
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
        let now = Instant::now();
        for endpoint in self.endpoints.load().iter() {
            if !errors.iter().any(|(u, _)| u == endpoint.url()) {
                errors.push((endpoint.url().to_owned(), endpoint.known_error(now)));
            }
        }
        ClusterFailure {
            kind,
            attempts,
            endpoints: errors,
        }
    }

    /// One attempt on `endpoint` (admitted by `permit`) as span `trace`, recorded on it.
    async fn attempt<T: DeserializeOwned + About>(
        &self,
        endpoint: &Endpoint,
        permit: Permit,
        call: &Call,
        request: &Arc<NodeRequest>,
        timeout: Duration,
        trace: ucxl_service::TraceContext,
    ) -> Result<Answer<T>, AttemptError> {
        endpoint.start();
        let started = Instant::now();
        // Until the outcome is recorded, dropping this (the request was abandoned, or
        // another endpoint answered first) frees the permit and the in-flight count
        // without counting a failure.
        let mut pending = Unrecorded {
            endpoint,
            permit: Some(permit),
            started,
        };
        let policy = self.policy.load();
        let exchange = Exchange {
            endpoint: endpoint.endpoint_url().clone(),
            request: Arc::clone(request),
            request_id: call.request_id.clone(),
            trace,
            timeout,
            max_answer_bytes: request.answer_limit(policy.max_answer_bytes),
        };
        let attempt_timeout = policy.attempt_timeout;
        drop(policy);
        let result = ucxi::classify::<T>(self.transport().oneshot(exchange).await)
            .and_then(|answer| ucxi::check_about(answer, &request.about));
        // A timeout shorter than the attempt timeout is the client's own deadline running
        // out: it says nothing about the endpoint, so a client cannot trip breakers by
        // sending tiny deadlines.
        let clients_deadline =
            matches!(result, Err(AttemptError::Timeout(_))) && timeout < attempt_timeout;
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
    /// A hedgeable request still unanswered when its endpoint's answers are late
    /// ([`Endpoint::late_after`]) is also sent to another endpoint (once, within the retry
    /// budget): the first answer wins and the other attempt is cancelled, so a slow or hung
    /// node costs a read its hedge delay, not its attempt timeout.
    ///
    /// # Errors
    /// [`ClusterFailure`] when no endpoint answered definitely.
    pub async fn execute<T: DeserializeOwned + About>(
        &self,
        call: &Call,
        request: NodeRequest,
    ) -> Result<Executed<T>, ClusterFailure> {
        use futures_util::StreamExt as _;
        let request = Arc::new(request);
        let policy = self.policy.load_full();
        self.lock_budget().record_request(Instant::now());
        let mut backoff = Backoff::new(&policy.retry, self.jitters.backoff);
        let mut tried: Vec<String> = Vec::new();
        let mut errors: Vec<(String, String)> = Vec::new();
        let mut attempts = 0u32;
        let mut running = futures_util::stream::FuturesUnordered::new();
        // When the attempt alone in flight gets a hedge; at most one hedge per request.
        let mut hedge_at: Option<Instant> = None;
        let mut hedged = false;
        loop {
            if running.is_empty() {
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
                hedge_at =
                    (request.hedge && !hedged).then(|| Instant::now() + endpoint.late_after());
                let launch = Launch {
                    endpoint,
                    permit,
                    number: attempts,
                    hedge: false,
                    timeout: policy.attempt_timeout.min(remaining),
                };
                running.push(self.traced_attempt::<T>(launch, call, &request));
            }
            let alone = running.len() == 1;
            let hedge_due = async {
                match hedge_at {
                    Some(at) if alone => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            let (endpoint, was_hedge, result) = tokio::select! {
                Some(done) = running.next() => done,
                () = hedge_due => {
                    hedge_at = None;
                    if let Some((endpoint, permit)) = self.hedge_target(&tried) {
                        hedged = true;
                        attempts += 1;
                        tried.push(endpoint.url().to_owned());
                        let launch = Launch {
                            endpoint,
                            permit,
                            number: attempts,
                            hedge: true,
                            timeout: policy.attempt_timeout.min(call.remaining()),
                        };
                        running.push(self.traced_attempt::<T>(launch, call, &request));
                    }
                    continue;
                }
            };
            let e = match result {
                Ok(answer) => {
                    if hedged {
                        let h = &self.hedges;
                        if was_hedge { &h.won } else { &h.lost }.increment(1);
                    }
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
            if !running.is_empty() {
                // The other attempt of a hedge race is still running: wait for it.
                continue;
            }
            if let Err(kind) = self
                .before_retry(&e, &endpoint, attempts, &policy, call, &mut backoff)
                .await
            {
                return Err(self.failure(kind, attempts, errors));
            }
        }
    }

    /// After the last running attempt failed with `e`: waits the backoff before the next
    /// attempt, or says why the request stops.
    async fn before_retry(
        &self,
        e: &AttemptError,
        endpoint: &Endpoint,
        attempts: u32,
        policy: &Policy,
        call: &Call,
        backoff: &mut Backoff,
    ) -> Result<(), FailureKind> {
        let now = Instant::now();
        let next = retry::next(
            e,
            attempts,
            &policy.retry,
            call.deadline,
            now,
            &mut self.lock_budget(),
            backoff,
        );
        let wait = match next {
            Ok(wait) => wait,
            Err(stop) => {
                if stop == Stop::BudgetSpent {
                    tracing::warn!(
                        endpoint = endpoint.url(),
                        "retry budget exhausted: not retrying"
                    );
                }
                return Err(stop.into());
            }
        };
        endpoint.retried(e);
        if now + wait >= call.deadline {
            tokio::time::sleep_until(call.deadline).await;
            return Err(FailureKind::Deadline);
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// An attempt in its span (a child of the request's: its id is the node's
    /// `traceparent` parent), yielding its endpoint and whether it was the hedge.
    async fn traced_attempt<T: DeserializeOwned + About>(
        &self,
        launch: Launch,
        call: &Call,
        request: &Arc<NodeRequest>,
    ) -> (Arc<Endpoint>, bool, Result<Answer<T>, AttemptError>) {
        let Launch {
            endpoint,
            permit,
            number,
            hedge,
            timeout,
        } = launch;
        let trace = call.trace.child();
        let span = tracing::debug_span!(
            "attempt",
            endpoint = endpoint.url(),
            attempt = number,
            hedge,
            trace_id = %trace.trace_id,
            span_id = %trace.span_id
        );
        let mut exported =
            ucxl_service::otlp::Span::start(ucxl_service::otlp::Kind::Client, "attempt", &trace);
        if exported.is_recording() {
            exported.set("endpoint", endpoint.url().to_owned());
            exported.set("attempt", i64::from(number));
            exported.set("hedge", hedge);
            exported.set("http.request.method", request.method.to_string());
            // Until it ends: a hedge race's loser, or an attempt of an abandoned request.
            exported.fail("cancelled");
        }
        let result = tracing::Instrument::instrument(
            self.attempt::<T>(&endpoint, permit, call, request, timeout, trace),
            span,
        )
        .await;
        if exported.is_recording() {
            match &result {
                Ok(_) => exported.succeed(),
                Err(e) => exported.fail(e.to_string()),
            }
            exported.set("outcome", result.as_ref().err().map_or("ok", outcome_label));
        }
        (endpoint, hedge, result)
    }

    /// Another endpoint for a hedge, when one is available and the retry budget allows a
    /// second request.
    fn hedge_target(&self, tried: &[String]) -> Option<(Arc<Endpoint>, Permit)> {
        let now = Instant::now();
        let endpoints = self.endpoints.load();
        let fresh = endpoints
            .iter()
            .any(|e| !tried.iter().any(|t| t == e.url()) && e.available(now));
        if !fresh {
            self.hedges.no_endpoint.increment(1);
            return None;
        }
        if !self.lock_budget().try_retry(now) {
            self.hedges.budget.increment(1);
            return None;
        }
        let target = self
            .choose(tried, None, now)
            .filter(|(e, _)| !tried.iter().any(|t| t == e.url()));
        if target.is_none() {
            self.hedges.no_endpoint.increment(1);
        }
        target
    }

    /// Sends `request` once to every available endpoint in parallel, each inside the
    /// deadline; returns each endpoint's result, and the endpoints not asked (unavailable).
    pub async fn fan_out<T: DeserializeOwned + About + Send + 'static>(
        &self,
        call: &Call,
        request: NodeRequest,
    ) -> FanOut<T> {
        let request = Arc::new(request);
        let policy = self.policy.load_full();
        let now = Instant::now();
        let endpoints = self.endpoints.load_full();
        let mut skipped = Vec::new();
        let mut admitted = Vec::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            match endpoint
                .available(now)
                .then(|| endpoint.admit(now))
                .flatten()
            {
                Some(p) => admitted.push((index, p)),
                None => skipped.push(endpoint.url().to_owned()),
            }
        }
        let timeout = policy.attempt_timeout.min(call.remaining());
        let branches = admitted.into_iter().map(|(index, permit)| {
            let launch = Launch {
                endpoint: Arc::clone(&endpoints[index]),
                permit,
                number: 1,
                hedge: false,
                timeout,
            };
            let request = Arc::clone(&request);
            async move {
                let (endpoint, _, result) = self.traced_attempt::<T>(launch, call, &request).await;
                (endpoint.url().to_owned(), result)
            }
        });
        let results = futures_util::future::join_all(branches).await;
        FanOut { results, skipped }
    }

    fn lock_budget(&self) -> MutexGuard<'_, RetryBudget> {
        self.budget.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl From<Stop> for FailureKind {
    fn from(stop: Stop) -> Self {
        match stop {
            Stop::Final => Self::BadAnswer,
            Stop::Deadline => Self::Deadline,
            Stop::Limit | Stop::BudgetSpent => Self::Exhausted,
        }
    }
}

/// One attempt about to start: where, admitted how, which one, for how long.
struct Launch {
    endpoint: Arc<Endpoint>,
    permit: Permit,
    number: u32,
    hedge: bool,
    timeout: Duration,
}

/// What a fan-out produced.
#[derive(Debug)]
pub struct FanOut<T> {
    /// Per endpoint asked: its URL and result.
    pub results: Vec<(String, Result<Answer<T>, AttemptError>)>,
    /// Endpoints not asked (down, open breaker, Retry-After).
    pub skipped: Vec<String>,
}
