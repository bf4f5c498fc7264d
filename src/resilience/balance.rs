//! Choosing an endpoint: power of two choices over the available endpoints, by peak-EWMA
//! latency times (in-flight + 1) (SPEC §7), as linkerd and Finagle do. Peak-EWMA jumps to
//! a slow sample at once and decays back gradually, so a node that turns slow is avoided
//! quickly and trusted again slowly.

use std::time::Duration;

use tokio::time::Instant;

/// How fast the average forgets (the EWMA time constant).
pub const DECAY: Duration = Duration::from_secs(10);
/// The latency assumed for an endpoint with no samples yet, so new endpoints get traffic.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// One endpoint's load estimate.
#[derive(Debug, Clone)]
pub struct Load {
    ewma_secs: f64,
    stamp: Instant,
    in_flight: u32,
}

impl Load {
    /// No samples yet.
    #[must_use]
    pub fn new(now: Instant) -> Self {
        Self {
            ewma_secs: DEFAULT_RTT.as_secs_f64(),
            stamp: now,
            in_flight: 0,
        }
    }

    /// The latency estimate.
    #[must_use]
    pub fn ewma(&self) -> Duration {
        Duration::from_secs_f64(self.ewma_secs)
    }

    /// Calls in flight.
    #[must_use]
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// A call starts.
    pub fn start(&mut self) {
        self.in_flight = self.in_flight.saturating_add(1);
    }

    /// A call ended without telling anything about latency (abandoned).
    pub fn cancel(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// A call ended after `rtt`.
    pub fn finish(&mut self, rtt: Duration, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let sample = rtt.as_secs_f64();
        if sample > self.ewma_secs {
            // Peak sensitivity: a slow answer counts in full at once.
            self.ewma_secs = sample;
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
            let w = (-elapsed / DECAY.as_secs_f64()).exp();
            self.ewma_secs = self.ewma_secs * w + sample * (1.0 - w);
        }
        self.stamp = now;
    }

    /// The cost used to compare endpoints.
    #[must_use]
    pub fn cost(&self) -> f64 {
        self.ewma_secs * (f64::from(self.in_flight) + 1.0)
    }
}

/// Picks one of `candidates` (indices into `loads`): two distinct ones at random, the
/// cheaper wins. `pick(n)` returns a random index below `n` (injected so tests decide).
pub fn p2c(
    candidates: &[usize],
    loads: &[Load],
    pick: &mut dyn FnMut(usize) -> usize,
) -> Option<usize> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let a = pick(n) % n;
            let mut b = pick(n - 1) % (n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (candidates[a], candidates[b]);
            let cost = |i: usize| loads.get(i).map_or(f64::INFINITY, Load::cost);
            Some(if cost(b) < cost(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let now = Instant::now();
        let mut load = Load::new(now);
        load.start();
        load.finish(Duration::from_millis(100), now);
        assert_eq!(
            load.ewma(),
            Duration::from_millis(100),
            "a slow sample counts at once"
        );
        tokio::time::advance(DECAY).await;
        load.start();
        load.finish(Duration::from_millis(10), Instant::now());
        let ewma = load.ewma().as_secs_f64() * 1e3;
        // after one time constant: 100·e⁻¹ + 10·(1 − e⁻¹) ≈ 43 ms
        assert!((ewma - 43.1).abs() < 0.5, "{ewma}");
        assert_eq!(load.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_calls_raise_the_cost() {
        let now = Instant::now();
        let mut load = Load::new(now);
        let idle = load.cost();
        load.start();
        load.start();
        assert!((load.cost() - 3.0 * idle).abs() < 1e-12);
    }

    #[tokio::test(start_paused = true)]
    async fn two_choices_prefer_the_cheaper_and_never_pick_the_same_twice() {
        let now = Instant::now();
        let mut loads = vec![Load::new(now), Load::new(now), Load::new(now)];
        loads[0].start();
        loads[0].finish(Duration::from_millis(50), now);
        // the random picks land on 0 and 1: 1 is cheaper
        let mut picks = [0usize, 0].into_iter();
        let chosen = p2c(&[0, 1, 2], &loads, &mut |_| picks.next().unwrap_or(0));
        assert_eq!(chosen, Some(1));
        // one candidate: no choice; none: nothing
        assert_eq!(p2c(&[2], &loads, &mut |_| 0), Some(2));
        assert_eq!(p2c(&[], &loads, &mut |_| 0), None);
        // whatever the random source says, the two picks differ: with three distinct
        // costs (0 dearest, then 1, 2 cheapest), the cheaper of two distinct ones wins
        loads[1].start();
        loads[1].finish(Duration::from_millis(20), now);
        for a in 0..3 {
            for b in 0..2 {
                let second = if b >= a { b + 1 } else { b };
                let expected = a.max(second);
                let mut seq = [a, b].into_iter();
                let chosen = p2c(&[0, 1, 2], &loads, &mut |_| seq.next().unwrap_or(0));
                assert_eq!(chosen, Some(expected), "picks {a} and {second}");
            }
        }
    }
}
