//! One tracing span per request and per-route metrics, labelled by the matched route
//! template (never the raw URI, whose cardinality is unbounded).

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::Instant;
use tracing::Instrument;

use crate::request_id::RequestId;

/// The names of a service's request counter and latency histogram.
#[derive(Debug, Clone, Copy)]
pub struct MetricNames {
    /// Counter labelled `route`, `method`, `status`.
    pub requests_total: &'static str,
    /// Histogram labelled `route`, in seconds.
    pub request_duration_seconds: &'static str,
}

/// The method as a label value: standard methods by name, anything else `other`, so a
/// client sending made-up methods cannot create time series without bound.
#[must_use]
pub fn method_label(method: &Method) -> &'static str {
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::PUT, "PUT"),
        (Method::POST, "POST"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PATCH, "PATCH"),
        (Method::TRACE, "TRACE"),
        (Method::CONNECT, "CONNECT"),
    ];
    STANDARD
        .iter()
        .find(|(m, _)| m == method)
        .map_or("other", |(_, name)| name)
}

/// The span, counter and histogram of one request.
pub async fn observe(State(names): State<MetricNames>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(|| Arc::from("-"), |r| Arc::clone(&r.0));
    let span = tracing::info_span!("request", request_id = %request_id, method, route = %route);
    let started = Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, latency_ms = elapsed.as_secs_f64() * 1e3, "answered");
        } else {
            tracing::debug!(status, latency_ms = elapsed.as_secs_f64() * 1e3, "answered");
        }
    });
    metrics::counter!(
        names.requests_total,
        "route" => route.clone(),
        "method" => method,
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(names.request_duration_seconds, "route" => route)
        .record(elapsed.as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_methods_become_labels() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let custom = Method::from_bytes(b"RANDOM42").expect("a valid token");
        assert_eq!(method_label(&custom), "other");
    }
}
