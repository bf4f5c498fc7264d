//! Operations routes: liveness, readiness, status and Prometheus metrics.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;
use ucxl::Code;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::backend::BackendStatus;
use crate::config::BackendMode;
use crate::error::ApiError;
use crate::openapi::schemas::{ErrorResponse, ProbeResponse, StatusResponse};
use crate::state::AppState;
use ucxl_service::Reply;
use ucxl_service::Rid;

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(status))
        .routes(routes!(metrics))
}

/// Liveness and readiness answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Probe {
    /// `ok`, `ready` or `not_ready`.
    pub status: &'static str,
    /// The backend mode.
    pub mode: BackendMode,
}

/// The gateway's state, for operators.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// The configured backend mode.
    pub mode: BackendMode,
    /// The gateway version.
    pub version: &'static str,
    /// When the process started.
    #[serde(with = "ucxl::envelope::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: DateTime<Utc>,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Authentication: `required` (with how many API-key principals, and whether JWTs
    /// are accepted) or `none`.
    pub auth: crate::auth::AuthStatus,
    /// Watch streams, and each change feed the gateway reads.
    pub watch: crate::watch::WatchStatus,
    /// What the active backend reports.
    #[serde(flatten)]
    pub backend: BackendStatus,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses((status = 200, description = "Alive (`UCXL-200-OK`, `status: ok`)", body = ProbeResponse))
)]
async fn health(State(state): State<AppState>, Rid(rid): Rid) -> Reply<Probe> {
    let mode = state.active.load().mode;
    Reply::new(Code::Ok, "alive", Probe { status: "ok", mode }, &rid)
}

/// Readiness: some backend can serve requests now.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to serve (`UCXL-200-OK`, `status: ready`)", body = ProbeResponse),
        (status = 503, description = "No backend can serve (`UCXL-503-SERVICE_UNAVAILABLE`, `details.mode`; `Retry-After` says when to ask again)", body = ErrorResponse),
    )
)]
async fn ready(State(state): State<AppState>, Rid(rid): Rid) -> Result<Reply<Probe>, ApiError> {
    let active = state.active.load();
    if active.backend.ready() {
        Ok(Reply::new(
            Code::Ok,
            "ready",
            Probe {
                status: "ready",
                mode: active.mode,
            },
            &rid,
        ))
    } else {
        Err(ApiError::Unavailable {
            message: "no backend can serve requests".into(),
            details: serde_json::json!({"mode": active.mode}),
            retry_after: Some(1),
        })
    }
}

/// Mode, active backend, fallback state, journal depth, endpoints, local store and watch
/// feeds.
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "operations",
    responses((status = 200, description = "The gateway's state (`UCXL-200-OK`)", body = StatusResponse))
)]
async fn status(State(state): State<AppState>, Rid(rid): Rid) -> Reply<Status> {
    let active = state.active.load();
    let status = Status {
        mode: active.mode,
        version: env!("CARGO_PKG_VERSION"),
        started_at: state.started_at,
        uptime_seconds: state.started.elapsed().as_secs(),
        auth: state.auth.status(state.config.load().auth),
        watch: state.watch.status(),
        backend: active.backend.status(),
    };
    Reply::new(Code::Ok, "status", status, &rid)
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"))
)]
async fn metrics(State(state): State<AppState>) -> Response {
    ucxl_service::lifecycle::prometheus_text(&state.metrics)
}
