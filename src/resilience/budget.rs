//! The retry budget (SPEC §7): retries may add `budget_percent` % of the request rate plus
//! `budget_min_per_sec` per second, counted over a 10 s sliding window; past it, a request
//! fails over without retrying, so retries cannot multiply an overload.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RetryConfig;

/// The budget's window.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Counts requests and retries per second over the budget window.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u32,
    min_per_sec: u32,
    /// (second index, requests, retries), oldest first.
    buckets: VecDeque<(u64, u64, u64)>,
    origin: Instant,
}

impl RetryBudget {
    /// A budget with nothing spent.
    #[must_use]
    pub fn new(config: &RetryConfig, now: Instant) -> Self {
        Self {
            percent: config.budget_percent,
            min_per_sec: config.budget_min_per_sec,
            buckets: VecDeque::new(),
            origin: now,
        }
    }

    /// Applies reloaded budget settings; what was counted stays.
    pub fn set_config(&mut self, config: &RetryConfig) {
        self.percent = config.budget_percent;
        self.min_per_sec = config.budget_min_per_sec;
    }

    fn bucket(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let second = now.saturating_duration_since(self.origin).as_secs();
        let window = BUDGET_WINDOW.as_secs();
        while self
            .buckets
            .front()
            .is_some_and(|(s, _, _)| s + window <= second)
        {
            self.buckets.pop_front();
        }
        if self.buckets.back().is_none_or(|(s, _, _)| *s != second) {
            self.buckets.push_back((second, 0, 0));
        }
        // Just pushed or already present.
        let last = self.buckets.len() - 1;
        &mut self.buckets[last]
    }

    /// Counts a request (first attempts earn retry budget).
    pub fn record_request(&mut self, now: Instant) {
        self.bucket(now).1 += 1;
    }

    /// Spends one retry if the budget allows; false when exhausted.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        self.bucket(now);
        let (requests, retries) = self
            .buckets
            .iter()
            .fold((0u64, 0u64), |(q, r), (_, bq, br)| (q + bq, r + br));
        let allowed = u64::from(self.min_per_sec) * BUDGET_WINDOW.as_secs()
            + requests * u64::from(self.percent) / 100;
        if retries < allowed {
            self.bucket(now).2 += 1;
            true
        } else {
            false
        }
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

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_the_floor_plus_a_share_of_requests() {
        let now = Instant::now();
        let mut budget = RetryBudget::new(&config(), now);
        // No traffic: the floor is 10/s over 10 s = 100 retries.
        let granted = (0..150).filter(|_| budget.try_retry(now)).count();
        assert_eq!(granted, 100);
        // 1000 requests earn 20 % more.
        for _ in 0..1000 {
            budget.record_request(now);
        }
        let more = (0..500).filter(|_| budget.try_retry(now)).count();
        assert_eq!(more, 200);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_refills_as_the_window_slides() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(&config(), start);
        assert_eq!((0..200).filter(|_| budget.try_retry(start)).count(), 100);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!budget.try_retry(Instant::now()), "still within the window");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            budget.try_retry(Instant::now()),
            "the old retries have left the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reloaded_settings_apply_to_what_was_counted() {
        let now = Instant::now();
        let mut budget = RetryBudget::new(&config(), now);
        assert_eq!((0..200).filter(|_| budget.try_retry(now)).count(), 100);
        let mut more = config();
        more.budget_min_per_sec = 15;
        budget.set_config(&more);
        assert_eq!((0..200).filter(|_| budget.try_retry(now)).count(), 50);
    }
}
