//! `/v1/search`: the latest version of every address matching a pattern, paginated.

use std::sync::Arc;

use axum::extract::State;
use serde::Deserialize;
use serde_json::json;
use ucxl::{Code, Pattern};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use std::collections::BTreeSet;

use ucxl::SearchItem;

use crate::auth::Op;
use crate::backend::{Backend, SearchPage, SearchQuery, Served, decode_cursor, encode_cursor};
use crate::error::ApiError;
use crate::extract::{ApiQuery, Ctx};
use ucxl_service::Reply;

use crate::extract::ReadHeaders;
use crate::openapi::schemas::{ErrorResponse, SearchResponse};
use crate::reply::{Failed, ServedBy};
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
    #[param(
        minimum = 1,
        maximum = 1000,
        default = json!(DEFAULT_LIMIT),
        example = 50
    )]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page (opaque): the page after it. Absent: the first
    /// page.
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
        (status = 200, description = "One page of matches (`UCXL-200-OK`); `next_cursor` asks for the next", body = SearchResponse),
        (status = 400, description = "Invalid pattern (`INVALID_ADDRESS`, naming the component), `limit` or `cursor` (`BAD_REQUEST`, `details.field`), an unknown query parameter or a malformed header (`BAD_REQUEST`); or a query every node refused, passed on", body = ErrorResponse),
        (status = 403, description = "The caller has no `search` grant (`UCXL-403-FORBIDDEN`, `details.operation`)", body = ErrorResponse),
    )
)]
async fn search(
    State(state): State<AppState>,
    ctx: Ctx,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Reply<SearchPage>, Failed> {
    run(&state, &ctx, params).await
}

/// One page of the matches of `params` the caller of `ctx` may see: what `GET /v1/search`,
/// the `ucxl_search` tool and the MCP resource list do.
///
/// # Errors
/// An invalid pattern, limit or cursor; a caller without `search`; the backend's failure.
pub async fn run(
    state: &AppState,
    ctx: &Ctx,
    params: SearchParams,
) -> Result<Reply<SearchPage>, Failed> {
    let pattern = params.pattern.clone();
    let query = params.validate()?;
    ctx.audit.operation(Op::Search, &pattern);
    if !ctx.caller.may(Op::Search) {
        return Err(ApiError::Forbidden {
            operation: Op::Search,
            target: pattern,
        }
        .into());
    }
    let backend = Arc::clone(&state.active.load().backend);
    let served = visible_page(ctx, backend.as_ref(), query).await?;
    let message = format!("{} matches", served.value.items.len());
    Ok(Reply::new(Code::Ok, message, served.value, ctx.request_id()).via(served.via))
}

/// Largest page asked of the backend while skipping addresses the caller may not see.
const SCAN_LIMIT: usize = MAX_LIMIT;

/// One page of the matches the caller may `search`. Pages the backend gives are filtered;
/// while fewer than `limit` visible items are found and more exist, further pages are read
/// (inside the request deadline), so the page size, the cursor (the last *visible*
/// address) and the count say nothing about addresses the caller may not see. A cursor is
/// given only when a further visible match exists: a last page of hidden matches would
/// otherwise show up as an empty page.
async fn visible_page(
    ctx: &Ctx,
    backend: &dyn Backend,
    mut query: SearchQuery,
) -> Result<Served<SearchPage>, Failed> {
    let limit = query.limit;
    let first = ctx.served(backend.search(&ctx.call, &query).await)?;
    if ctx.caller.may_everywhere(Op::Search) {
        return Ok(first);
    }
    let visible = |item: &SearchItem| ctx.caller.allows(Op::Search, &item.address);
    let mut via = first.via;
    let mut page = first.value;
    let mut items: Vec<SearchItem> = Vec::with_capacity(limit);
    let mut partial = false;
    let mut failed: BTreeSet<String> = BTreeSet::new();
    loop {
        partial |= page.partial;
        failed.extend(page.failed_endpoints);
        let scanned_to = page.items.last().map(|i| i.address.canonical().to_owned());
        let mut more_visible = false;
        for item in page.items {
            if visible(&item) {
                if items.len() == limit {
                    more_visible = true;
                    break;
                }
                items.push(item);
            }
        }
        if more_visible || page.next_cursor.is_none() || scanned_to.is_none() {
            let next_cursor = more_visible
                .then(|| items.last().map(|i| encode_cursor(i.address.canonical())))
                .flatten();
            return Ok(Served {
                value: SearchPage {
                    items,
                    next_cursor,
                    partial,
                    failed_endpoints: failed.into_iter().collect(),
                },
                via,
            });
        }
        if ctx.call.remaining().is_zero() {
            // Stopping here with a cursor at a hidden address would name it: give what
            // is visible so far, or say the deadline passed.
            if let Some(last) = items.last() {
                let next_cursor = Some(encode_cursor(last.address.canonical()));
                return Ok(Served {
                    value: SearchPage {
                        items,
                        next_cursor,
                        partial,
                        failed_endpoints: failed.into_iter().collect(),
                    },
                    via,
                });
            }
            return Err(ApiError::Timeout {
                message: "the request deadline passed while searching".into(),
                details: serde_json::json!({}),
            }
            .into());
        }
        query.after = scanned_to;
        query.limit = SCAN_LIMIT;
        let next = ctx.served(backend.search(&ctx.call, &query).await)?;
        via.attempts = via.attempts.saturating_add(next.via.attempts);
        page = next.value;
    }
}
