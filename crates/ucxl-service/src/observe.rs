//! One tracing span per request and per-route metrics, labelled by the matched route
//! template (never the raw URI, whose cardinality is unbounded).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Histogram};
use tokio::time::Instant;
use tracing::Instrument;

use crate::errors::{self, Source};
use crate::request_id;

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

/// The request metrics of one service, with their handles registered once per route,
/// method and status: a request then updates atomics, where `counter!` with labels built
/// and hashed the key and looked it up in the registry every time.
#[derive(Debug)]
pub struct Observer {
    names: MetricNames,
    routes: RwLock<HashMap<Box<str>, RouteMetrics>>,
}

#[derive(Debug)]
struct RouteMetrics {
    duration: Histogram,
    requests: Vec<(&'static str, u16, Counter)>,
}

impl Observer {
    /// An observer emitting `names`.
    #[must_use]
    pub fn new(names: MetricNames) -> Self {
        Self {
            names,
            routes: RwLock::default(),
        }
    }

    /// Counts one request and records its duration. The label sets are bounded: matched
    /// route templates, standard methods and HTTP statuses.
    fn record(&self, route: &str, method: &'static str, status: u16, seconds: f64) {
        {
            let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(r) = routes.get(route)
                && let Some((_, _, counter)) = r
                    .requests
                    .iter()
                    .find(|(m, s, _)| *m == method && *s == status)
            {
                counter.increment(1);
                r.duration.record(seconds);
                return;
            }
        }
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let r = routes.entry(route.into()).or_insert_with(|| RouteMetrics {
            duration: metrics::histogram!(
                self.names.request_duration_seconds,
                "route" => route.to_owned()
            ),
            requests: Vec::new(),
        });
        let known = r
            .requests
            .iter()
            .find(|(m, s, _)| *m == method && *s == status)
            .map(|(_, _, c)| c.clone());
        let counter = known.unwrap_or_else(|| {
            let c = metrics::counter!(
                self.names.requests_total,
                "route" => route.to_owned(),
                "method" => method,
                "status" => status.to_string()
            );
            r.requests.push((method, status, c.clone()));
            c
        });
        counter.increment(1);
        r.duration.record(seconds);
    }
}

/// What every request of a service goes through, outermost first: the request id exists
/// before anything logs; the span and metrics see the final status; error bodies are
/// written for every error below, panics included (the panic layer sits inside).
///
/// One middleware rather than three: each `from_fn` layer boxes the inner service and
/// the future of every request.
pub async fn frame(State(frame): State<Arc<Frame>>, mut req: Request, next: Next) -> Response {
    let request_id = request_id::assign(&mut req);
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = method_label(req.method());
    let uri = req.uri().clone();
    // The span carries only the request id (every log line of the request has it); method
    // and route go on the "answered" event, which costs nothing unless it is logged.
    let span = tracing::info_span!("request", request_id = %request_id);
    let started = Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    let mut response = errors::rewrite(response, frame.source, uri.path(), &request_id);
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.in_scope(|| {
        let latency_ms = elapsed.as_secs_f64() * 1e3;
        if status >= 500 {
            tracing::warn!(method, route, status, latency_ms, "answered");
        } else {
            tracing::debug!(method, route, status, latency_ms, "answered");
        }
    });
    frame
        .observer
        .record(route, method, status, elapsed.as_secs_f64());
    request_id::echo(&mut response, &request_id);
    response
}

/// The state of [`frame`]: the service's name for error bodies and its request metrics.
#[derive(Debug)]
pub struct Frame {
    source: Source,
    observer: Observer,
}

impl Frame {
    /// The frame of service `source` emitting `names`.
    #[must_use]
    pub fn new(source: Source, names: MetricNames) -> Self {
        Self {
            source,
            observer: Observer::new(names),
        }
    }
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
