//! What may be retried, how long to wait, and how many retries the gateway can afford
//! (SPEC §7): the one place that decides whether a failed attempt is tried again.
//!
//! - Retried elsewhere: connection errors, timeouts, 429, 502, 503, 504 and 507 (a node
//!   that cannot store), and a node refusing the gateway's credentials (another node may
//!   accept them). Never a node's definite 4xx answer, nor an unusable answer (it would
//!   be as unusable again).
//! - At most `max_retries` retries, inside the request deadline, within the budget.
//! - Backoff: exponential from `backoff_base` with factor 2, capped at `backoff_max`
//!   (the schedule comes from `backon`), with *full* jitter: each wait is uniform in
//!   `[0, step]`, which spreads retries of many clients best.
//! - Budget (`budget`): how many retries the gateway can afford.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use super::budget::RetryBudget;
use crate::upstream::ucxi::AttemptError;

use crate::config::RetryConfig;

/// Scales a backoff step to the wait actually used: `[0, 1)` × step for full jitter.
pub type JitterFn = fn() -> f64;

/// Full jitter: uniform in `[0, 1)`.
#[must_use]
pub fn full_jitter() -> f64 {
    fastrand::f64()
}

/// No jitter (tests): the whole step.
#[must_use]
pub fn no_jitter() -> f64 {
    1.0
}

/// Whether another attempt (elsewhere) may succeed after `e`.
#[must_use]
pub fn retryable(e: &AttemptError) -> bool {
    match e {
        AttemptError::Connect(_) | AttemptError::Timeout(_) | AttemptError::Credentials(_) => true,
        AttemptError::Unavailable { status, .. } => {
            matches!(status, 429 | 502 | 503 | 504 | 507)
        }
        AttemptError::BadAnswer(_) | AttemptError::WrongAddress(_) => false,
    }
}

/// Why a request stops retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The failure would repeat anywhere.
    Final,
    /// The request deadline passed.
    Deadline,
    /// `max_retries` retries were made.
    Limit,
    /// The retry budget is spent.
    BudgetSpent,
}

/// After failed attempt number `attempts` (1-based) with `e`: how long to wait before
/// the next attempt, or why to stop. A `Retry-After` answer is retried elsewhere at once.
///
/// # Errors
/// [`Stop`] when the request must not be retried.
pub fn next(
    e: &AttemptError,
    attempts: u32,
    config: &RetryConfig,
    deadline: Instant,
    now: Instant,
    budget: &mut RetryBudget,
    backoff: &mut Backoff,
) -> Result<Duration, Stop> {
    if !retryable(e) {
        return Err(Stop::Final);
    }
    if deadline <= now {
        return Err(Stop::Deadline);
    }
    if attempts > config.max_retries {
        return Err(Stop::Limit);
    }
    if !budget.try_retry(now) {
        metrics::counter!("rustle_retry_budget_exhausted_total").increment(1);
        return Err(Stop::BudgetSpent);
    }
    let retry_after = matches!(
        e,
        AttemptError::Unavailable {
            retry_after: Some(_),
            ..
        }
    );
    Ok(if retry_after {
        Duration::ZERO
    } else {
        backoff.next_wait()
    })
}

/// The waits before each retry of one request.
#[derive(Debug)]
pub struct Backoff {
    steps: backon::ExponentialBackoff,
    jitter: JitterFn,
}

impl Backoff {
    /// The backoff of `config`, starting afresh.
    #[must_use]
    pub fn new(config: &RetryConfig, jitter: JitterFn) -> Self {
        let steps = ExponentialBuilder::default()
            .with_min_delay(config.backoff_base)
            .with_max_delay(config.backoff_max)
            .with_factor(2.0)
            .without_max_times()
            .build();
        Self { steps, jitter }
    }

    /// The wait before the next retry.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.steps.next().unwrap_or_default();
        step.mul_f64((self.jitter)().clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RetryConfig {
        RetryConfig {
            max_retries: 2,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
            budget_percent: 20,
            budget_min_per_sec: 10,
        }
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let mut b = Backoff::new(&config(), no_jitter);
        let waits: Vec<u128> = (0..8).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [25, 50, 100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn full_jitter_stays_within_the_step() {
        for _ in 0..100 {
            let mut b = Backoff::new(&config(), full_jitter);
            for step in [25u64, 50, 100, 200, 400, 800, 1000, 1000] {
                let w = b.next_wait();
                assert!(w <= Duration::from_millis(step), "{w:?} > {step} ms");
            }
        }
    }

    #[test]
    fn what_may_be_retried() {
        assert!(retryable(&AttemptError::Connect("refused".into())));
        assert!(retryable(&AttemptError::Timeout(10)));
        assert!(retryable(&AttemptError::Credentials(401)));
        assert!(!retryable(&AttemptError::BadAnswer("x".into())));
        for status in [429, 502, 503, 504, 507] {
            let e = AttemptError::Unavailable {
                status,
                retry_after: None,
            };
            assert!(retryable(&e), "{status}");
        }
        for status in [500, 501, 505] {
            let e = AttemptError::Unavailable {
                status,
                retry_after: None,
            };
            assert!(!retryable(&e), "{status}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_decision_stops_at_the_limit_the_deadline_and_the_budget() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(5);
        let mut budget = RetryBudget::new(&config(), now);
        let mut backoff = Backoff::new(&config(), no_jitter);
        let timeout = AttemptError::Timeout(1);
        let mut next_after = |attempts, e: &AttemptError, deadline| {
            next(
                e,
                attempts,
                &config(),
                deadline,
                now,
                &mut budget,
                &mut backoff,
            )
        };
        let millis = |r: Result<Duration, Stop>| r.map(|d| d.as_millis());
        assert_eq!(millis(next_after(1, &timeout, deadline)), Ok(25));
        assert_eq!(millis(next_after(2, &timeout, deadline)), Ok(50));
        assert_eq!(next_after(3, &timeout, deadline), Err(Stop::Limit));
        assert_eq!(next_after(1, &timeout, now), Err(Stop::Deadline));
        assert_eq!(
            next_after(1, &AttemptError::BadAnswer("x".into()), deadline),
            Err(Stop::Final)
        );
        let asked = AttemptError::Unavailable {
            status: 503,
            retry_after: Some(Duration::from_secs(1)),
        };
        assert_eq!(
            next_after(1, &asked, deadline),
            Ok(Duration::ZERO),
            "elsewhere at once"
        );
        let mut empty = RetryBudget::new(
            &RetryConfig {
                budget_min_per_sec: 0,
                budget_percent: 0,
                ..config()
            },
            now,
        );
        assert_eq!(
            next(
                &timeout,
                1,
                &config(),
                deadline,
                now,
                &mut empty,
                &mut Backoff::new(&config(), no_jitter)
            ),
            Err(Stop::BudgetSpent)
        );
    }
}
