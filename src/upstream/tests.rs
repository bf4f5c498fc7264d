//! The cluster's attempt loop and the health checker, driven through the transport seam by
//! a fake that answers per endpoint as a test scripts it, in paused time: no sockets, no
//! sleeps, exact durations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::Method;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cluster::{Cluster, FailureKind, Jitters};
use super::transport::{Exchange, RawAnswer, Transport, TransportError};
use super::ucxi::{Answer, NodeRequest, Subject};
use crate::backend::Call;
use crate::config::{BackendMode, Config, Sources};
use crate::resilience::{breaker, retry};

const A: &str = "http://a.test:1";
const B: &str = "http://b.test:1";
const ADDRESS: &str = "ucxl://agent:role@project:task/doc";

/// What a fake endpoint does with a request.
#[derive(Debug, Clone)]
enum Behaviour {
    /// A valid envelope of `ADDRESS`, after `delay`.
    Envelope(Duration),
    /// A valid envelope of another address.
    OtherAddress,
    /// This status, with this `Retry-After`.
    Status(u16, Option<u64>),
    /// Never answers.
    Hang,
    /// Connection refused.
    Refuse,
}

/// The fake's script: a behaviour per endpoint (and per path: `/health` apart), and a log
/// of every exchange.
#[derive(Debug, Default)]
struct Script {
    api: HashMap<String, Behaviour>,
    health: HashMap<String, Behaviour>,
    log: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Script>>;

fn envelope_body(address: &str) -> Bytes {
    let (hash, size) = ucxl::content_digest(&json!(1)).expect("digest");
    Bytes::from(
        json!({"response": {
            "code": "UCXL-200-OK", "message": "found", "request_id": "r",
            "timestamp": "2026-11-30T10:00:00Z",
            "data": {"id": "e1", "address": address, "version": 1, "content": 1,
                     "content_type": "application/json", "metadata": {},
                     "created_at": "2026-11-30T10:00:00Z", "hash": hash, "size": size}
        }})
        .to_string(),
    )
}

async fn act(script: Shared, exchange: Exchange) -> Result<RawAnswer, TransportError> {
    let url = exchange.endpoint.as_str().to_owned();
    let path = exchange.request.path.clone();
    let behaviour = {
        let mut s = script.lock().expect("script");
        s.log.push((url.clone(), path.clone()));
        let table = if path == "/health" { &s.health } else { &s.api };
        table
            .get(&url)
            .cloned()
            .unwrap_or(Behaviour::Envelope(Duration::ZERO))
    };
    let answer = |status, body: Bytes, retry_after| RawAnswer {
        status,
        json: true,
        retry_after,
        body,
    };
    let work = async {
        match behaviour {
            Behaviour::Envelope(delay) => {
                tokio::time::sleep(delay).await;
                if path == "/health" {
                    let body = json!({"response": {"code": "UCXL-200-OK", "message": "healthy",
                        "request_id": "r", "timestamp": "2026-11-30T10:00:00Z", "data": {}}});
                    Ok(answer(200, Bytes::from(body.to_string()), None))
                } else {
                    Ok(answer(200, envelope_body(ADDRESS), None))
                }
            }
            Behaviour::OtherAddress => Ok(answer(
                200,
                envelope_body("ucxl://agent:role@project:task/other"),
                None,
            )),
            Behaviour::Status(status, retry_after) => Ok(answer(status, Bytes::new(), retry_after)),
            Behaviour::Hang => std::future::pending().await,
            Behaviour::Refuse => Err(TransportError::Connect("refused".into())),
        }
    };
    // The transport bounds an exchange by its timeout, as the HTTP transport does.
    let timeout = exchange.timeout;
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(TransportError::Timeout(timeout.as_millis())))
}

fn config(endpoints: &[&str]) -> Config {
    let mut config = Sources::default().resolve().expect("defaults");
    config.backend_mode = BackendMode::Real;
    config.bzzz_endpoints = endpoints.iter().map(|u| u.parse().expect("url")).collect();
    config
}

/// Deterministic: no jitter anywhere, P2C always compares the first two candidates.
fn jitters() -> Jitters {
    Jitters {
        breaker: breaker::no_jitter,
        backoff: retry::no_jitter,
        pick: |_| 0,
    }
}

fn cluster(config: &Config, script: &Shared) -> Arc<Cluster> {
    let script = Arc::clone(script);
    let factory: super::transport::TransportFactory = Arc::new(move |_| {
        let script = Arc::clone(&script);
        Ok(Transport::new(tower::service_fn(move |exchange| {
            act(Arc::clone(&script), exchange)
        })))
    });
    Arc::new(Cluster::with_transport(config, jitters(), factory).expect("cluster"))
}

fn script(api: &[(&str, Behaviour)]) -> Shared {
    let mut s = Script::default();
    for (url, b) in api {
        s.api.insert((*url).to_owned(), b.clone());
    }
    Arc::new(Mutex::new(s))
}

fn call(within: Duration) -> Call {
    Call::new("test", Instant::now() + within)
}

fn get(prefer: Option<&str>) -> NodeRequest {
    NodeRequest {
        method: Method::GET,
        path: "/ucxi/v1/get?address=x".into(),
        headers: Vec::new(),
        body: None,
        prefer: prefer.map(str::to_owned),
        list: false,
        about: Subject::Address(
            ucxl::Address::parse(ADDRESS)
                .expect("address")
                .canonical_shared(),
        ),
        hedge: true,
    }
}

fn endpoint<'a>(
    status: &'a [crate::backend::EndpointStatus],
    url: &str,
) -> &'a crate::backend::EndpointStatus {
    status.iter().find(|e| e.url == url).expect("endpoint")
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_is_retried_on_another_endpoint() {
    let s = script(&[(A, Behaviour::Status(503, None))]);
    let c = cluster(&config(&[A, B]), &s);
    let executed = c
        .execute::<Value>(&call(Duration::from_secs(5)), get(Some(A)))
        .await
        .expect("served");
    assert_eq!(executed.endpoint, B);
    assert_eq!(executed.attempts, 2);
    assert!(matches!(executed.answer, Answer::Ok { .. }));
    let status = c.status();
    assert_eq!(endpoint(&status, A).breaker.consecutive_failures, 1);
    assert_eq!(endpoint(&status, B).breaker.consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn without_hedging_a_hung_endpoint_costs_one_attempt_timeout() {
    let s = script(&[
        (A, Behaviour::Hang),
        (B, Behaviour::Envelope(Duration::from_millis(3))),
    ]);
    let cfg = config(&[A, B]);
    let c = cluster(&cfg, &s);
    let started = Instant::now();
    let request = NodeRequest {
        hedge: false,
        ..get(Some(A))
    };
    let executed = c
        .execute::<Value>(&call(Duration::from_secs(5)), request)
        .await
        .expect("served");
    assert_eq!(executed.endpoint, B);
    // The attempt timeout, the first backoff step (no jitter: the whole step), B's delay.
    assert_eq!(
        started.elapsed(),
        cfg.attempt_timeout + cfg.retry.backoff_base + Duration::from_millis(3)
    );
    let last = endpoint(&c.status(), A).last_error.clone();
    assert_eq!(last.as_deref(), Some("no answer within 1500 ms"));
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_is_hedged_to_another_endpoint_and_the_first_answer_wins() {
    let s = script(&[
        (A, Behaviour::Hang),
        (B, Behaviour::Envelope(Duration::from_millis(3))),
    ]);
    let c = cluster(&config(&[A, B]), &s);
    let started = Instant::now();
    let executed = c
        .execute::<Value>(&call(Duration::from_secs(5)), get(Some(A)))
        .await
        .expect("served");
    assert_eq!((executed.endpoint.as_str(), executed.attempts), (B, 2));
    // No samples yet: late after the floor; then B's 3 ms.
    assert_eq!(
        started.elapsed(),
        crate::resilience::balance::HEDGE_MIN + Duration::from_millis(3)
    );
    let status = c.status();
    let a = endpoint(&status, A);
    assert_eq!(a.in_flight, 0, "the losing attempt was cancelled");
    assert_eq!(
        a.breaker.consecutive_failures, 0,
        "losing a race is no failure"
    );
    assert!(
        a.ewma_latency_ms >= 20.0,
        "but A looks at least as slow as it was: {}",
        a.ewma_latency_ms
    );
    // With A looking slow, the next request goes to B first: no hedge needed.
    let next = c
        .execute::<Value>(&call(Duration::from_secs(5)), get(None))
        .await
        .expect("served");
    assert_eq!((next.endpoint.as_str(), next.attempts), (B, 1));
}

#[tokio::test(start_paused = true)]
async fn a_hedge_needs_the_retry_budget() {
    let s = script(&[(A, Behaviour::Envelope(Duration::from_millis(100)))]);
    let mut cfg = config(&[A, B]);
    cfg.retry.budget_min_per_sec = 0;
    cfg.retry.budget_percent = 0;
    let c = cluster(&cfg, &s);
    let executed = c
        .execute::<Value>(&call(Duration::from_secs(5)), get(Some(A)))
        .await
        .expect("served");
    assert_eq!(
        (executed.endpoint.as_str(), executed.attempts),
        (A, 1),
        "no hedge"
    );
}

#[tokio::test(start_paused = true)]
async fn every_endpoint_hung_ends_exactly_at_the_deadline() {
    let s = script(&[(A, Behaviour::Hang), (B, Behaviour::Hang)]);
    let c = cluster(&config(&[A, B]), &s);
    let started = Instant::now();
    let failure = c
        .execute::<Value>(&call(Duration::from_secs(2)), get(None))
        .await
        .expect_err("nobody answers");
    assert_eq!(failure.kind, FailureKind::Deadline);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    // The first attempt, its hedge 20 ms later (both time out at 1.5 s), then a retry
    // with what is left of the deadline.
    assert_eq!(failure.attempts, 3);
    // The retry's timeout was the client's remaining deadline, not a node's fault: only
    // the two full attempt timeouts count against their endpoints.
    let status = c.status();
    let failures: u32 = status.iter().map(|e| e.breaker.consecutive_failures).sum();
    assert_eq!(failures, 2);
}

#[tokio::test(start_paused = true)]
async fn an_answer_about_another_address_is_a_failure_and_not_retried() {
    let s = script(&[(A, Behaviour::OtherAddress)]);
    let c = cluster(&config(&[A, B]), &s);
    let failure = c
        .execute::<ucxl::Envelope>(&call(Duration::from_secs(5)), get(Some(A)))
        .await
        .expect_err("a lie is no answer");
    assert_eq!(failure.kind, FailureKind::BadAnswer);
    assert_eq!(failure.attempts, 1);
    let a = endpoint(&c.status(), A).clone();
    assert_eq!(a.breaker.consecutive_failures, 1, "recorded as a failure");
    assert_eq!(
        a.last_error.as_deref(),
        Some("answered for another address")
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_sends_the_retry_elsewhere_at_once_and_skips_the_endpoint() {
    let s = script(&[(A, Behaviour::Status(503, Some(2)))]);
    let c = cluster(&config(&[A, B]), &s);
    let started = Instant::now();
    let executed = c
        .execute::<Value>(&call(Duration::from_secs(5)), get(Some(A)))
        .await
        .expect("served");
    assert_eq!(executed.endpoint, B);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no backoff after Retry-After"
    );
    // While skipped, even a request preferring A goes to B.
    let again = c
        .execute::<Value>(&call(Duration::from_secs(5)), get(Some(A)))
        .await
        .expect("served");
    assert_eq!((again.endpoint.as_str(), again.attempts), (B, 1));
    tokio::time::advance(Duration::from_secs(2)).await;
    let a = endpoint(&c.status(), A).clone();
    assert!(
        a.available && a.skipped_until.is_none(),
        "the skip ended with its Retry-After: {a:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_retries_once_the_budget_is_spent() {
    let s = script(&[(A, Behaviour::Refuse), (B, Behaviour::Refuse)]);
    let mut cfg = config(&[A, B]);
    cfg.retry.budget_min_per_sec = 0;
    cfg.retry.budget_percent = 0;
    let c = cluster(&cfg, &s);
    let failure = c
        .execute::<Value>(&call(Duration::from_secs(5)), get(None))
        .await
        .expect_err("refused");
    assert_eq!(failure.kind, FailureKind::Exhausted);
    assert_eq!(failure.attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_the_breaker_and_nothing_is_sent_while_open() {
    let s = script(&[(A, Behaviour::Status(503, None))]);
    let c = cluster(&config(&[A]), &s);
    for _ in 0..2 {
        // 3 attempts each (one endpoint: retries go to it again), 5 failures open it.
        let _ = c
            .execute::<Value>(&call(Duration::from_secs(5)), get(None))
            .await;
    }
    assert_eq!(endpoint(&c.status(), A).breaker.state, "open");
    let sent = s.lock().expect("script").log.len();
    let failure = c
        .execute::<Value>(&call(Duration::from_secs(5)), get(None))
        .await
        .expect_err("open");
    assert_eq!(failure.kind, FailureKind::NoneAvailable);
    assert_eq!(s.lock().expect("script").log.len(), sent, "nothing sent");
    // After the open period a probe goes out (half-open), and a success closes it after
    // the configured number of probes.
    tokio::time::advance(Duration::from_secs(1)).await;
    s.lock().expect("script").api.remove(A);
    for _ in 0..3 {
        c.execute::<Value>(&call(Duration::from_secs(5)), get(None))
            .await
            .expect("probe served");
    }
    assert_eq!(endpoint(&c.status(), A).breaker.state, "closed");
}

#[tokio::test(start_paused = true)]
async fn health_checks_mark_an_endpoint_down_and_confirm_a_recovery_early() {
    let s = script(&[]);
    s.lock()
        .expect("script")
        .health
        .insert(A.into(), Behaviour::Status(503, None));
    let cfg = config(&[A]);
    let interval = cfg.health_interval;
    let c = cluster(&cfg, &s);
    let stop = CancellationToken::new();
    let checker = tokio::spawn(crate::resilience::health::run(Arc::clone(&c), stop.clone()));
    let health_checks = |s: &Shared| {
        s.lock()
            .expect("script")
            .log
            .iter()
            .filter(|(_, p)| p == "/health")
            .count()
    };
    // Two failures (now, and one interval later) mark it down.
    tokio::time::sleep(interval / 2).await;
    assert!(endpoint(&c.status(), A).up, "one failure is not enough");
    tokio::time::sleep(interval).await;
    assert!(!endpoint(&c.status(), A).up);
    assert!(!c.any_available());
    // It recovers: the first pass comes at the next check (two intervals after the
    // first); the confirming one a quarter interval after it, not a whole interval.
    s.lock().expect("script").health.remove(A);
    let checks = health_checks(&s);
    let just_after = Duration::from_millis(1);
    tokio::time::sleep(interval / 2 + just_after).await;
    assert_eq!(health_checks(&s), checks + 1);
    assert!(!endpoint(&c.status(), A).up, "one pass is not enough");
    tokio::time::sleep(interval / 4).await;
    assert!(
        endpoint(&c.status(), A).up,
        "confirmed a quarter interval later"
    );
    stop.cancel();
    checker.await.expect("the checker ends when stopped");
}

#[tokio::test(start_paused = true)]
async fn a_hung_endpoint_is_stalled_and_new_requests_go_elsewhere() {
    let s = script(&[(A, Behaviour::Hang)]);
    let c = cluster(&config(&[A, B]), &s);
    let write = |prefer| NodeRequest {
        method: Method::PUT,
        hedge: false,
        ..get(prefer)
    };
    let hung = {
        let c = Arc::clone(&c);
        let request = write(Some(A));
        tokio::spawn(async move {
            c.execute::<Value>(&call(Duration::from_secs(5)), request)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!endpoint(&c.status(), A).stalled, "not yet");
    tokio::time::sleep(crate::upstream::endpoint::STALL_MIN).await;
    let a = endpoint(&c.status(), A).clone();
    assert!(a.stalled && !a.available, "{a:?}");
    // A request preferring A goes to B at once.
    let started = Instant::now();
    let other = c
        .execute::<Value>(&call(Duration::from_secs(5)), write(Some(A)))
        .await
        .expect("served");
    assert_eq!((other.endpoint.as_str(), other.attempts), (B, 1));
    assert_eq!(started.elapsed(), Duration::ZERO);
    // The hung attempt times out and is retried on B; A is no longer stalled (nothing in
    // flight), it failed once.
    let served = hung.await.expect("joins").expect("retried elsewhere");
    assert_eq!(served.endpoint, B);
    let a = endpoint(&c.status(), A).clone();
    assert!(!a.stalled, "{a:?}");
    assert_eq!(a.breaker.consecutive_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn a_preferred_endpoint_that_is_much_slower_is_not_preferred() {
    let s = script(&[(A, Behaviour::Envelope(Duration::from_millis(150)))]);
    let c = cluster(&config(&[A, B]), &s);
    let unhedged = |prefer| NodeRequest {
        hedge: false,
        ..get(prefer)
    };
    // A answers, slowly: its latency is known.
    let first = c
        .execute::<Value>(&call(Duration::from_secs(5)), unhedged(Some(A)))
        .await
        .expect("served");
    assert_eq!(first.endpoint, A);
    // B answers fast (its latency is known too).
    c.execute::<Value>(&call(Duration::from_secs(5)), unhedged(Some(B)))
        .await
        .expect("served");
    let preferring_a = c
        .execute::<Value>(&call(Duration::from_secs(5)), unhedged(Some(A)))
        .await
        .expect("served");
    assert_eq!(
        preferring_a.endpoint, B,
        "150 ms against ~0: not much slower? no"
    );
    // A preference within the margin still counts.
    s.lock().expect("script").api.remove(A);
    tokio::time::advance(Duration::from_secs(60)).await;
    let recovered = c
        .execute::<Value>(&call(Duration::from_secs(5)), unhedged(Some(A)))
        .await
        .expect("served");
    assert_eq!(recovered.endpoint, A, "its old slowness has decayed away");
}
