//! One tracing span per request (with its request id and W3C trace context), one access
//! log line per request, and per-route metrics, labelled by the matched route template
//! (never the raw URI, whose cardinality is unbounded).
//!
//! The access log is the `access` target at `info`: `answered` for each answer (method,
//! route, status, duration, and where the routes say so, the upstream attempts, the
//! backend and the principal), `abandoned` for a request whose client went away (closed
//! the connection, reset the stream) before it was answered, which is counted apart and
//! not as any status. A log filter of `access=off` silences both.

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
use crate::otlp;
use crate::request_id;
use crate::trace_context::TraceContext;

/// Request latency buckets, seconds, of both services (so their histograms aggregate):
/// from loopback-fast to past the default 5 s deadline.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The names of a service's request metrics.
#[derive(Debug, Clone, Copy)]
pub struct MetricNames {
    /// Counter labelled `route`, `method`, `status`.
    pub requests_total: &'static str,
    /// Histogram labelled `route`, in seconds.
    pub request_duration_seconds: &'static str,
    /// Counter labelled `route`: requests whose client went away before the answer.
    pub requests_abandoned_total: &'static str,
}

/// How a request was served, for the access log: put in the response's extensions by the
/// route that knows (the gateway's backend answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Which backend answered (`real`, `fallback`, `cache`, `mock`).
    pub backend: &'static str,
    /// Attempts made towards upstream nodes.
    pub attempts: u32,
}

/// Who made the request, for the access log: put in the response's extensions by the
/// authentication layer.
#[derive(Clone)]
pub struct Principal(pub Arc<dyn AsRef<str> + Send + Sync>);

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Principal")
            .field(&AsRef::<str>::as_ref(&*self.0))
            .finish()
    }
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
    abandoned: Counter,
    requests: Vec<(&'static str, u16, Counter)>,
}

impl RouteMetrics {
    fn new(names: MetricNames, route: &str) -> Self {
        Self {
            duration: metrics::histogram!(
                names.request_duration_seconds,
                "route" => route.to_owned()
            ),
            abandoned: metrics::counter!(
                names.requests_abandoned_total,
                "route" => route.to_owned()
            ),
            requests: Vec::new(),
        }
    }
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
        let r = routes
            .entry(route.into())
            .or_insert_with(|| RouteMetrics::new(self.names, route));
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

    /// Counts a request abandoned by its client (no status, no duration: it was not
    /// answered).
    fn abandoned(&self, route: &str) {
        {
            let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(r) = routes.get(route) {
                r.abandoned.increment(1);
                return;
            }
        }
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        routes
            .entry(route.into())
            .or_insert_with(|| RouteMetrics::new(self.names, route))
            .abandoned
            .increment(1);
    }
}

/// What every request of a service goes through, outermost first: the request id and
/// trace context exist before anything logs; the span, access log and metrics see the final
/// status; error bodies are written for every error below, panics included (the panic
/// layer sits inside).
///
/// One middleware rather than three: each `from_fn` layer boxes the inner service and
/// the future of every request.
pub async fn frame(State(frame): State<Arc<Frame>>, mut req: Request, next: Next) -> Response {
    let request_id = request_id::assign(&mut req);
    let trace = TraceContext::from_headers(req.headers());
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = method_label(req.method());
    let uri = req.uri().clone();
    // The span carries the ids every log line of the request has; method and route go on
    // the access line, which costs nothing unless it is logged.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        trace_id = %trace.trace_id,
        span_id = %trace.span_id
    );
    let mut pending = Pending {
        frame: &frame,
        route,
        method,
        request_id: &request_id,
        started: Instant::now(),
        exported: otlp::Span::start(otlp::Kind::Server, "request", &trace),
        trace,
        answered: false,
    };
    req.extensions_mut().insert(pending.trace.clone());
    let response = next.run(req).instrument(span.clone()).await;
    let mut response = errors::rewrite(response, frame.source, uri.path(), &request_id);
    let elapsed = pending.started.elapsed();
    pending.answered = true;
    let status = response.status().as_u16();
    let duration_ms = millis(elapsed);
    if status >= 500 {
        span.in_scope(|| {
            tracing::warn!(method, route, status, latency_ms = duration_ms, "answered");
        });
    }
    let served = response.extensions().get::<Served>();
    let principal = response.extensions().get::<Principal>();
    tracing::info!(
        target: "access",
        method,
        route,
        status,
        duration_ms,
        attempts = served.map(|s| s.attempts),
        backend = served.map(|s| s.backend),
        principal = principal.map(|p| AsRef::<str>::as_ref(&*p.0)),
        request_id = &*request_id,
        trace_id = %pending.trace.trace_id,
        span_id = %pending.trace.span_id,
        parent_span_id = pending.trace.parent_id.map(tracing::field::display),
        "answered"
    );
    if pending.exported.is_recording() {
        let exported = &mut pending.exported;
        exported.set("http.request.method", method);
        exported.set("http.route", route.to_owned());
        exported.set("http.response.status_code", i64::from(status));
        exported.set("request_id", request_id.to_string());
        if let Some(served) = served {
            exported.set("backend", served.backend);
            exported.set("attempts", i64::from(served.attempts));
        }
        if status >= 500 {
            exported.fail(format!("answered {status}"));
        }
    }
    frame
        .observer
        .record(route, method, status, elapsed.as_secs_f64());
    request_id::echo(&mut response, &request_id);
    response
}

/// `d` in milliseconds, to the microsecond (a log line need not say `2.0393820000000003`).
fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A request being answered. Dropped before it is (the client closed the connection or
/// reset the stream, and the server dropped the request's future), it counts and logs the
/// request as abandoned.
struct Pending<'a> {
    frame: &'a Frame,
    route: &'a str,
    method: &'static str,
    request_id: &'a str,
    started: Instant,
    trace: TraceContext,
    exported: otlp::Span,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.frame.observer.abandoned(self.route);
        let duration_ms = millis(self.started.elapsed());
        tracing::info!(
            target: "access",
            method = self.method,
            route = self.route,
            duration_ms,
            request_id = self.request_id,
            trace_id = %self.trace.trace_id,
            span_id = %self.trace.span_id,
            "abandoned"
        );
        let exported = &mut self.exported;
        if exported.is_recording() {
            exported.set("http.request.method", self.method);
            exported.set("http.route", self.route.to_owned());
            exported.set("request_id", self.request_id.to_owned());
            exported.fail("abandoned by the client");
        }
    }
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
    fn durations_are_logged_to_the_microsecond() {
        let d = std::time::Duration::from_nanos(2_039_382_417);
        assert_eq!(millis(d).to_string(), "2039.382");
        assert_eq!(
            millis(std::time::Duration::from_micros(1_500)).to_string(),
            "1.5"
        );
    }

    #[test]
    fn only_standard_methods_become_labels() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let custom = Method::from_bytes(b"RANDOM42").expect("a valid token");
        assert_eq!(method_label(&custom), "other");
    }
}
