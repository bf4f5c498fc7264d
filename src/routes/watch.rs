//! `GET /v1/watch`: a server-sent event stream of the changes matching a pattern.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use ucxl::{Change, Pattern, SearchItem};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Op;
use crate::backend::{Backend, SearchQuery};
use crate::config::BackendMode;
use crate::error::ApiError;
use crate::extract::{ApiQuery, Ctx};
use crate::openapi::schemas::ErrorResponse;
use crate::reply::Failed;
use crate::state::AppState;
use crate::watch::hub::Subscription;
use crate::watch::stream::{Content, Skips, Stream, into_stream};
use crate::watch::{Cursor, Filter, Key, Refusal};

/// How long a new stream waits for the gateway to have read every reachable feed (just
/// after start), or for a cursor ahead of it to be reached.
const SETTLE: Duration = Duration::from_secs(5);
/// How long the initial listing waits for the hub to learn of versions it listed.
const LISTED_WAIT: Duration = Duration::from_millis(500);

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(watch))
}

/// Query parameters of `GET /v1/watch`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WatchParams {
    /// A UCXL pattern, as for search.
    #[param(example = "ucxl://any:any@bzzz:any/decisions/**")]
    pub pattern: String,
    /// The `id` of the last event received: the stream resumes right after it. The
    /// `Last-Event-ID` header (which `EventSource` sends when it reconnects) wins over it.
    pub cursor: Option<String>,
    /// First one `put` per matching address (its latest version, as search lists them),
    /// then `synced`, then live changes. Ignored when resuming.
    #[param(default = false)]
    pub initial: Option<bool>,
    /// Include each version's content (up to `RUSTLE_MAX_ANSWER_BYTES`; larger content is
    /// replaced by `"content_omitted": true`).
    #[param(default = false)]
    pub content: Option<bool>,
}

/// The `Last-Event-ID` header, for the documentation (the handler reads it).
#[derive(Debug)]
pub struct WatchHeaders;

impl IntoParams for WatchHeaders {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        vec![crate::extract::header_parameter(
            "Last-Event-ID",
            "The `id` of the last event received (`EventSource` sends it when it \
             reconnects): the stream resumes right after it. Wins over `cursor`; empty means \
             none.",
            utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::String),
            json!("w1.6d96a3fc311f21742c8741b4b181f72c-2"),
        )]
    }
}

/// The data of a `put` or `delete` event (`op` says which), with `content` or
/// `content_omitted` when `content=true` was asked. (Its schema, `PutEvent` or
/// `DeleteEvent`, is in `openapi::schemas`.)
#[derive(Debug, Serialize)]
pub struct ChangeEvent {
    /// The change.
    #[serde(flatten)]
    pub change: Change,
    /// The version's content (`put`, with `content=true`).
    pub content: Option<serde_json::Value>,
    /// True when content was asked for and is larger than the limit or no longer readable.
    pub content_omitted: Option<bool>,
}

/// The data of the `synced` event.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncedEvent {
    /// The cursor of the stream's start (also the event's `id`).
    pub cursor: String,
    /// `put` events sent before it.
    pub initial: usize,
}

/// Watch for changes: a `text/event-stream`.
///
/// Events: `put` and `delete` (data: [`ChangeEvent`]; `id`: the cursor that resumes right
/// after it), `synced` (with `initial=true`, after the initial `put`s; data:
/// [`SyncedEvent`]), and `error` (data: a UCXL error body; the stream then ends):
/// `UCXL-410-GONE` when a cursor can no longer be continued (re-list, then watch without a
/// cursor), `UCXL-429-TOO_MANY_REQUESTS` when the client read too slowly (reconnect with
/// the last id). Comment lines (`: keep-alive`) are sent after
/// `RUSTLE_WATCH_HEARTBEAT_MS` of silence.
///
/// Each change is delivered once, however many nodes report it, in the order it reached
/// the first of them. A change is delivered only to callers granted `watch` on its address.
#[utoipa::path(
    get,
    path = "/v1/watch",
    tag = "watch",
    params(WatchParams, WatchHeaders),
    responses(
        (status = 200, description = "The event stream (`put`, `delete`, `synced`, `error` events; see `ChangeEvent` and `SyncedEvent`)", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid pattern (`INVALID_ADDRESS`, naming the component), cursor or `Last-Event-ID` (`BAD_REQUEST`, `details.field`), an unknown query parameter or a malformed header", body = ErrorResponse),
        (status = 403, description = "The caller has no `watch` grant (`UCXL-403-FORBIDDEN`, `details.operation`)", body = ErrorResponse),
        (status = 404, description = "`initial=true`: an address listed was deleted before its version could be read (`UCXL-404-NOT_FOUND`); watch again", body = ErrorResponse),
        (status = 502, description = "`initial=true`: a BZZZ node answered the listing with something that is not a valid UCXI answer (`UCXL-502-BAD_GATEWAY`)", body = ErrorResponse),
        (status = 503, description = "`RUSTLE_MAX_WATCHES` streams are open (`details.max_watches`), the cursor is ahead of what this gateway has read of the nodes' feeds (`details.reason: cursor_ahead`), or, with `initial=true`, no backend can list (`UCXL-503-SERVICE_UNAVAILABLE`; `Retry-After` says when to retry)", body = ErrorResponse),
        (status = 504, description = "`initial=true`: the request deadline passed while listing (`UCXL-504-GATEWAY_TIMEOUT`)", body = ErrorResponse),
    )
)]
async fn watch(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<WatchParams>,
) -> Result<Response, Failed> {
    let pattern = Pattern::parse(&params.pattern)?;
    ctx.audit.operation(Op::Watch, &params.pattern);
    let cursor = resume_cursor(&headers, params.cursor.as_deref())?;
    if !ctx.caller.may(Op::Watch) {
        return Err(ApiError::Forbidden {
            operation: Op::Watch,
            target: params.pattern,
        }
        .into());
    }
    let hub = Arc::clone(&state.watch);
    let open = hub.open().map_err(refused)?;
    settle(&state).await;
    let filter = Filter::new(pattern.clone(), Arc::clone(&ctx.caller));
    let mut sub = match subscribe(&state, &open, filter.clone(), cursor.as_ref()).await? {
        Ok(sub) => sub,
        Err(gone) => return Ok(gone_stream(&ctx, &gone)),
    };
    let backend = Arc::clone(&state.active.load().backend);
    let (initial, synced, skips) = if params.initial == Some(true) && cursor.is_none() {
        let (items, skips) = listing(&state, &ctx, backend.as_ref(), &filter, &sub).await?;
        let listed = items.len();
        (items, Some(listed), skips)
    } else {
        (VecDeque::new(), None, Skips::new())
    };
    let config = state.config.load();
    let content = (params.content == Some(true)).then(|| Content {
        backend,
        timeout: config.request_timeout,
        limit: config.max_answer_bytes as u64,
        request_id: ctx.request_id().to_owned(),
    });
    let backlog = std::mem::take(&mut sub.backlog).into();
    let base = Some(sub.base.clone());
    let resumed = cursor.is_some().then(|| sub.base.clone());
    let stream = Stream {
        open,
        sub,
        initial,
        synced,
        skips,
        content,
        backlog,
        base,
        resumed,
        done: false,
        path: "/v1/watch".into(),
        request_id: ctx.request_id().to_owned(),
    };
    let heartbeat = hub.settings().heartbeat;
    let mut response = Sse::new(into_stream(stream))
        .keep_alive(KeepAlive::new().interval(heartbeat).text("keep-alive"))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx and similar proxies pass the events on as they come.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The cursor to resume from: `Last-Event-ID`, else `?cursor=`.
fn resume_cursor(headers: &HeaderMap, query: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    let (field, text) = match headers.get("last-event-id") {
        Some(value) => (
            "Last-Event-ID",
            value.to_str().map_err(|_| {
                ApiError::bad_request(
                    "Last-Event-ID is not a cursor this gateway issued",
                    json!({"field": "Last-Event-ID", "expected": "the id of an event of this stream"}),
                )
            })?,
        ),
        None => match query {
            Some(text) => ("cursor", text),
            None => return Ok(None),
        },
    };
    // An empty Last-Event-ID is what EventSource sends after an event without an id.
    if text.is_empty() && field == "Last-Event-ID" {
        return Ok(None);
    }
    Cursor::parse(text).map(Some).map_err(|e| {
        ApiError::bad_request(
            format!("{field} is not a cursor this gateway issued: {e}"),
            json!({"field": field, "provided": ucxl::error::excerpt(text), "expected": "the id of an event of this stream"}),
        )
    })
}

fn refused(refusal: Refusal) -> Failed {
    match refusal {
        Refusal::Full(max) => ApiError::Unavailable {
            message: format!("{max} watch streams are open (RUSTLE_MAX_WATCHES)"),
            details: json!({"max_watches": max}),
            retry_after: Some(1),
        }
        .into(),
        Refusal::Ahead => ApiError::Unavailable {
            message: "the cursor is ahead of what this gateway has read of the nodes' feeds; retry shortly".into(),
            details: json!({"reason": "cursor_ahead"}),
            retry_after: Some(1),
        }
        .into(),
        Refusal::Gone { reason, message } => ApiError::Gone {
            message,
            details: json!({"reason": reason}),
        }
        .into(),
    }
}

/// The stream of a cursor that cannot be continued: one `error` event (`UCXL-410-GONE`),
/// then the end.
fn gone_stream(ctx: &Ctx, gone: &Refusal) -> Response {
    let (reason, message) = match gone {
        Refusal::Gone { reason, message } => (*reason, message.as_str()),
        _ => ("gone", "the cursor cannot be continued"),
    };
    metrics::counter!("rustle_watch_events_total", "event" => "error").increment(1);
    let event = crate::watch::stream::error_event(
        ucxl::Code::Gone,
        message,
        json!({"reason": reason}),
        "/v1/watch",
        ctx.request_id(),
    );
    let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(event)]);
    let mut response = Sse::new(stream).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Just after start, waits (a little) until every reachable feed has been read up to date,
/// so a resume finds what it needs.
async fn settle(state: &AppState) {
    if state.active.load().mode == BackendMode::Mock {
        return;
    }
    let endpoints: Vec<String> = state
        .cluster
        .endpoints()
        .iter()
        .map(|e| e.url().to_owned())
        .collect();
    let _ = tokio::time::timeout(SETTLE, async {
        loop {
            let progressed = state.watch.progressed();
            if state.watch.settled(&endpoints) {
                return;
            }
            progressed.await;
        }
    })
    .await;
}

/// Registers the watcher; a cursor ahead of this gateway is waited for (a little). A
/// cursor that cannot be continued is the inner error (the stream says so).
async fn subscribe(
    state: &AppState,
    open: &crate::watch::hub::Open,
    filter: Filter,
    cursor: Option<&Cursor>,
) -> Result<Result<Subscription, Refusal>, Failed> {
    let until = tokio::time::Instant::now() + SETTLE;
    loop {
        let progressed = state.watch.progressed();
        match state.watch.subscribe(open, filter.clone(), cursor) {
            Err(Refusal::Ahead) if tokio::time::Instant::now() < until => {
                let _ = tokio::time::timeout_at(until, progressed).await;
            }
            Ok(sub) => return Ok(Ok(sub)),
            Err(gone @ Refusal::Gone { .. }) => return Ok(Err(gone)),
            Err(other) => return Err(refused(other)),
        }
    }
}

/// The initial listing: the latest version of every matching address the caller may
/// watch, and which of them live changes must skip up to (those committed after the
/// stream's start, which the live queue holds too).
async fn listing(
    state: &AppState,
    ctx: &Ctx,
    backend: &dyn Backend,
    filter: &Filter,
    sub: &Subscription,
) -> Result<(VecDeque<Change>, Skips), Failed> {
    let mut query = SearchQuery {
        pattern: filter.pattern.clone(),
        limit: crate::routes::search::MAX_LIMIT,
        after: None,
        content_type: None,
    };
    let mut items: Vec<SearchItem> = Vec::new();
    loop {
        let page = ctx.served(backend.search(&ctx.call, &query).await)?.value;
        let last = page.items.last().map(|i| i.address.canonical().to_owned());
        items.extend(page.items.into_iter().filter(|i| filter.admits(&i.address)));
        match (page.next_cursor, last) {
            (Some(_), Some(last)) => query.after = Some(last),
            _ => break,
        }
    }
    let mut changes = VecDeque::with_capacity(items.len());
    for item in items {
        changes.push_back(change_of(ctx, backend, item).await?);
    }
    // Which listed versions came after the stream's start: live changes at their address
    // are skipped up to them. A version the hub has not learnt of yet is waited for.
    let mut skips = Skips::new();
    let mut unknown: Vec<(String, Key)> = Vec::new();
    for change in &changes {
        let key = Key::of(change.address(), change.id());
        match state.watch.delivered_by(key, &sub.base) {
            Some(true) => {}
            Some(false) => {
                skips.insert(change.address().canonical().to_owned(), key);
            }
            None => unknown.push((change.address().canonical().to_owned(), key)),
        }
    }
    let until = tokio::time::Instant::now() + LISTED_WAIT;
    while !unknown.is_empty() && tokio::time::Instant::now() < until {
        let progressed = state.watch.progressed();
        unknown.retain(
            |(address, key)| match state.watch.delivered_by(*key, &sub.base) {
                Some(true) => false,
                Some(false) => {
                    skips.insert(address.clone(), *key);
                    false
                }
                None => true,
            },
        );
        if unknown.is_empty() {
            break;
        }
        let _ = tokio::time::timeout_at(until, progressed).await;
    }
    Ok((changes, skips))
}

/// The `put` change of a listed address.
async fn change_of(ctx: &Ctx, backend: &dyn Backend, item: SearchItem) -> Result<Change, Failed> {
    if let Some(hash) = item.hash {
        return Ok(Change::Put {
            address: item.address,
            id: item.id,
            version: item.version,
            created_at: item.created_at,
            hash,
            size: item.size,
            content_type: item.content_type,
            written_by: item.written_by,
        });
    }
    // A node that does not list hashes: the envelope says it.
    let envelope = ctx
        .served(backend.get(&ctx.call, &item.address).await)?
        .value;
    Ok(Change::written(&envelope))
}
