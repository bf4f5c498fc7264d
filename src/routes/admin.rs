//! `/v1/admin`: switch the backend mode and reload configuration at run time. Both need
//! `Authorization: Bearer <RUSTLE_ADMIN_TOKEN>`; with no token configured they answer 403.

use std::sync::Arc;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use ucxl::Code;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::backend;
use crate::config::{BackendMode, Config, Sources};
use crate::error::ApiError;
use crate::extract::{Admin, ApiJson, Ctx};
use crate::state::{Active, AppState};
use ucxl_service::Reply;

/// Settings that only take effect at start.
const RESTART_REQUIRED: &[&str] = &[
    "listen_addr",
    "log_format",
    "journal_dir",
    "client_header_timeout",
];

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

/// A setting a reload could not apply, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotApplied {
    /// The setting.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// What a reload did.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ReloadReport {
    /// Settings that changed and are in force now.
    pub applied: Vec<String>,
    /// Settings that changed but take effect only after a restart.
    pub restart_required: Vec<String>,
    /// Settings that changed but could not be applied.
    pub not_applied: Vec<NotApplied>,
}

/// Switches the active backend; the caller holds the admin lock.
async fn switch_mode(state: &AppState, mode: BackendMode) -> Result<BackendMode, ApiError> {
    let previous = state.active.load().mode;
    if previous == mode {
        return Ok(previous);
    }
    let conflict = |message: String| ApiError::Conflict {
        message,
        details: json!({"mode": mode}),
    };
    if mode != BackendMode::Mock && state.cluster.endpoints().is_empty() {
        return Err(conflict(format!(
            "backend mode {mode} is not available: RUSTLE_BZZZ_ENDPOINTS lists no endpoint"
        )));
    }
    if mode == BackendMode::Hybrid {
        let dir = state.config.load().journal_dir.clone();
        // Opening reads (and after a crash repairs) the journal file: off the async workers.
        let shared = state.clone();
        let opened = tokio::task::spawn_blocking(move || shared.open_journal(&dir))
            .await
            .map_err(ApiError::internal)?;
        let recovery = opened.map_err(|e| {
            conflict(format!(
                "backend mode hybrid is not available: cannot open the journal: {e}"
            ))
        })?;
        recovery.start(&state.background);
    }
    let backend = backend::for_mode(mode, state.parts()).map_err(|e| conflict(e.to_string()))?;
    state.active.store(Arc::new(Active { mode, backend }));
    tracing::info!(%previous, %mode, "backend mode switched");
    Ok(previous)
}

/// Switch the backend mode (mock, real or hybrid) at run time.
#[utoipa::path(
    put,
    path = "/v1/admin/mode",
    tag = "admin",
    security(("admin_token" = [])),
    request_body(content = ModeRequest, content_type = "application/json", example = json!({"mode": "mock"})),
    responses(
        (status = 200, description = "The mode in force", body = inline(ucxl::Success<ModeChange>)),
        (status = 400, description = "Not a mode", body = ucxl::Failure),
        (status = 401, description = "Missing or wrong bearer token", body = ucxl::Failure),
        (status = 403, description = "Admin API disabled (no RUSTLE_ADMIN_TOKEN)", body = ucxl::Failure),
        (status = 409, description = "That mode is not available", body = ucxl::Failure),
        (status = 413, description = "Body too large", body = ucxl::Failure),
        (status = 415, description = "Content-Type is not application/json", body = ucxl::Failure),
    )
)]
async fn set_mode(
    State(state): State<AppState>,
    _admin: Admin,
    ctx: Ctx,
    ApiJson(body): ApiJson<ModeRequest>,
) -> Result<Reply<ModeChange>, ApiError> {
    let _guard = state.admin_lock.lock().await;
    let previous = switch_mode(&state, body.mode).await?;
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

/// The top-level settings whose values differ between two configurations.
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut keys: Vec<String> = b
        .iter()
        .filter(|(k, v)| a.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    // The token serialises masked, so compare it directly.
    if old.admin_token != new.admin_token {
        keys.push("admin_token".into());
    }
    keys
}

/// Re-read the config file and environment; apply what can change live.
///
/// Command-line flags keep their precedence. An invalid configuration changes nothing.
#[utoipa::path(
    post,
    path = "/v1/admin/reload",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "What changed", body = inline(ucxl::Success<ReloadReport>)),
        (status = 400, description = "The new configuration is invalid: nothing was applied", body = ucxl::Failure),
        (status = 401, description = "Missing or wrong bearer token", body = ucxl::Failure),
        (status = 403, description = "Admin API disabled (no RUSTLE_ADMIN_TOKEN)", body = ucxl::Failure),
    )
)]
async fn reload(
    State(state): State<AppState>,
    _admin: Admin,
    ctx: Ctx,
) -> Result<Reply<ReloadReport>, ApiError> {
    let _guard = state.admin_lock.lock().await;
    let invalid = |problems: Vec<String>| {
        ApiError::bad_request(
            "the configuration is invalid; nothing was applied",
            json!({"problems": problems}),
        )
    };
    // Reading the config file is blocking I/O: keep it off the async workers.
    let (cli, env) = (state.cli.clone(), state.env.clone());
    let resolved = tokio::task::spawn_blocking(move || Sources::load(cli, env())?.resolve())
        .await
        .map_err(ApiError::internal)?;
    let mut new = resolved.map_err(|p| invalid(p.0))?;
    let old = state.config.load_full();
    let mut report = ReloadReport::default();
    if new.log_filter != old.log_filter {
        let outcome = state
            .log_reload
            .as_ref()
            .ok_or_else(|| "this process did not install the log subscriber".to_owned())
            .and_then(|reload| reload(&new.log_filter));
        if let Err(reason) = outcome {
            new.log_filter.clone_from(&old.log_filter);
            report.not_applied.push(NotApplied {
                key: "log_filter".into(),
                reason,
            });
        }
    }
    // Endpoints first, so a reload that adds endpoints and a mode needing them works.
    if let Err(e) = state.cluster.reconfigure(&new) {
        // Nothing of the cluster changed: keep the settings in force and say why.
        for key in ["bzzz_endpoints", "connect_timeout"] {
            report.not_applied.push(NotApplied {
                key: key.into(),
                reason: format!("cannot build the HTTP client: {e}"),
            });
        }
        new.bzzz_endpoints.clone_from(&old.bzzz_endpoints);
        new.connect_timeout = old.connect_timeout;
    }
    if new.backend_mode != old.backend_mode
        && let Err(e) = switch_mode(&state, new.backend_mode).await
    {
        report.not_applied.push(NotApplied {
            key: "backend_mode".into(),
            reason: e.to_string(),
        });
        new.backend_mode = old.backend_mode;
    }
    for key in changed_keys(&old, &new) {
        if RESTART_REQUIRED.contains(&key.as_str()) {
            report.restart_required.push(key);
        } else {
            report.applied.push(key);
        }
    }
    // What needs a restart keeps its running value, so the config reflects what is in force.
    new.listen_addr = old.listen_addr;
    new.log_format = old.log_format;
    new.journal_dir.clone_from(&old.journal_dir);
    new.client_header_timeout = old.client_header_timeout;
    state.store.set_max_entries(new.cache_max_entries);
    if let Some(recovery) = state.recovery.get() {
        recovery.set_request_timeout(new.request_timeout);
    }
    state.config.store(Arc::new(new));
    tracing::info!(applied = ?report.applied, restart_required = ?report.restart_required, "configuration reloaded");
    let message = format!("{} settings applied", report.applied.len());
    Ok(Reply::new(Code::Ok, message, report, ctx.request_id()))
}
