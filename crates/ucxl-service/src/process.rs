//! The standard process metrics (the names of Prometheus's own client libraries), read
//! from `/proc` at each scrape and appended to `/metrics`: `process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`, `process_threads`. Linux only; elsewhere
//! nothing is added.
//!
//! Written here rather than taken from `metrics-process`: that crate goes through the
//! `metrics` facade, whose counters are integers, so its CPU time is whole seconds
//! (`rate()` over it is quantised to one second per scrape interval). Rendered as text at
//! scrape time, CPU seconds keep their clock-tick resolution and cost nothing between
//! scrapes.

use std::fmt::Write as _;

/// One reading of the process's metrics (what is not available is `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// User and system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size, bytes.
    pub virtual_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit of open file descriptors.
    pub max_fds: Option<u64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
    /// OS threads.
    pub threads: Option<u64>,
}

impl Reading {
    /// Reads this process's metrics now.
    #[must_use]
    pub fn now() -> Self {
        read()
    }

    /// Appends the metrics read, in the Prometheus text format, to `out`.
    pub fn render(&self, out: &mut String) {
        let mut metric = |name: &str, kind: &str, help: &str, value: Option<f64>| {
            if let Some(value) = value {
                // Writing to a String cannot fail.
                let _ = write!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
                );
            }
        };
        #[allow(clippy::cast_precision_loss)] // exact below 2^53 bytes, descriptors, threads
        let f = |v: Option<u64>| v.map(|v| v as f64);
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds,
        );
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            f(self.resident_bytes),
        );
        metric(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            f(self.virtual_bytes),
        );
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            f(self.open_fds),
        );
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            f(self.max_fds),
        );
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            self.start_time_seconds,
        );
        metric(
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            f(self.threads),
        );
    }
}

/// Appends this process's metrics to a `/metrics` answer.
pub fn append(out: &mut String) {
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    Reading::now().render(out);
}

#[cfg(target_os = "linux")]
#[allow(clippy::cast_precision_loss)] // clock ticks and seconds: far below 2^53
fn read() -> Reading {
    use procfs::prelude::*;
    let mut reading = Reading::default();
    let Ok(me) = procfs::process::Process::myself() else {
        return reading;
    };
    let ticks = procfs::ticks_per_second() as f64;
    if let Ok(stat) = me.stat() {
        reading.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
        reading.resident_bytes = Some(stat.rss_bytes().get());
        reading.virtual_bytes = Some(stat.vsize);
        reading.threads = u64::try_from(stat.num_threads).ok();
        if let Ok(boot) = procfs::boot_time_secs() {
            reading.start_time_seconds = Some(boot as f64 + stat.starttime as f64 / ticks);
        }
    }
    reading.open_fds = me.fd_count().ok().and_then(|n| u64::try_from(n).ok());
    if let Ok(limits) = me.limits() {
        reading.max_fds = match limits.max_open_files.soft_limit {
            procfs::process::LimitValue::Value(v) => Some(v),
            procfs::process::LimitValue::Unlimited => None,
        };
    }
    reading
}

#[cfg(not(target_os = "linux"))]
fn read() -> Reading {
    Reading::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_only_what_was_read_in_the_text_format() {
        let reading = Reading {
            cpu_seconds: Some(1.25),
            resident_bytes: Some(4096),
            ..Reading::default()
        };
        let mut out = String::new();
        reading.render(&mut out);
        assert!(
            out.contains(
                "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.25\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("process_resident_memory_bytes 4096\n"),
            "{out}"
        );
        assert!(!out.contains("process_open_fds"), "{out}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_plausibly() {
        let r = Reading::now();
        assert!(r.resident_bytes.is_some_and(|b| b > 0), "{r:?}");
        assert!(
            r.virtual_bytes
                .is_some_and(|b| b >= r.resident_bytes.unwrap_or(0)),
            "{r:?}"
        );
        assert!(r.open_fds.is_some_and(|n| n > 0), "{r:?}");
        assert!(
            r.max_fds.is_some_and(|n| n >= r.open_fds.unwrap_or(0)),
            "{r:?}"
        );
        assert!(r.threads.is_some_and(|n| n >= 1), "{r:?}");
        assert!(r.cpu_seconds.is_some_and(|s| s >= 0.0), "{r:?}");
        let started = r.start_time_seconds.expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0 * 365.0,
            "{started} vs {now}"
        );
    }
}
