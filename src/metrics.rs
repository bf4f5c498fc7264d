//! Prometheus metrics (SPEC §11): the process-wide recorder and the names we emit.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
// Request latency buckets, seconds: the node's are the same, so they aggregate.
use ucxl_service::observe::LATENCY_BUCKETS;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
///
/// The `metrics` facade has one global recorder per process; every application built in
/// the process (tests build many) shares it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("rustle_watch_feed_lag_seconds".into()),
                        LATENCY_BUCKETS,
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            // Counters alerts watch exist from the start at 0 (see `Gauges::new`).
            metrics::counter!("rustle_retry_budget_exhausted_total").increment(0);
            metrics::counter!("rustle_load_shed_total").increment(0);
            metrics::counter!("rustle_rate_limited_total").increment(0);
            metrics::counter!("rustle_audit_failures_total").increment(0);
            metrics::gauge!("rustle_watchers_active").set(0.0);
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "rustle_requests_total",
        "HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        "rustle_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route template"
    );
    describe_counter!(
        "rustle_requests_abandoned_total",
        "HTTP requests whose client went away before the answer (not counted in rustle_requests_total), by route template"
    );
    describe_counter!(
        "rustle_mcp_calls_total",
        "MCP tool calls at /mcp, by tool and outcome (the UCXL code of the answer)"
    );
    describe_counter!(
        "rustle_backend_attempts_total",
        "Attempts sent to BZZZ endpoints, by endpoint and outcome"
    );
    describe_counter!(
        "rustle_hedges_total",
        "Hedged reads, by outcome (won, lost, no_endpoint, budget)"
    );
    describe_counter!(
        "rustle_retries_total",
        "Retries after a failed attempt, by the endpoint that failed and the reason"
    );
    describe_counter!(
        "rustle_retry_budget_exhausted_total",
        "Retries refused because the retry budget was spent"
    );
    describe_gauge!(
        "rustle_breaker_state",
        "Breaker state per endpoint: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        "rustle_breaker_transitions_total",
        "Breaker state changes, by endpoint, from and to"
    );
    describe_gauge!(
        "rustle_circuit_state",
        "Deprecated: the old name of rustle_breaker_state (removed in the next release)"
    );
    describe_counter!(
        "rustle_circuit_transitions_total",
        "Deprecated: the old name of rustle_breaker_transitions_total (removed in the next release)"
    );
    describe_gauge!(
        "rustle_endpoint_up",
        "1 when the endpoint's last health check passed, else 0"
    );
    describe_gauge!(
        "rustle_endpoint_latency_ewma_seconds",
        Unit::Seconds,
        "Exponentially weighted moving average of attempt latency per endpoint"
    );
    describe_gauge!(
        "rustle_fallback_active",
        "1 while the hybrid backend serves from the local fallback, else 0"
    );
    describe_counter!(
        "rustle_fallback_events_total",
        "Requests served by the fallback, by the reason the cluster could not serve them"
    );
    describe_gauge!(
        "rustle_journal_pending",
        "Writes accepted in fallback and not yet replayed to the cluster"
    );
    describe_counter!(
        "rustle_journal_replayed_total",
        "Journal entries replayed to the cluster"
    );
    describe_counter!(
        "rustle_search_partial_total",
        "Searches answered with partial results (some endpoints failed)"
    );
    describe_counter!(
        "rustle_load_shed_total",
        "Requests refused with 503 because RUSTLE_MAX_IN_FLIGHT were in flight"
    );
    describe_counter!(
        "rustle_rate_limited_total",
        "Requests refused with 429 because their principal's rate was spent"
    );
    describe_counter!(
        "rustle_audit_failures_total",
        "Audit records that could not be written (writes and deletes were answered 503)"
    );
    describe_counter!(
        "rustle_local_store_evictions_total",
        "Cached addresses evicted from the local store to respect RUSTLE_CACHE_MAX_ENTRIES"
    );
    describe_watch();
}

fn describe_watch() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("rustle_watchers_active", "GET /v1/watch streams open");
    describe_counter!(
        "rustle_watch_events_total",
        "Watch events delivered to watchers, by event (put, delete, synced, error)"
    );
    describe_counter!(
        "rustle_watchers_dropped_total",
        "Watch streams ended by the gateway, by reason (slow: the watcher's queue filled)"
    );
    describe_histogram!(
        "rustle_watch_feed_lag_seconds",
        Unit::Seconds,
        "Time from a node's commit of a change to its delivery to watchers, by the endpoint that reported it first"
    );
    describe_counter!(
        "rustle_watch_feed_gaps_total",
        "Times a node's change feed had compacted changes the gateway had not read yet"
    );
}

/// How often histogram buckets are folded (the exporter needs periodic upkeep).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Counts a read that asked for the cache: answered from it (`hit`) or sent to a node.
/// The two counters are registered once; a cached read costs an increment, not a label
/// lookup.
pub fn cache_read(hit: bool) {
    static READS: OnceLock<[metrics::Counter; 2]> = OnceLock::new();
    let [hits, misses] = READS.get_or_init(|| {
        metrics::describe_counter!(
            "rustle_cache_reads_total",
            "Reads asking X-Rustle-Consistency: cached, by result (hit: from the cache; miss: from a node)"
        );
        [
            metrics::counter!("rustle_cache_reads_total", "result" => "hit"),
            metrics::counter!("rustle_cache_reads_total", "result" => "miss"),
        ]
    });
    if hit { hits } else { misses }.increment(1);
}
