//! Choosing an endpoint: power of two choices over the available endpoints, by peak-EWMA
//! latency times (in-flight + 1) (SPEC §7), as linkerd and Finagle do. Peak-EWMA jumps to
//! a slow sample at once and decays back gradually, so a node that turns slow is avoided
//! quickly and trusted again slowly: the estimate also decays towards zero while no sample
//! comes (as tower's `PeakEwma` does), so an avoided node is tried again now and then and
//! its recovery is noticed.
//!
//! Each endpoint also keeps a smoothed round-trip time and its variation (the TCP
//! retransmission-timeout estimator of RFC 6298) from its successful answers: the time
//! after which an answer is late, for hedging.

use std::time::Duration;

use tokio::time::Instant;

/// How fast the average forgets (the EWMA time constant).
pub const DECAY: Duration = Duration::from_secs(10);
/// The latency assumed for an endpoint with no samples yet, so new endpoints get traffic.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// The earliest a request is hedged, whatever the endpoint's latency: below this a second
/// request costs more than the latency it could save.
pub const HEDGE_MIN: Duration = Duration::from_millis(20);

/// One endpoint's load estimate.
#[derive(Debug, Clone)]
pub struct Load {
    ewma_secs: f64,
    stamp: Instant,
    in_flight: u32,
    /// Smoothed RTT of successful answers (RFC 6298 `SRTT`), seconds; `None` before the
    /// first.
    srtt: Option<f64>,
    /// Its variation (`RTTVAR`), seconds.
    rttvar: f64,
}

impl Load {
    /// No samples yet.
    #[must_use]
    pub fn new(now: Instant) -> Self {
        Self {
            ewma_secs: DEFAULT_RTT.as_secs_f64(),
            stamp: now,
            in_flight: 0,
            srtt: None,
            rttvar: 0.0,
        }
    }

    /// The latency estimate as of the last sample.
    #[must_use]
    pub fn ewma(&self) -> Duration {
        Duration::from_secs_f64(self.ewma_secs)
    }

    /// The latency estimate at `now`: decayed towards zero since the last sample.
    #[must_use]
    pub fn ewma_at(&self, now: Instant) -> Duration {
        Duration::from_secs_f64(self.decayed(now))
    }

    fn decayed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.ewma_secs * (-elapsed / DECAY.as_secs_f64()).exp()
    }

    /// When an answer of this endpoint is late (`SRTT + 4 RTTVAR`, RFC 6298's timeout
    /// without its one-second floor), at least [`HEDGE_MIN`]: most of its answers come
    /// sooner, so a request still waiting then is worth sending elsewhere as well.
    #[must_use]
    pub fn late_after(&self) -> Duration {
        let late = self.srtt.map_or(0.0, |srtt| srtt + 4.0 * self.rttvar);
        Duration::from_secs_f64(late).max(HEDGE_MIN)
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

    /// A call ended unanswered after `waited` (abandoned, or lost a hedge race). Its
    /// latency is at least `waited`: when that is more than the estimate it is a sample
    /// (a hung node looks slow, not idle); otherwise it says nothing.
    pub fn cancel(&mut self, waited: Duration, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let lower_bound = waited.as_secs_f64();
        if lower_bound > self.decayed(now) {
            self.ewma_secs = lower_bound;
            self.stamp = now;
        }
    }

    /// A call ended after `rtt`; `answered` when it was a valid answer (only those feed the
    /// hedging estimate: a failure's time says nothing of how soon answers come).
    pub fn finish(&mut self, rtt: Duration, now: Instant, answered: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let sample = rtt.as_secs_f64();
        let current = self.decayed(now);
        if sample > current {
            // Peak sensitivity: a slow answer counts in full at once.
            self.ewma_secs = sample;
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
            let w = (-elapsed / DECAY.as_secs_f64()).exp();
            self.ewma_secs = current * w + sample * (1.0 - w);
        }
        self.stamp = now;
        if answered {
            // RFC 6298 §2: alpha 1/8, beta 1/4.
            match self.srtt {
                None => {
                    self.srtt = Some(sample);
                    self.rttvar = sample / 2.0;
                }
                Some(srtt) => {
                    self.rttvar = 0.75 * self.rttvar + 0.25 * (srtt - sample).abs();
                    self.srtt = Some(0.875 * srtt + 0.125 * sample);
                }
            }
        }
    }

    /// The cost used to compare endpoints at `now`.
    #[must_use]
    pub fn cost(&self, now: Instant) -> f64 {
        self.decayed(now) * (f64::from(self.in_flight) + 1.0)
    }
}

/// Picks one of `candidates` (indices into `loads`): two distinct ones at random, the
/// cheaper at `now` wins. `pick(n)` returns a random index below `n` (injected so tests
/// decide).
pub fn p2c(
    candidates: &[usize],
    loads: &[Load],
    now: Instant,
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
            let cost = |i: usize| loads.get(i).map_or(f64::INFINITY, |l| l.cost(now));
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
        load.finish(Duration::from_millis(100), now, true);
        assert_eq!(
            load.ewma(),
            Duration::from_millis(100),
            "a slow sample counts at once"
        );
        tokio::time::advance(DECAY).await;
        // Without samples the estimate decays towards zero: 100·e⁻¹ ≈ 36.8 ms.
        let idle = load.ewma_at(Instant::now()).as_secs_f64() * 1e3;
        assert!((idle - 36.8).abs() < 0.5, "{idle}");
        load.start();
        load.finish(Duration::from_millis(10), Instant::now(), true);
        let ewma = load.ewma().as_secs_f64() * 1e3;
        // after one time constant: 36.8·e⁻¹ + 10·(1 − e⁻¹) ≈ 19.9 ms
        assert!((ewma - 19.9).abs() < 0.5, "{ewma}");
        assert_eq!(load.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_calls_raise_the_cost() {
        let now = Instant::now();
        let mut load = Load::new(now);
        let idle = load.cost(now);
        load.start();
        load.start();
        assert!((load.cost(now) - 3.0 * idle).abs() < 1e-12);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_call_longer_than_the_estimate_is_a_sample() {
        let now = Instant::now();
        let mut load = Load::new(now);
        load.start();
        load.cancel(Duration::from_millis(30), now);
        assert_eq!(
            load.ewma(),
            Duration::from_millis(30),
            "a hung node looks slow"
        );
        load.start();
        load.cancel(Duration::from_millis(5), now);
        assert_eq!(
            load.ewma(),
            Duration::from_millis(30),
            "a short wait says nothing"
        );
        assert_eq!(load.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_late_after_srtt_plus_four_deviations_but_never_before_the_floor() {
        let now = Instant::now();
        let mut load = Load::new(now);
        assert_eq!(load.late_after(), HEDGE_MIN, "no samples yet");
        for _ in 0..50 {
            load.start();
            load.finish(Duration::from_millis(40), now, true);
        }
        let late = load.late_after().as_secs_f64() * 1e3;
        assert!((40.0..45.0).contains(&late), "steady answers: {late}");
        load.start();
        load.finish(Duration::from_millis(400), now, false);
        let still = load.late_after().as_secs_f64() * 1e3;
        assert!(
            (40.0..45.0).contains(&still),
            "failures do not count: {still}"
        );
        let mut fast = Load::new(now);
        fast.start();
        fast.finish(Duration::from_millis(1), now, true);
        assert_eq!(fast.late_after(), HEDGE_MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn two_choices_prefer_the_cheaper_and_never_pick_the_same_twice() {
        let now = Instant::now();
        let mut loads = vec![Load::new(now), Load::new(now), Load::new(now)];
        loads[0].start();
        loads[0].finish(Duration::from_millis(50), now, true);
        // the random picks land on 0 and 1: 1 is cheaper
        let mut picks = [0usize, 0].into_iter();
        let chosen = p2c(&[0, 1, 2], &loads, now, &mut |_| picks.next().unwrap_or(0));
        assert_eq!(chosen, Some(1));
        // one candidate: no choice; none: nothing
        assert_eq!(p2c(&[2], &loads, now, &mut |_| 0), Some(2));
        assert_eq!(p2c(&[], &loads, now, &mut |_| 0), None);
        // whatever the random source says, the two picks differ: with three distinct
        // costs (0 dearest, then 1, 2 cheapest), the cheaper of two distinct ones wins
        loads[1].start();
        loads[1].finish(Duration::from_millis(20), now, true);
        for a in 0..3 {
            for b in 0..2 {
                let second = if b >= a { b + 1 } else { b };
                let expected = a.max(second);
                let mut seq = [a, b].into_iter();
                let chosen = p2c(&[0, 1, 2], &loads, now, &mut |_| seq.next().unwrap_or(0));
                assert_eq!(chosen, Some(expected), "picks {a} and {second}");
            }
        }
    }
}
