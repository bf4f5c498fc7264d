//! Load shedding (SPEC §7): at most `RUSTLE_MAX_IN_FLIGHT` envelope, search and MCP requests in
//! flight; beyond
//! that a request is answered 503 with `Retry-After: 1` at once, never queued.
//!
//! A counter rather than tower's `ConcurrencyLimit` + `LoadShed`: the limit changes on a
//! live reload, and the refusal must be a UCXL error like every other.

use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

/// Decrements the in-flight count when the request ends (or is dropped).
struct Slot(AppState);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether requests to `path` count against the limit: envelopes, search and MCP.
/// Operations routes (health, metrics, status, admin) stay answerable under overload, and
/// watch streams have their own limit (`RUSTLE_MAX_WATCHES`). The `OpenAPI` document asks
/// this too.
#[must_use]
pub fn sheds(path: &str) -> bool {
    path.starts_with("/v1/envelopes") || path.starts_with("/v1/search") || path == "/mcp"
}

/// The middleware.
pub async fn shed_load(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !sheds(request.uri().path()) {
        return next.run(request).await;
    }
    let limit = state.config.load().max_in_flight;
    let before = state.in_flight.fetch_add(1, Ordering::AcqRel);
    let slot = Slot(state);
    if before >= limit {
        drop(slot);
        metrics::counter!("rustle_load_shed_total").increment(1);
        return ApiError::Unavailable {
            message: format!("overloaded: {limit} requests in flight (RUSTLE_MAX_IN_FLIGHT)"),
            details: json!({"max_in_flight": limit}),
            retry_after: Some(1),
        }
        .into_response();
    }
    let response = next.run(request).await;
    drop(slot);
    response
}
