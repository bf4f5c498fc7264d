//! The REST API, one module per group of routes; each owns its router.

pub mod admin;
pub mod envelopes;
pub mod ops;
pub mod search;
pub mod watch;

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// The routes that need a caller: data and admin (authentication and audit are layered
/// on them in `startup`).
#[must_use]
pub fn guarded() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(envelopes::router())
        .merge(search::router())
        .merge(watch::router())
        .merge(admin::router())
}

/// The routes anyone may call: liveness, readiness, status, metrics.
#[must_use]
pub fn open() -> OpenApiRouter<AppState> {
    ops::router()
}
