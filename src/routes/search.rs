//! `/v1/search`: the latest version of every address matching a pattern, paginated.

use std::sync::Arc;

use axum::extract::State;
use serde::Deserialize;
use serde_json::json;
use ucxl::{Code, Pattern};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::backend::{SearchPage, SearchQuery, decode_cursor};
use crate::error::ApiError;
use crate::extract::{ApiQuery, Ctx};
use ucxl_service::Reply;

use crate::reply::{Failed, ServedBy};
use crate::routes::envelopes::ReadHeaders;
use crate::state::AppState;

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page.
pub const MAX_LIMIT: usize = 1000;

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(search))
}

/// Query parameters of `GET /v1/search`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// A UCXL pattern: `any` or `*` in any component; `*` (within a segment), `?` (one
    /// character) and `**` (any number of segments) in the path. An empty path matches only
    /// the empty path: use `/**` for everything under the task.
    #[param(example = "ucxl://any:any@bzzz:any/decisions/**")]
    pub pattern: String,
    /// Page size, 1..=1000 (default 50).
    #[param(minimum = 1, maximum = 1000, example = 50)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only envelopes of this media type (compared by `type/subtype`).
    #[param(example = "application/json")]
    pub content_type: Option<String>,
}

impl SearchParams {
    fn validate(self) -> Result<SearchQuery, ApiError> {
        let pattern = Pattern::parse(&self.pattern)?;
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(
                format!("limit must be between 1 and {MAX_LIMIT}"),
                json!({"field": "limit", "provided": limit, "expected": "1..=1000"}),
            ));
        }
        let after = match self.cursor {
            None => None,
            Some(c) => Some(decode_cursor(&c).ok_or_else(|| {
                ApiError::bad_request(
                    "cursor is not one this gateway issued",
                    json!({"field": "cursor", "expected": "the next_cursor of a previous page"}),
                )
            })?),
        };
        Ok(SearchQuery {
            pattern,
            limit,
            after,
            content_type: self.content_type,
        })
    }
}

/// Search: the latest version of each matching address, sorted by address.
///
/// Every available node is searched in parallel; when some fail the answer is still 200,
/// with `partial: true` and the failed endpoints listed.
#[utoipa::path(
    get,
    path = "/v1/search",
    tag = "search",
    params(SearchParams, ReadHeaders),
    responses(
        (status = 200, description = "One page of matches (`UCXL-200-OK`)", body = inline(ucxl::Success<SearchPage>)),
        (status = 400, description = "Invalid pattern, limit or cursor", body = ucxl::Failure),
    )
)]
async fn search(
    State(state): State<AppState>,
    ctx: Ctx,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Reply<SearchPage>, Failed> {
    let query = params.validate()?;
    let backend = Arc::clone(&state.active.load().backend);
    let served = backend
        .search(&ctx.call, &query)
        .await
        .map_err(|e| Failed::backend(e, backend.as_ref()))?;
    let message = format!("{} matches", served.value.items.len());
    Ok(Reply::new(Code::Ok, message, served.value, ctx.request_id()).via(served.via))
}
