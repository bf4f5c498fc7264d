//! UCXL error bodies for every error answer, whoever produced it.

use std::any::Any;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};
use ucxl::{Code, Failure, FailureBody};

/// The service name written in error bodies' `source` (`rustle-gateway`, `bzzz-node`).
#[derive(Debug, Clone, Copy)]
pub struct Source(pub &'static str);

/// An error to be answered: code, message and details. As a response it is a bare status
/// carrying the report in its extensions; [`rewrite`] writes the body.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorReport {
    /// The UCXL code (and so the HTTP status).
    pub code: Code,
    /// Human message.
    pub message: String,
    /// Structured details (an object).
    pub details: Value,
}

impl ErrorReport {
    /// A report with a code, message and details.
    pub fn new(code: Code, message: impl Into<String>, details: Value) -> Self {
        Self {
            code,
            message: message.into(),
            details,
        }
    }

    /// An opaque internal error; the cause goes to the log, never to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            Code::InternalError,
            "internal error; the service log has the cause under this request id",
            json!({}),
        )
    }

    /// The HTTP status of the code.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ErrorReport {
    fn into_response(self) -> Response {
        let mut response = self.status().into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// Writes the UCXL error body of an error answer (a handler's [`ErrorReport`], or any
/// 4xx/5xx without one, such as axum's own rejections); success answers pass unchanged.
#[must_use]
pub fn rewrite(response: Response, source: Source, path: &str, request_id: &str) -> Response {
    let status = response.status();
    let report = response.extensions().get::<ErrorReport>().cloned();
    if report.is_none() && !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let report = report.unwrap_or_else(|| {
        let code = Code::for_status(status.as_u16());
        let message = status
            .canonical_reason()
            .map_or_else(|| code.default_message().to_owned(), str::to_owned);
        ErrorReport::new(code, message, json!({}))
    });
    let body = Failure {
        error: FailureBody {
            code: report.code,
            message: report.message,
            details: report.details,
            source: source.0.to_owned(),
            path: path.to_owned(),
            request_id: request_id.to_owned(),
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
    ErrorReport::internal(&format_args!("handler panicked: {what}")).into_response()
}

/// 404 for unknown routes.
pub async fn not_found(req: Request) -> ErrorReport {
    ErrorReport::new(
        Code::NotFound,
        format!("no route for {} {}", req.method(), req.uri().path()),
        json!({"method": req.method().as_str(), "path": req.uri().path()}),
    )
}

/// 405 for known routes with another method; axum adds the `Allow` header listing the
/// route's methods.
///
/// `OPTIONS` (RFC 9110 §9.3.7) is answered instead, 204 with that `Allow` header: a route
/// supports it without declaring it. A browser's CORS preflight is an `OPTIONS` request;
/// where a CORS layer is installed it answers preflights itself, and without one this
/// answer carries no `Access-Control-*` header, so the browser refuses the cross-origin
/// call (rather than seeing a 405).
pub async fn method_not_allowed(req: Request) -> Response {
    if req.method() == axum::http::Method::OPTIONS {
        return StatusCode::NO_CONTENT.into_response();
    }
    ErrorReport::new(
        Code::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
        json!({"method": req.method().as_str()}),
    )
    .into_response()
}
