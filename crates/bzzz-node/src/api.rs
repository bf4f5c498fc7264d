//! The UCXI HTTP API of a node (SPEC §9), in the UCXL response format. With an API token
//! configured, every route but `/health` and `/metrics` needs it ([`crate::auth`]).
//! Batched writes have their own module (`batch`), the change feed stream its own (`watch`).

mod batch;
mod watch;

pub use watch::{FEED_ID_HEADER, WatchSettings};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::time::Instant;
use ucxl::{
    Address, AddressError, Code, ContentHash, Envelope, EnvelopeId, History, NewVersion, Pattern,
    PutOutcome, SearchItem, SearchQuery, WriteError,
};
use ucxl_service::headers::Deadline;
use ucxl_service::{BodyError, ErrorReport, Reply, Rid};

use crate::auth::{self, Refusal, TokenGuard};
use crate::feed::Position;
use crate::p2p::{P2p, ReplicateError};
use crate::store::{self, NodeStore, Record, StoreError};

/// The service name in error bodies.
pub const SOURCE: ucxl_service::Source = ucxl_service::Source("bzzz-node");
/// The node's request metrics.
pub const METRICS: ucxl_service::MetricNames = ucxl_service::MetricNames {
    requests_total: "bzzz_requests_total",
    request_duration_seconds: "bzzz_request_duration_seconds",
    requests_abandoned_total: "bzzz_requests_abandoned_total",
};
/// Largest discover page.
const MAX_LIMIT: usize = 1000;

/// What handlers share.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// The record store.
    pub store: Arc<NodeStore>,
    /// The network.
    pub p2p: P2p,
    /// Prometheus.
    pub metrics: PrometheusHandle,
    /// Name for status and logs.
    pub node_name: String,
    /// Replication factor.
    pub replication_factor: usize,
    /// Whether bootstrap peers were configured (then health needs a peer).
    pub clustered: bool,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// The API token check, when `BZZZ_API_TOKEN` is set.
    pub auth: Option<Arc<TokenGuard>>,
    /// Whether the libp2p network is private (`BZZZ_SWARM_KEY`).
    pub private_network: bool,
    /// How watch streams run.
    pub watch: WatchSettings,
}

/// Everything a node request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An invalid address or pattern.
    #[error("{0}")]
    Address(#[from] AddressError),
    /// A refused body.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// A malformed query or header.
    #[error("{0}")]
    Rejected(String, Value),
    /// Nothing at the address.
    #[error("nothing stored at {0}")]
    NotFound(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored here, but not on a majority.
    #[error("stored on this node but not on a majority: {0}; retrying with the same id is safe")]
    NotReplicated(ReplicateError),
    /// The deadline passed.
    #[error("the request deadline passed")]
    Timeout,
    /// A task failed.
    #[error("internal error")]
    Internal(String),
    /// The request lacks the API token.
    #[error(transparent)]
    Unauthorized(Refusal),
    /// A watch cursor this node's feed cannot continue: compacted away, ahead of the
    /// feed, or of another feed (`reason`).
    #[error("{message}")]
    FeedGone {
        /// `compacted`, `ahead` or `feed_changed`.
        reason: &'static str,
        /// For humans.
        message: String,
        /// Where the feed stands.
        position: Position,
    },
    /// The change feed cannot be read now (the store is reopening after a failed commit).
    #[error("the change feed cannot be read now; retry shortly")]
    FeedUnreadable(#[source] redb_commit::CommitError),
}

impl NodeError {
    fn report(&self) -> ErrorReport {
        let (code, details) = match self {
            Self::Address(e) => (e.code(), e.details()),
            Self::Body(e) => return e.report(),
            Self::Rejected(_, details) => (Code::BadRequest, details.clone()),
            Self::NotFound(address) => (Code::NotFound, json!({"address": address})),
            Self::Store(StoreError::Write(e)) => match e {
                WriteError::HashMismatch { .. }
                | WriteError::SizeMismatch { .. }
                | WriteError::Digest(_) => (Code::InvalidPayload, json!({})),
                WriteError::IdIsTombstone(_)
                | WriteError::IdIsVersion(_)
                | WriteError::IdOfFreedVersion(_) => (Code::Conflict, json!({})),
                WriteError::NotFound => (Code::NotFound, json!({})),
            },
            Self::Store(StoreError::TooLarge { limit }) => {
                (Code::PayloadTooLarge, json!({"limit_bytes": limit}))
            }
            // Never a 500: the gateway sends the write to another node instead of failing
            // it. The writer thread has logged the cause.
            Self::Store(StoreError::Storage(e)) => {
                let (code, why) = if e.is_unwritable() {
                    (
                        Code::InsufficientStorage,
                        "its storage is full or unwritable",
                    )
                } else {
                    (Code::ServiceUnavailable, "its storage failed")
                };
                return ErrorReport::new(
                    code,
                    format!("this node cannot store writes now: {why}; nothing was stored"),
                    json!({}),
                );
            }
            Self::Store(other) => return ErrorReport::internal(other),
            Self::NotReplicated(e) => (
                Code::ServiceUnavailable,
                json!({"replication": e.to_string()}),
            ),
            Self::Timeout => (Code::GatewayTimeout, json!({})),
            Self::Internal(cause) => return ErrorReport::internal(cause),
            Self::Unauthorized(refusal) => {
                (Code::Unauthorized, json!({"reason": refusal.reason()}))
            }
            Self::FeedGone {
                reason, position, ..
            } => (
                Code::Gone,
                json!({
                    "reason": reason,
                    "feed": position.id,
                    "oldest_seq": position.oldest_seq,
                    "current_seq": position.current_seq,
                }),
            ),
            Self::FeedUnreadable(e) => {
                tracing::warn!(error = %ucxl::error::Chain(e), "the change feed cannot be read");
                (Code::ServiceUnavailable, json!({}))
            }
        };
        ErrorReport::new(code, self.to_string(), details)
    }
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        let mut response = self.report().into_response();
        match self {
            // The store reopens its database for the next write: a second is enough to
            // know whether the disk has room again.
            Self::NotReplicated(_)
            | Self::Store(StoreError::Storage(_))
            | Self::FeedUnreadable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            Self::Unauthorized(refusal) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, refusal.challenge());
            }
            _ => {}
        }
        response
    }
}

/// Request id and deadline (`X-Request-Timeout-Ms` may lower the configured one).
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The request id.
    pub request_id: String,
    /// When the answer is due.
    pub deadline: Instant,
    /// The client's `Idempotency-Key`.
    pub idempotency_key: Option<EnvelopeId>,
}

impl FromRequestParts<NodeState> for Ctx {
    type Rejection = NodeError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &NodeState,
    ) -> Result<Self, Self::Rejection> {
        let Ok(Rid(request_id)) = Rid::from_request_parts(parts, state).await;
        let report = |r: ErrorReport| NodeError::Rejected(r.message, r.details);
        let deadline = Deadline::of(&parts.headers, &parts.extensions, state.request_timeout)
            .map_err(report)?;
        let idempotency_key =
            ucxl_service::headers::idempotency_key(&parts.headers).map_err(report)?;
        tracing::debug!(request_id = %request_id, "request");
        Ok(Self {
            request_id,
            deadline: deadline.at,
            idempotency_key,
        })
    }
}

fn query<T: serde::de::DeserializeOwned>(parts: &Parts) -> Result<T, NodeError> {
    ucxl_service::query(&parts.uri).map_err(|r| NodeError::Rejected(r.message, r.details))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressQuery {
    address: String,
}

/// The `?address=` parameter, validated. A literal `any` component is an exact key.
#[derive(Debug)]
pub struct AddressParam(pub Address);

impl<S: Send + Sync> FromRequestParts<S> for AddressParam {
    type Rejection = NodeError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let address = match ucxl_service::body::sole_param(&parts.uri, "address") {
            Some(raw) => Address::parse(&raw)?,
            // Anything but the one parameter: the generic parser answers or refuses it.
            None => Address::parse(&query::<AddressQuery>(parts)?.address)?,
        };
        Ok(Self(address))
    }
}

/// The body of `PUT /ucxi/v1/put`: an envelope of which only `content` is required.
/// `address` and `version` (present when a fetched envelope is sent back) are ignored:
/// the address is the query's and versions are computed on read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    /// Kept as the JSON text it arrived in: hashed from a tree once, stored, replicated
    /// and served as text.
    content: ucxl::Content,
    id: Option<EnvelopeId>,
    #[serde(default, with = "ucxl::envelope::rfc3339::option")]
    created_at: Option<DateTime<Utc>>,
    hash: Option<ContentHash>,
    size: Option<u64>,
    content_type: Option<String>,
    metadata: Option<Map<String, Value>>,
    /// The principal the gateway authenticated (the cluster token makes the gateway
    /// trusted to say so).
    written_by: Option<ucxl::PrincipalName>,
    #[serde(rename = "address")]
    _address: Option<Value>,
    #[serde(rename = "version")]
    _version: Option<Value>,
}

/// A JSON body within the node's limit, arriving by the request's deadline (as [`Ctx`]
/// has it).
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<NodeState> for Json<T> {
    type Rejection = NodeError;

    async fn from_request(req: Request, state: &NodeState) -> Result<Self, Self::Rejection> {
        let deadline = Deadline::of(req.headers(), req.extensions(), state.request_timeout)
            .map_err(|r| NodeError::Rejected(r.message, r.details))?;
        Ok(Self(
            ucxl_service::read_json(req, state.max_body_bytes, deadline).await?,
        ))
    }
}

/// The API router with the shared layers. With an API token, the UCXI routes and
/// `/status` need it; `/health` and `/metrics` stay open for probes and scrapes.
pub fn router(state: NodeState) -> Router {
    let mut protected = Router::new()
        .route("/ucxi/v1/get", get(get_envelope))
        .route("/ucxi/v1/put", put(put_envelope))
        .route("/ucxi/v1/delete", delete(delete_envelope))
        .route(ucxl::batch::ROUTE, post(batch::batch))
        .route("/ucxi/v1/history", get(history))
        .route("/ucxi/v1/discover", get(discover))
        .route("/ucxi/v1/watch", get(watch::watch))
        .route("/status", get(status));
    if let Some(guard) = &state.auth {
        // A route layer: it runs only for these routes (unknown paths still answer 404)
        // and before their extractors, so a refused request's body is never read.
        protected =
            protected.route_layer(from_fn_with_state(Arc::clone(guard), auth::require_token));
    }
    let routes = protected
        .route("/health", get(health))
        .route("/metrics", get(metrics_text));
    ucxl_service::with_layers(routes, SOURCE, METRICS).with_state(state)
}

/// Runs blocking store work (disk commits) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))
}

/// Replicates the record to a majority within the deadline.
async fn replicate(state: &NodeState, ctx: &Ctx, record: &Record) -> Result<(), NodeError> {
    if state.p2p.peers_needed() == 0 {
        return Ok(());
    }
    let value = store::encode(record).map_err(|e| NodeError::Internal(e.to_string()))?;
    let key = store::dht_key(&record.address);
    match tokio::time::timeout_at(ctx.deadline, state.p2p.replicate(key, value)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(NodeError::NotReplicated(e)),
        Err(_) => Err(NodeError::Timeout),
    }
}

/// The record at `address`: the local copy, else a DHT lookup merged locally.
async fn find(
    state: &NodeState,
    ctx: &Ctx,
    address: &Address,
) -> Result<Option<Arc<Record>>, NodeError> {
    if let Some(record) = state.store.get(address) {
        return Ok(Some(record));
    }
    let key = store::dht_key(address);
    let Ok(found) = tokio::time::timeout_at(ctx.deadline, state.p2p.fetch(key)).await else {
        return Err(NodeError::Timeout);
    };
    if found.is_empty() {
        return Ok(None);
    }
    // Every replica is merged (a bad one is skipped; the others still count), in one
    // commit when they arrive together.
    let merges = found.iter().filter_map(|value| {
        state
            .store
            .merge_dht(&key, value)
            .inspect_err(|e| tracing::warn!(error = %e, "ignored a replica found in the DHT"))
            .ok()
    });
    for merged in futures::future::join_all(merges.collect::<Vec<_>>()).await {
        merged?;
    }
    Ok(state.store.get(address))
}

async fn get_envelope(
    State(state): State<NodeState>,
    ctx: Ctx,
    AddressParam(address): AddressParam,
) -> Result<Reply<Envelope>, NodeError> {
    let record = find(&state, &ctx, &address).await?;
    let (version, stored) = record
        .as_ref()
        .and_then(|r| r.set.resolve(address.temporal()))
        .ok_or_else(|| NodeError::NotFound(address.to_string()))?;
    let envelope = Envelope::new(&address, version, stored);
    Ok(Reply::new(Code::Ok, "found", envelope, &ctx.request_id))
}

async fn put_envelope(
    State(state): State<NodeState>,
    ctx: Ctx,
    AddressParam(address): AddressParam,
    Json(body): Json<PutBody>,
) -> Result<Reply<Envelope>, NodeError> {
    address.require_latest()?;
    let content_type = body
        .content_type
        .unwrap_or_else(|| ucxl::DEFAULT_CONTENT_TYPE.to_owned());
    let new = NewVersion {
        id: body
            .id
            .or_else(|| ctx.idempotency_key.clone())
            .unwrap_or_else(EnvelopeId::generate),
        content: body.content,
        content_type,
        metadata: body.metadata.unwrap_or_default(),
        created_at: body.created_at,
        hash: body.hash,
        size: body.size,
        written_by: body.written_by,
    };
    let (outcome, record) = state.store.put(&address, new, Utc::now()).await?;
    // Replicate even when the id existed: a retry after a failed replication heals it.
    replicate(&state, &ctx, &record).await?;
    let created = matches!(outcome, PutOutcome::Created { .. });
    let (version, stored) = outcome.parts();
    let envelope = Envelope::new(&address, version, stored);
    let (code, message) = if created {
        (Code::Created, "stored a new version")
    } else {
        (
            Code::Ok,
            "an envelope with this id already exists; nothing changed",
        )
    };
    Ok(Reply::new(code, message, envelope, &ctx.request_id))
}

/// What a delete answers.
#[derive(Debug, Serialize)]
struct DeleteAnswer {
    address: Address,
    id: EnvelopeId,
    #[serde(with = "ucxl::envelope::rfc3339")]
    deleted_at: DateTime<Utc>,
}

async fn delete_envelope(
    State(state): State<NodeState>,
    ctx: Ctx,
    AddressParam(address): AddressParam,
    headers: axum::http::HeaderMap,
) -> Result<Reply<DeleteAnswer>, NodeError> {
    address.require_latest()?;
    // A journal replay keeps the time the delete was accepted.
    let created_at = match headers.get(ucxl_service::headers::DELETED_AT) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .ok_or_else(|| {
                    NodeError::Rejected(
                        "X-Deleted-At must be an RFC 3339 timestamp".into(),
                        json!({"header": "X-Deleted-At"}),
                    )
                })?,
        ),
    };
    let id = ctx
        .idempotency_key
        .clone()
        .unwrap_or_else(EnvelopeId::generate);
    if state.store.get(&address).is_none() {
        // Maybe this node missed the record: look it up before refusing.
        find(&state, &ctx, &address).await?;
    }
    let (outcome, record) = state
        .store
        .delete(&address, id, created_at, Utc::now())
        .await?;
    replicate(&state, &ctx, &record).await?;
    let tombstone = outcome.tombstone();
    let deleted = DeleteAnswer {
        address: address.without_temporal(),
        id: tombstone.id.clone(),
        deleted_at: tombstone.created_at,
    };
    Ok(Reply::new(Code::Ok, "deleted", deleted, &ctx.request_id))
}

async fn history(
    State(state): State<NodeState>,
    ctx: Ctx,
    AddressParam(address): AddressParam,
) -> Result<Reply<History>, NodeError> {
    let record = find(&state, &ctx, &address).await?;
    let versions = record.map(|r| r.set.history()).unwrap_or_default();
    if versions.is_empty() {
        return Err(NodeError::NotFound(address.to_string()));
    }
    let history = History {
        address: address.without_temporal(),
        versions,
    };
    Ok(Reply::new(Code::Ok, "history", history, &ctx.request_id))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoverQuery {
    pattern: String,
    limit: Option<usize>,
    /// Continue after this canonical address.
    after: Option<String>,
    content_type: Option<String>,
}

/// One page of discover results.
#[derive(Debug, Serialize)]
struct Discovered {
    items: Vec<SearchItem>,
    /// Pass as `after` for the next page; `null` on the last page.
    next_after: Option<String>,
}

async fn discover(
    State(state): State<NodeState>,
    ctx: Ctx,
    uri: axum::http::Uri,
) -> Result<Reply<Discovered>, NodeError> {
    let q: DiscoverQuery =
        ucxl_service::query(&uri).map_err(|r| NodeError::Rejected(r.message, r.details))?;
    let limit = q.limit.unwrap_or(MAX_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(NodeError::Rejected(
            "limit must be between 1 and 1000".into(),
            json!({"field": "limit", "provided": limit}),
        ));
    }
    let after = match q.after {
        None => None,
        Some(a) => Some(Address::parse(&a)?.canonical().to_owned()),
    };
    let query = SearchQuery {
        pattern: Pattern::parse(&q.pattern)?,
        limit,
        after,
        content_type: q.content_type,
    };
    let store = Arc::clone(&state.store);
    let deadline = ctx.deadline.into_std();
    let (items, more) = blocking(move || store.search(&query, deadline))
        .await?
        .map_err(|_| NodeError::Timeout)?;
    let next_after = more
        .then(|| items.last().map(|i| i.address.canonical().to_owned()))
        .flatten();
    let message = format!("{} matches", items.len());
    Ok(Reply::new(
        Code::Ok,
        message,
        Discovered { items, next_after },
        &ctx.request_id,
    ))
}

/// What `/health` and `/status` report.
#[derive(Debug, Serialize)]
struct NodeStatus {
    node_name: String,
    peer_id: String,
    listen_addrs: Vec<String>,
    peers: Vec<String>,
    connected_peers: usize,
    records: usize,
    replication_factor: usize,
    write_peers_needed: usize,
    /// Whether peers need the swarm key (never the key itself).
    private_network: bool,
    /// The change feed.
    feed: FeedStatus,
}

/// Where the change feed stands.
#[derive(Debug, Serialize)]
struct FeedStatus {
    #[serde(flatten)]
    position: Position,
    retain: u64,
}

/// What an open `/health` reports when the API is closed by a token: whether the node is
/// connected, not who its peers are or where they listen (that is `/status`).
#[derive(Debug, Serialize)]
struct ClosedHealth {
    connected_peers: usize,
}

fn node_status(state: &NodeState) -> NodeStatus {
    let view = state.p2p.view();
    let peers: Vec<String> = view.connected().iter().map(ToString::to_string).collect();
    NodeStatus {
        node_name: state.node_name.clone(),
        peer_id: view.peer_id.to_string(),
        listen_addrs: view
            .listen_addrs()
            .iter()
            .map(ToString::to_string)
            .collect(),
        connected_peers: peers.len(),
        peers,
        records: state.store.len(),
        replication_factor: state.replication_factor,
        write_peers_needed: state.p2p.peers_needed(),
        private_network: state.private_network,
        feed: FeedStatus {
            position: state.store.feed().position(),
            retain: state.store.feed().retain(),
        },
    }
}

/// 200 once serving and, in a cluster, connected to at least one peer; else 503. Open
/// even with an API token, so it then shows only the peer count.
async fn health(State(state): State<NodeState>, Rid(rid): Rid) -> Response {
    let status = node_status(&state);
    let closed = state.auth.is_some();
    if state.clustered && status.connected_peers == 0 {
        let details = if closed {
            json!({})
        } else {
            json!({"peer_id": status.peer_id})
        };
        let report = ErrorReport::new(
            Code::ServiceUnavailable,
            "not connected to any peer of the cluster yet",
            details,
        );
        return report.into_response();
    }
    if closed {
        let health = ClosedHealth {
            connected_peers: status.connected_peers,
        };
        return Reply::new(Code::Ok, "healthy", health, &rid).into_response();
    }
    Reply::new(Code::Ok, "healthy", status, &rid).into_response()
}

async fn status(State(state): State<NodeState>, Rid(rid): Rid) -> Reply<NodeStatus> {
    Reply::new(Code::Ok, "status", node_status(&state), &rid)
}

async fn metrics_text(State(state): State<NodeState>) -> Response {
    ucxl_service::lifecycle::prometheus_text(&state.metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb_commit::CommitError;

    fn answer(e: CommitError) -> (u16, Option<HeaderValue>, Code) {
        let error = NodeError::Store(StoreError::Storage(e));
        let code = error.report().code;
        let response = error.into_response();
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        (response.status().as_u16(), retry_after, code)
    }

    #[test]
    fn a_write_the_node_cannot_store_is_507_or_503_with_retry_after_never_500() {
        let full = CommitError::from(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert_eq!(
            answer(full),
            (507, Some(HeaderValue::from(1)), Code::InsufficientStorage)
        );
        let corrupted = CommitError::from(redb::StorageError::Corrupted("bad page".into()));
        for other in [corrupted, CommitError::Closed, CommitError::Stopped] {
            assert_eq!(
                answer(other),
                (503, Some(HeaderValue::from(1)), Code::ServiceUnavailable)
            );
        }
    }
}
