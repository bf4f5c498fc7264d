//! The REST API, one module per group of routes; each owns its router.

pub mod admin;
pub mod envelopes;
pub mod ops;
pub mod search;

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// Every documented route.
#[must_use]
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(envelopes::router())
        .merge(search::router())
        .merge(admin::router())
        .merge(ops::router())
}
