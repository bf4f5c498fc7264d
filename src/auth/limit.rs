//! Request rates per principal (GCRA token buckets, `governor`): one noisy agent cannot
//! starve the others. Load shedding (`RUSTLE_MAX_IN_FLIGHT`) stays the global guard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::grant::Rate;

/// Callers whose buckets are kept; past this the buckets start afresh (each caller gets
/// one full burst again), so made-up callers cannot grow memory without bound.
const MAX_CALLERS: usize = 65_536;

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;
/// Each caller's rate and bucket.
type Buckets<C> = HashMap<String, (Rate, Arc<Bucket<C>>)>;

/// One token bucket per caller.
#[derive(Debug)]
pub struct Limiter<C: Clock = DefaultClock> {
    clock: C,
    buckets: Mutex<Buckets<C>>,
}

impl Default for Limiter<DefaultClock> {
    fn default() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// A limiter on `clock`.
    pub fn with_clock(clock: C) -> Self {
        Self {
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `caller`'s bucket at `rate`; `Err` with the time until the
    /// next request would be allowed. A caller whose rate changed (a policy reload) gets a
    /// fresh bucket at the new rate.
    ///
    /// # Errors
    /// The wait when the bucket is empty.
    pub fn check(&self, caller: &str, rate: Rate) -> Result<(), Duration> {
        let bucket = {
            let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
            match buckets.get(caller) {
                Some((held, bucket)) if *held == rate => Arc::clone(bucket),
                _ => {
                    if buckets.len() >= MAX_CALLERS {
                        tracing::warn!(
                            callers = buckets.len(),
                            "rate buckets start afresh: too many callers"
                        );
                        buckets.clear();
                    }
                    let quota = Quota::per_second(rate.per_sec).allow_burst(rate.burst);
                    let bucket =
                        Arc::new(RateLimiter::direct_with_clock(quota, self.clock.clone()));
                    buckets.insert(caller.to_owned(), (rate, Arc::clone(&bucket)));
                    bucket
                }
            }
        };
        bucket
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// The `Retry-After` seconds for a wait: rounded up, at least 1.
#[must_use]
pub fn retry_after_secs(wait: Duration) -> u32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::num::NonZeroU32;

    fn rate(per_sec: u32, burst: u32) -> Rate {
        Rate {
            per_sec: NonZeroU32::new(per_sec).expect("nonzero"),
            burst: NonZeroU32::new(burst).expect("nonzero"),
        }
    }

    #[test]
    fn a_burst_then_the_rate_and_callers_are_independent() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock(clock.clone());
        let r = rate(2, 3);
        for _ in 0..3 {
            assert!(limiter.check("noisy", r).is_ok());
        }
        let wait = limiter.check("noisy", r).expect_err("bucket empty");
        assert_eq!(wait, Duration::from_millis(500));
        assert!(
            limiter.check("quiet", r).is_ok(),
            "another caller is untouched"
        );
        clock.advance(Duration::from_millis(500));
        assert!(limiter.check("noisy", r).is_ok());
        assert!(limiter.check("noisy", r).is_err());
    }

    #[test]
    fn a_changed_rate_gets_a_fresh_bucket() {
        let limiter = Limiter::with_clock(FakeRelativeClock::default());
        assert!(limiter.check("a", rate(1, 1)).is_ok());
        assert!(limiter.check("a", rate(1, 1)).is_err());
        assert!(limiter.check("a", rate(5, 5)).is_ok());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
