//! Cross-cutting HTTP layers: request ids, tracing spans and metrics per route template,
//! the UCXL error body, panics turned into opaque 500s.

use std::any::Any;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use tokio::time::Instant;
use tracing::Instrument;
use ucxl::{Code, Failure, FailureBody};

use crate::error::{ApiError, ErrorReport};

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied request id that is echoed; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// The request id of the current request (echoed from the client or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// The service name in error bodies' `source`.
pub const SOURCE: &str = "rustle-gateway";

/// Takes the client's `X-Request-Id` when it is 1..=128 visible ASCII characters, else
/// generates a `UUIDv7`; stores it for handlers and echoes it on the response.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id: Arc<str> = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string().into(), Into::into);
    req.extensions_mut().insert(RequestId(Arc::clone(&id)));
    let mut response = next.run(req).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    response
}

/// The method as a label value: standard methods by name, anything else `other`.
fn method_label(method: &Method) -> &'static str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::PUT,
        Method::POST,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::TRACE,
        Method::CONNECT,
    ];
    const NAMES: [&str; 9] = [
        "GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT",
    ];
    STANDARD
        .iter()
        .position(|m| m == method)
        .map_or("other", |i| NAMES[i])
}

/// One tracing span per request, the request counter and the latency histogram, labelled
/// by the matched route template (never the raw URI, whose cardinality is unbounded).
pub async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Clients may send any method token: only standard ones become label values, so the
    // number of time series stays bounded.
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
        "rustle_requests_total",
        "route" => route.clone(),
        "method" => method,
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("rustle_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
    response
}

/// Writes the UCXL error body of every error answer: those of [`ApiError`] (which leave an
/// [`ErrorReport`]) and any other 4xx/5xx that reached here without one (axum's own 405,
/// a panic's 500), so no error escapes in another shape.
pub async fn ucxl_errors(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |r| r.0.to_string());
    let response = next.run(req).await;
    let status = response.status();
    let report = response.extensions().get::<ErrorReport>().cloned();
    if report.is_none() && !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let report = report.unwrap_or_else(|| {
        let code = Code::for_status(status.as_u16());
        ErrorReport {
            code,
            message: status
                .canonical_reason()
                .map_or_else(|| code.default_message().to_owned(), str::to_owned),
            details: serde_json::json!({}),
        }
    });
    let body = Failure {
        error: FailureBody {
            code: report.code,
            message: report.message,
            details: report.details,
            source: SOURCE.to_owned(),
            path,
            request_id,
            timestamp: Utc::now(),
        },
    };
    let (mut parts, _) = response.into_parts();
    let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":{}}".to_vec());
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

/// Turns a panic into an opaque 500 and logs what panicked.
#[allow(clippy::needless_pass_by_value)] // the signature `CatchPanicLayer::custom` takes
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("non-string panic payload");
    tracing::error!(panic = what, "handler panicked");
    ApiError::internal(std::io::Error::other("handler panicked")).into_response()
}

/// 404 for unknown routes.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(
        format!("no route for {} {}", req.method(), req.uri().path()),
        serde_json::json!({"method": req.method().as_str(), "path": req.uri().path()}),
    )
}

/// 405 for known routes with another method (axum keeps the `Allow` header).
pub async fn method_not_allowed(req: Request) -> Response {
    let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
    response.extensions_mut().insert(ErrorReport {
        code: Code::MethodNotAllowed,
        message: format!("{} is not allowed on {}", req.method(), req.uri().path()),
        details: serde_json::json!({"method": req.method().as_str()}),
    });
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
