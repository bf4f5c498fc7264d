//! The HTTP side of the UCXL response format, shared by the RUSTLE gateway and the BZZZ
//! node: request ids, UCXL error bodies for every error (unknown route, wrong method,
//! rejected body, panic), success replies, JSON bodies and query strings with precise
//! errors, per-route metrics and spans.
//!
//! Handlers return errors that leave an [`ErrorReport`] in the response; the
//! [`observe::frame`] layer, which knows the request id and path, writes the body.

pub mod body;
pub mod errors;
pub mod headers;
pub mod lifecycle;
pub mod log_fields;
pub mod observe;
pub mod otlp;
pub mod process;
pub mod reply;
pub mod request_id;
pub mod serve;
pub mod tls;
pub mod trace_context;

pub use body::{BodyError, is_json, parse_json, query, read_json};
pub use errors::{ErrorReport, Source};
pub use observe::{Frame, MetricNames, Observer};
pub use reply::Reply;
pub use request_id::{RequestId, Rid, X_REQUEST_ID};
pub use trace_context::TraceContext;

use axum::Router;
use axum::middleware::from_fn_with_state;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

/// Adds the UCXL fallbacks (404, 405) and the layer stack every route of a service gets.
///
/// Outermost first: the request id exists before anything logs; spans and metrics see the
/// final status; error bodies are written for every error below, panics included.
pub fn with_layers<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    source: Source,
    metrics: MetricNames,
) -> Router<S> {
    routes
        .fallback(errors::not_found)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(from_fn_with_state(
                    std::sync::Arc::new(observe::Frame::new(source, metrics)),
                    observe::frame,
                ))
                .layer(CatchPanicLayer::custom(errors::panic_response)),
        )
}
