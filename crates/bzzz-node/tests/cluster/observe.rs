//! What a node tells operators: its latency as a histogram with the gateway's buckets (so
//! it aggregates across nodes), the process metrics, and an access line per request that
//! carries the caller's trace.

use serde_json::json;

use super::address;
use super::harness::{NodeProc, body};

const TRACE: &str = "5c1d2f3e4a5b6c7d8e9f0a1b2c3d4e5f";
const PARENT: &str = "1a2b3c4d5e6f7a8b";

/// The value of `series` (labels included, as rendered), when present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_a_histogram_and_the_process_metrics_are_there() {
    let node = NodeProc::start("metered", &[], None, &[]).await;
    let client = reqwest::Client::new();
    let (status, _) = body(client.get(node.url("/health")).send().await).await;
    assert_eq!(status, 200);
    let metrics = client
        .get(node.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("# TYPE bzzz_request_duration_seconds histogram"),
        "{metrics}"
    );
    // The gateway's buckets, from 0.5 ms to 10 s.
    for le in ["0.0005", "0.005", "0.1", "1", "10", "+Inf"] {
        let series =
            format!("bzzz_request_duration_seconds_bucket{{route=\"/health\",le=\"{le}\"}}");
        assert!(
            sample(&metrics, &series).is_some_and(|n| n <= 1.0),
            "{series}: {metrics}"
        );
    }
    assert_eq!(
        sample(
            &metrics,
            "bzzz_request_duration_seconds_bucket{route=\"/health\",le=\"+Inf\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "bzzz_request_duration_seconds_count{route=\"/health\"}"
        ),
        Some(1.0)
    );
    assert!(metrics.contains("bzzz_request_duration_seconds_sum{route=\"/health\"}"));
    assert!(
        sample(&metrics, "process_resident_memory_bytes").is_some_and(|b| b > 1e6),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "process_open_fds").is_some_and(|n| n > 0.0),
        "{metrics}"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_virtual_memory_bytes",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(sample(&metrics, name).is_some(), "{name}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_logs_an_access_line_in_the_callers_trace() {
    let node = NodeProc::start("traced", &[], None, &[]).await;
    let client = reqwest::Client::new();
    let put = client
        .put(node.url(&format!(
            "/ucxi/v1/put?address={}",
            super::harness::enc(&address("traced"))
        )))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("x-request-id", "node-traced-1")
        .json(&json!({"content": 1}))
        .send()
        .await
        .expect("sent");
    assert_eq!(put.status(), 201);
    let lines = node.access_lines("node-traced-1").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let f = &lines[0];
    assert_eq!(f["message"], "answered");
    assert_eq!(f["method"], "PUT");
    assert_eq!(f["route"], "/ucxi/v1/put");
    assert_eq!(f["status"], 201);
    assert_eq!(f["trace_id"], TRACE);
    assert_eq!(
        f["parent_span_id"], PARENT,
        "the caller's span is the parent"
    );
    assert_eq!(f["span_id"].as_str().map(str::len), Some(16));
    assert!(
        f.get("backend").is_none() && f.get("principal").is_none(),
        "{f}"
    );
}
