//! The `Backend` seam: what the routes call to store, fetch and search envelopes, whatever
//! serves them (the local store, the BZZZ cluster, or the cluster with fallback).

pub mod cached;
pub mod hybrid;
pub mod mock;
pub mod real;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::time::Instant;
use ucxl::{Address, Envelope, EnvelopeId, History, NewVersion, SearchItem};

/// Which kind of backend answered a request (the `X-Rustle-Backend` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The in-process local backend, as the configured mode.
    Mock,
    /// A BZZZ node.
    Real,
    /// The local backend, standing in for an unreachable cluster.
    Fallback,
    /// The gateway's cache of cluster data, kept current by the nodes' change feeds (a read
    /// that asked `X-Rustle-Consistency: cached`).
    Cache,
}

impl BackendKind {
    /// The header value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mock => "mock",
            Self::Real => "real",
            Self::Fallback => "fallback",
            Self::Cache => "cache",
        }
    }
}

/// The request context every backend call gets.
#[derive(Debug, Clone)]
pub struct Call {
    /// The request id, forwarded to nodes.
    pub request_id: String,
    /// When the request must be answered by.
    pub deadline: Instant,
    /// The request's trace context: each attempt at a node is a child span of it, and the
    /// node gets the attempt's `traceparent`.
    pub trace: ucxl_service::TraceContext,
}

impl Call {
    /// A call of the gateway's own (no client request behind it: a replay, a watch
    /// stream's read): a new trace, not exported.
    #[must_use]
    pub fn new(request_id: impl Into<String>, deadline: Instant) -> Self {
        Self {
            request_id: request_id.into(),
            deadline,
            trace: ucxl_service::TraceContext::unsampled(),
        }
    }

    /// Time left before the deadline.
    #[must_use]
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The same call with `reserve` (at most half of what is left) kept back from its
    /// deadline, for work that must still fit after it (journaling a write the cluster
    /// could not take).
    #[must_use]
    pub fn reserving(&self, reserve: Duration) -> Self {
        let keep = reserve.min(self.remaining() / 2);
        Self {
            request_id: self.request_id.clone(),
            deadline: self.deadline - keep,
            trace: self.trace.clone(),
        }
    }
}

/// How a request was served, or how far it got: carried from where it is known (the
/// cluster's attempts, the fallback's journal) to the answer's `X-Rustle-*` headers and
/// code, never rebuilt afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Which backend answered (or failed).
    pub backend: BackendKind,
    /// The node that answered, for real answers.
    pub endpoint: Option<String>,
    /// Attempts made (1 without retries; 0 when no node was asked).
    pub attempts: u32,
    /// True when a fallback read may be out of date.
    pub stale: bool,
    /// True when a write was accepted into the durable journal and reaches the cluster on
    /// replay (answered 202).
    pub journaled: bool,
    /// For a read that asked for the cache: whether it was served from it, and how far
    /// behind the nodes the cache could be.
    pub cache: Option<CacheRead>,
}

/// How a read that asked `X-Rustle-Consistency: cached` went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheRead {
    /// Served from the cache (`X-Rustle-Cache: hit`), or from a node (`miss`).
    pub hit: bool,
    /// The longest time since a node's feed was heard from, in milliseconds
    /// (`X-Rustle-Feed-Lag-Ms`); [`CacheRead::UNKNOWN`] when some feed is not streaming.
    lag_ms: u32,
}

impl CacheRead {
    /// The lag of a read when some feed is not streaming (kept in 4 bytes: `Via` travels in
    /// every error answer).
    const UNKNOWN: u32 = u32::MAX;

    /// A read that asked for the cache, `hit` or not, with the feeds `lag` behind.
    #[must_use]
    pub fn new(hit: bool, lag: Option<Duration>) -> Self {
        Self {
            hit,
            lag_ms: lag.map_or(Self::UNKNOWN, |l| {
                u32::try_from(l.as_millis()).unwrap_or(Self::UNKNOWN - 1)
            }),
        }
    }

    /// The lag in milliseconds, when known.
    #[must_use]
    pub fn lag_ms(self) -> Option<u32> {
        (self.lag_ms != Self::UNKNOWN).then_some(self.lag_ms)
    }
}

impl Via {
    /// A first-attempt answer from a local backend.
    #[must_use]
    pub fn local(backend: BackendKind) -> Self {
        Self {
            backend,
            endpoint: None,
            attempts: 1,
            stale: false,
            journaled: false,
            cache: None,
        }
    }

    /// Served by the fallback after `attempts` cluster attempts.
    #[must_use]
    pub fn fallback(attempts: u32) -> Self {
        Self {
            backend: BackendKind::Fallback,
            endpoint: None,
            attempts,
            stale: false,
            journaled: false,
            cache: None,
        }
    }

    /// Answered (or refused) by `endpoint` of the cluster after `attempts` attempts.
    #[must_use]
    pub fn real(endpoint: Option<String>, attempts: u32) -> Self {
        Self {
            backend: BackendKind::Real,
            endpoint,
            attempts,
            stale: false,
            journaled: false,
            cache: None,
        }
    }
}

/// A backend call that did not serve: why, and how far it got.
#[derive(Debug, Clone, PartialEq)]
pub struct NotServed {
    /// Why.
    pub error: BackendError,
    /// Who failed, after how many attempts.
    pub via: Via,
}

impl NotServed {
    /// `error` with `via`.
    #[must_use]
    pub fn new(error: impl Into<BackendError>, via: Via) -> Self {
        Self {
            error: error.into(),
            via,
        }
    }
}

/// What every backend call gives: the answer and how it was served, or why not.
pub type Outcome<T> = Result<Served<T>, NotServed>;

/// A backend's answer with how it was served.
#[derive(Debug, Clone)]
pub struct Served<T> {
    /// The answer.
    pub value: T,
    /// How it was served.
    pub via: Via,
}

/// The result of a put.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The stored (or already existing) envelope.
    pub envelope: Envelope,
    /// False when the id existed and nothing changed.
    pub created: bool,
}

/// The result of a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Deleted {
    /// The canonical address.
    pub address: Address,
    /// The delete's id (Idempotency-Key or `UUIDv7`).
    #[schema(value_type = String)]
    pub id: EnvelopeId,
    /// When the delete was accepted.
    #[serde(with = "ucxl::envelope::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub deleted_at: DateTime<Utc>,
}

impl crate::upstream::ucxi::About for Deleted {
    fn about(&self) -> Option<&Address> {
        Some(&self.address)
    }
}

pub use ucxl::SearchQuery;

/// One page of search results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SearchPage {
    /// Latest version of each matching address, sorted by address.
    pub items: Vec<SearchItem>,
    /// The cursor of the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    /// True when some endpoint could not be searched.
    pub partial: bool,
    /// The endpoints that could not be searched.
    pub failed_endpoints: Vec<String>,
}

/// Why a backend could not do what was asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// No live version at the address (or none that the temporal segment selects).
    #[error("nothing stored at {address}")]
    NotFound {
        /// The address as requested.
        address: String,
    },
    /// The write was refused (hash mismatch, id reuse, nothing to delete).
    #[error(transparent)]
    Write(#[from] ucxl::WriteError),
    /// The request deadline passed.
    #[error("the request deadline passed")]
    Timeout,
    /// A bug (a panicked task): logged, answered opaquely.
    #[error("internal error: {0}")]
    Internal(String),
    /// The local store is full of versions it must not evict.
    #[error("the local store is full ({limit} versions)")]
    StoreFull {
        /// The configured limit.
        limit: usize,
    },
    /// A node refused the request (4xx): its answer is passed on as is.
    #[error("a node refused: {0:?}")]
    Refused(crate::upstream::ucxi::Refusal),
    /// The cluster could not answer (no endpoint, attempts or deadline exhausted, bad
    /// answers).
    #[error(transparent)]
    Cluster(#[from] crate::upstream::cluster::ClusterFailure),
    /// In fallback, the local store does not hold what was asked.
    #[error("the cluster is unreachable and the local cache does not hold {address}")]
    NotCached {
        /// The address as requested.
        address: String,
        /// Why the cluster could not answer.
        cause: Option<crate::upstream::cluster::ClusterFailure>,
    },
    /// The durable journal could not take a fallback write.
    #[error("the journal cannot take the write: {0}")]
    Journal(String),
    /// The local store's disk did not take the write: nothing of it was kept.
    #[error("the local store's disk cannot take the write: {cause}")]
    Storage {
        /// Full or failing storage (507), rather than a closed or stopped store (503).
        unwritable: bool,
        /// The storage's error chain, for the log.
        cause: String,
    },
}

impl From<crate::store::durable::DurableError> for BackendError {
    fn from(e: crate::store::durable::DurableError) -> Self {
        use crate::store::durable::DurableError;
        match e {
            DurableError::Store(e) => e.into(),
            DurableError::Storage(e) => Self::Storage {
                unwritable: e.is_unwritable(),
                cause: ucxl::error::Chain(&e).to_string(),
            },
        }
    }
}

impl From<crate::store::local::StoreError> for BackendError {
    fn from(e: crate::store::local::StoreError) -> Self {
        use crate::store::local::StoreError;
        match e {
            StoreError::Write(w) => Self::Write(w),
            StoreError::Full { limit } => Self::StoreFull { limit },
            StoreError::Timeout => Self::Timeout,
            StoreError::Task(cause) => Self::Internal(cause),
        }
    }
}

/// What `/v1/status` shows of the local store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LocalStoreStatus {
    /// Addresses held.
    pub addresses: usize,
    /// Versions and tombstones held.
    pub entries: usize,
    /// Of those, entries held as the only copy (never evicted).
    pub owned_entries: usize,
    /// The configured bound (`RUSTLE_CACHE_MAX_ENTRIES`).
    pub max_entries: usize,
    /// Addresses evicted since start.
    pub evictions: u64,
    /// Where the data the store holds as the only copy is kept: `disk` (under
    /// `RUSTLE_DATA_DIR`, kept across restarts) or `memory` (lost on restart).
    pub storage: crate::config::LocalStorage,
}

/// Encodes the canonical address a page ended at as an opaque cursor.
#[must_use]
pub fn encode_cursor(last: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1:{last}"))
}

/// Decodes a cursor made by [`encode_cursor`].
#[must_use]
pub fn decode_cursor(cursor: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let last = text.strip_prefix("v1:")?;
    Address::parse(last).ok().map(|a| a.canonical().to_owned())
}

/// Stores, fetches and searches envelopes. Implemented by the local (mock) backend now and
/// by the real and hybrid backends; the conformance suite holds every one to the same
/// semantics.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Stores a new version at `address`, or returns the existing one with the same id.
    async fn put(&self, call: &Call, address: &Address, new: NewVersion) -> Outcome<Written>;
    /// Fetches the version `address`'s temporal segment selects.
    async fn get(&self, call: &Call, address: &Address) -> Outcome<Envelope>;
    /// Writes a tombstone at `address` (a no-op when a delete with this id exists).
    async fn delete(&self, call: &Call, address: &Address, id: EnvelopeId) -> Outcome<Deleted>;
    /// Lists the current versions of `address`.
    async fn history(&self, call: &Call, address: &Address) -> Outcome<History>;
    /// One page of the latest version of each matching address.
    async fn search(&self, call: &Call, query: &SearchQuery) -> Outcome<SearchPage>;
    /// Whether the backend can serve requests now (`/ready`).
    fn ready(&self) -> bool;
    /// What `/v1/status` shows of this backend.
    fn status(&self) -> BackendStatus;
}

/// Whether the gateway is serving from the local store in place of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FallbackStatus {
    /// True while requests are served locally.
    pub active: bool,
    /// Since when (RFC 3339), while active.
    #[serde(with = "ucxl::envelope::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub since: Option<DateTime<Utc>>,
}

/// The durable write journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JournalStatus {
    /// Writes accepted in fallback and not yet replayed to the cluster.
    pub pending: u64,
}

/// A breaker's state and why it is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BreakerStatus {
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// The rule and numbers that set the state.
    pub reason: String,
    /// Failed calls in a row.
    pub consecutive_failures: u32,
    /// When an open breaker admits its next probe (RFC 3339); `null` unless open.
    #[serde(with = "ucxl::envelope::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_probe: Option<DateTime<Utc>>,
    /// The open period the next opening will use, in milliseconds.
    pub next_open_ms: u64,
}

/// One BZZZ endpoint as the gateway sees it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EndpointStatus {
    /// The endpoint URL.
    pub url: String,
    /// Whether health checks pass (2 in a row mark it up, 2 failures down).
    pub up: bool,
    /// Whether it would take a request now (up, breaker admitting, no Retry-After, not
    /// stalled).
    pub available: bool,
    /// Requests are in flight and it has answered nothing for longer than it should (a
    /// hung node): new requests go elsewhere.
    pub stalled: bool,
    /// Its breaker.
    pub breaker: BreakerStatus,
    /// Peak-EWMA latency, in milliseconds.
    pub ewma_latency_ms: f64,
    /// Requests in flight to it.
    pub in_flight: u32,
    /// The last error seen (attempt or health check).
    pub last_error: Option<String>,
    /// When (RFC 3339).
    #[serde(with = "ucxl::envelope::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_error_at: Option<DateTime<Utc>>,
    /// When its health was last checked (RFC 3339).
    #[serde(with = "ucxl::envelope::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_health_check: Option<DateTime<Utc>>,
    /// Consecutive health checks passed (2 mark a down endpoint up).
    pub health_passes: u32,
    /// Consecutive health checks failed (2 mark an up endpoint down).
    pub health_failures: u32,
    /// Skipped until then after a `Retry-After` (RFC 3339).
    #[serde(with = "ucxl::envelope::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub skipped_until: Option<DateTime<Utc>>,
}

/// What a backend reports for `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BackendStatus {
    /// Which backend answers requests now.
    pub active_backend: BackendKind,
    /// Fallback state.
    pub fallback: FallbackStatus,
    /// Journal depth.
    pub journal: JournalStatus,
    /// The BZZZ endpoints (empty in mock mode).
    pub endpoints: Vec<EndpointStatus>,
    /// The local store.
    pub local_store: LocalStoreStatus,
}

/// A mode this gateway cannot serve now, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend mode {mode} is not available: {reason}")]
pub struct ModeUnavailable {
    /// The mode asked for.
    pub mode: crate::config::BackendMode,
    /// Why it is not available.
    pub reason: String,
}

/// What the backends of every mode are built from.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    /// The local store.
    pub store: &'a std::sync::Arc<crate::store::local::LocalStore>,
    /// The BZZZ endpoints.
    pub cluster: &'a std::sync::Arc<crate::upstream::cluster::Cluster>,
    /// The journal and fallback state, when the journal is open.
    pub fallback: Option<&'a std::sync::Arc<hybrid::Fallback>>,
    /// The local store's disk, when it is open (mock mode then writes through it).
    pub durable: Option<&'a std::sync::Arc<crate::store::durable::DurableStore>>,
}

/// Whether `mode` can run over `cluster` (the one place that decides it, before anything
/// is opened for it): real and hybrid need an endpoint.
///
/// # Errors
/// [`ModeUnavailable`] saying why not.
pub fn can_run(
    mode: crate::config::BackendMode,
    cluster: &crate::upstream::cluster::Cluster,
) -> Result<(), ModeUnavailable> {
    if mode != crate::config::BackendMode::Mock && cluster.endpoints().is_empty() {
        return Err(ModeUnavailable {
            mode,
            reason: "RUSTLE_BZZZ_ENDPOINTS lists no endpoint".into(),
        });
    }
    Ok(())
}

/// The backend that implements `mode`.
///
/// # Errors
/// [`ModeUnavailable`] when real or hybrid mode has no endpoints, or hybrid mode no journal.
pub fn for_mode(
    mode: crate::config::BackendMode,
    parts: Parts<'_>,
) -> Result<std::sync::Arc<dyn Backend>, ModeUnavailable> {
    use crate::config::BackendMode;
    use std::sync::Arc;
    let unavailable = |reason: &str| ModeUnavailable {
        mode,
        reason: reason.to_owned(),
    };
    can_run(mode, parts.cluster)?;
    Ok(match mode {
        BackendMode::Mock => Arc::new(match parts.durable {
            Some(durable) => mock::MockBackend::durable(Arc::clone(durable)),
            None => mock::MockBackend::new(Arc::clone(parts.store)),
        }),
        BackendMode::Real => Arc::new(real::RealBackend::new(
            Arc::clone(parts.cluster),
            Arc::clone(parts.store),
        )),
        BackendMode::Hybrid => {
            let fallback = parts
                .fallback
                .ok_or_else(|| unavailable("the journal is not open"))?;
            Arc::new(hybrid::HybridBackend::new(Arc::clone(fallback)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_garbage() {
        let c = encode_cursor("ucxl://a:b@c:d/x");
        assert_eq!(decode_cursor(&c).as_deref(), Some("ucxl://a:b@c:d/x"));
        assert_eq!(decode_cursor("!!!"), None);
        assert_eq!(decode_cursor(&encode_cursor("not an address")), None);
    }
}
