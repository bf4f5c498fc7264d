//! `/v1/admin`: switch the backend mode and reload configuration at run time (the work is
//! `control`'s). Both need the admin token (`Authorization: Bearer <RUSTLE_ADMIN_TOKEN>`) or
//! a principal granted `admin`; with neither configured they answer 403.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::json;
use ucxl::Code;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::http::Admin;
use crate::config::BackendMode;
use crate::control::{self, ControlError, ReloadReport};
use crate::error::ApiError;
use crate::extract::{ApiJson, Ctx};
use crate::openapi::schemas::{ErrorResponse, ModeChangeResponse, ReloadResponse};
use crate::state::AppState;
use ucxl_service::Reply;

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(set_mode))
        .routes(routes!(reload))
}

/// The body of `PUT /v1/admin/mode`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModeRequest {
    /// The mode to switch to.
    pub mode: BackendMode,
}

/// The answer of a mode change.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModeChange {
    /// The mode now in force.
    pub mode: BackendMode,
    /// The mode before.
    pub previous: BackendMode,
}

/// Switch the backend mode (mock, real or hybrid) at run time.
#[utoipa::path(
    put,
    path = "/v1/admin/mode",
    tag = "admin",
    request_body(content = ModeRequest, content_type = "application/json", example = json!({"mode": "mock"})),
    responses(
        (status = 200, description = "The mode in force (`UCXL-200-OK`)", body = ModeChangeResponse),
        (status = 400, description = "Not a mode (`UCXL-400-INVALID_PAYLOAD`, with the field path), or a malformed header (`BAD_REQUEST`)", body = ErrorResponse),
        (status = 403, description = "Admin API disabled (no `RUSTLE_ADMIN_TOKEN` and no principal granted `admin`), or the caller lacks the `admin` grant (`UCXL-403-FORBIDDEN`)", body = ErrorResponse),
        (status = 409, description = "That mode is not available: no BZZZ endpoints configured, or the local store cannot be opened (`UCXL-409-CONFLICT`, `details.mode`)", body = ErrorResponse),
    )
)]
async fn set_mode(
    State(state): State<AppState>,
    _admin: Admin,
    ctx: Ctx,
    ApiJson(body): ApiJson<ModeRequest>,
) -> Result<Reply<ModeChange>, ApiError> {
    let _guard = state.admin_lock.lock().await;
    let previous = control::switch_mode(&state, body.mode)
        .await
        .map_err(control_error)?;
    let change = ModeChange {
        mode: body.mode,
        previous,
    };
    Ok(Reply::new(
        Code::Ok,
        format!("backend mode is {}", body.mode),
        change,
        ctx.request_id(),
    ))
}

/// Re-read the config file and environment; apply what can change live.
///
/// Command-line flags keep their precedence. An invalid configuration changes nothing.
#[utoipa::path(
    post,
    path = "/v1/admin/reload",
    tag = "admin",
    responses(
        (status = 200, description = "What changed (`UCXL-200-OK`)", body = ReloadResponse),
        (status = 400, description = "The new configuration is invalid: nothing was applied (`UCXL-400-BAD_REQUEST`, one line per problem in `details.problems`); or a malformed header", body = ErrorResponse),
        (status = 403, description = "Admin API disabled (no `RUSTLE_ADMIN_TOKEN` and no principal granted `admin`), or the caller lacks the `admin` grant (`UCXL-403-FORBIDDEN`)", body = ErrorResponse),
    )
)]
async fn reload(
    State(state): State<AppState>,
    _admin: Admin,
    ctx: Ctx,
) -> Result<Reply<ReloadReport>, ApiError> {
    let _guard = state.admin_lock.lock().await;
    let report = control::reload(&state).await.map_err(control_error)?;
    let message = format!("{} settings applied", report.applied.len());
    Ok(Reply::new(Code::Ok, message, report, ctx.request_id()))
}

/// The answer of a control action that did nothing.
fn control_error(e: ControlError) -> ApiError {
    match e {
        ControlError::ModeUnavailable { mode, .. } => ApiError::Conflict {
            message: e.to_string(),
            details: json!({"mode": mode}),
        },
        ControlError::Invalid(problems) => ApiError::bad_request(
            "the configuration is invalid; nothing was applied",
            json!({"problems": problems}),
        ),
        ControlError::Task(e) => ApiError::internal(e),
    }
}
