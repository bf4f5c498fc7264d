//! Hybrid mode (SPEC §6): the cluster first; when it cannot serve, the local backend.
//!
//! - Writes the cluster cannot take go to the durable [`Journal`] (committed before the
//!   202) and to the local store. While the journal holds writes to an address, new writes
//!   to it join them, so the cluster receives every address's writes in the order they were
//!   accepted.
//! - Reads of addresses with journaled writes, and reads the cluster cannot serve, come from
//!   the local store (also a cache of every real read and write) with `X-Rustle-Stale`.
//! - Search during fallback runs locally and is `partial`.
//! - [`Recovery::run`] replays the journal in order as soon as an endpoint is available,
//!   then leaves fallback.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use ucxl::{Address, Envelope, EnvelopeId, History, NewVersion, PutOutcome};

use crate::backend::real::RealBackend;
use crate::backend::{
    Backend, BackendError, BackendKind, BackendStatus, Call, Deleted, FallbackStatus,
    JournalStatus, SearchPage, SearchQuery, Served, Via, Written,
};
use crate::store::journal::{Entry, Journal, Op};
use crate::store::local::{LocalStore, Lookup, Retention};
use crate::upstream::cluster::{Cluster, ClusterFailure};

/// Entries replayed per read of the journal.
const REPLAY_BATCH: usize = 512;
/// Addresses replayed at once.
const REPLAY_CONCURRENCY: usize = 64;
/// How often the replayer looks again when nothing woke it.
const REPLAY_TICK: Duration = Duration::from_millis(250);

/// The fallback state and the journal, shared by every hybrid backend and the replayer.
#[derive(Debug)]
pub struct Recovery {
    journal: Arc<Journal>,
    store: Arc<LocalStore>,
    real: RealBackend,
    since: Mutex<Option<DateTime<Utc>>>,
    request_timeout: Mutex<Duration>,
    started: std::sync::atomic::AtomicBool,
}

impl Recovery {
    /// Recovery over `journal`, replaying to `cluster`.
    #[must_use]
    pub fn new(
        journal: Arc<Journal>,
        store: Arc<LocalStore>,
        cluster: Arc<Cluster>,
        request_timeout: Duration,
    ) -> Arc<Self> {
        let real = RealBackend::new(cluster, Arc::clone(&store));
        metrics::gauge!("rustle_fallback_active").set(0.0);
        Arc::new(Self {
            journal,
            store,
            real,
            since: Mutex::new(None),
            request_timeout: Mutex::new(request_timeout),
            started: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts the replayer (once) on the current runtime, until `stop` is cancelled.
    pub fn start(self: &Arc<Self>, stop: &CancellationToken) {
        if !self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tokio::spawn(Arc::clone(self).run(stop.clone()));
        }
    }

    /// Applies a reloaded request timeout (used for replay calls).
    pub fn set_request_timeout(&self, timeout: Duration) {
        *self
            .request_timeout
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = timeout;
    }

    fn since(&self) -> Option<DateTime<Utc>> {
        *self.since.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True while requests are served locally.
    #[must_use]
    pub fn active(&self) -> bool {
        self.since().is_some()
    }

    fn enter(&self, reason: &'static str) {
        metrics::counter!("rustle_fallback_events_total", "reason" => reason).increment(1);
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if since.is_none() {
            *since = Some(Utc::now());
            metrics::gauge!("rustle_fallback_active").set(1.0);
            tracing::warn!(
                reason,
                "fallback: serving from the local store and the journal"
            );
        }
    }

    fn leave(&self) {
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = since.take() {
            metrics::gauge!("rustle_fallback_active").set(0.0);
            let seconds = (Utc::now() - at).to_std().unwrap_or_default().as_secs_f64();
            tracing::info!(
                fallback_seconds = seconds,
                replayed = self.journal.replayed(),
                "recovered: journal replayed, serving from the cluster"
            );
        }
    }

    /// Replays the journal whenever it holds writes and an endpoint is available, and
    /// leaves fallback once it is empty; until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let cluster = Arc::clone(self.real.cluster());
        loop {
            if stop.is_cancelled() {
                return;
            }
            let available = cluster.any_available();
            if self.journal.pending() == 0 {
                if available {
                    self.leave();
                }
                tokio::select! {
                    () = self.journal.appended() => {}
                    () = cluster.wait_for_recovery(REPLAY_TICK) => {}
                    () = stop.cancelled() => return,
                }
                continue;
            }
            if !available {
                tokio::select! {
                    () = cluster.wait_for_recovery(REPLAY_TICK) => {}
                    () = stop.cancelled() => return,
                }
                continue;
            }
            // While every available breaker is half-open (a few probes admitted), replay
            // one entry at a time: those are the probes that close a breaker.
            let (limit, concurrency) = if cluster.any_closed() {
                (REPLAY_BATCH, REPLAY_CONCURRENCY)
            } else {
                (1, 1)
            };
            let recovered = cluster.recovery_signal();
            tokio::pin!(recovered);
            recovered.as_mut().enable();
            if let Err(e) = self.replay_batch(limit, concurrency).await {
                // The cluster failed mid-replay: wait for it (a recovery during the batch
                // counts) rather than spin.
                tracing::info!(error = %e, "replay paused: the cluster failed");
                tokio::select! {
                    _ = tokio::time::timeout(REPLAY_TICK, recovered) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }

    /// Replays the oldest `limit` entries: each address's entries in order, different
    /// addresses in parallel (up to `concurrency`). An error says why the replay stopped.
    async fn replay_batch(&self, limit: usize, concurrency: usize) -> Result<(), String> {
        use futures_util::StreamExt as _;
        let journal = Arc::clone(&self.journal);
        let batch = tokio::task::spawn_blocking(move || journal.oldest(limit))
            .await
            .map_err(|e| format!("cannot read the journal: {e}"))?
            .map_err(|e| format!("cannot read the journal: {e}"))?;
        // Group by address, keeping each address's order (the journal's order).
        let mut groups: Vec<Vec<(u64, Option<Entry>)>> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (seq, entry) in batch {
            let key = entry
                .as_ref()
                .map_or_else(String::new, |e| e.address.canonical().to_owned());
            let i = *index.entry(key).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[i].push((seq, entry));
        }
        let results: Vec<Result<(), String>> = futures_util::stream::iter(groups)
            .map(|group| async move {
                for (seq, entry) in group {
                    self.replay_one(seq, entry).await?;
                }
                Ok(())
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Replays one entry and removes it; an error when the cluster failed (it stays) or the
    /// journal could not remove it.
    async fn replay_one(&self, seq: u64, entry: Option<Entry>) -> Result<(), String> {
        let Some(entry) = entry else {
            tracing::error!(seq, "dropped a journal entry that cannot be decoded");
            return self.forget(seq, None).await;
        };
        let timeout = *self
            .request_timeout
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let call = Call {
            request_id: entry.request_id.clone(),
            deadline: Instant::now() + timeout,
        };
        let result = match &entry.op {
            Op::Put { version } => self
                .real
                .send_put(&call, &entry.address, &NewVersion::from(version))
                .await
                .map(|_| ()),
            Op::Delete { id, deleted_at } => self
                .real
                .send_delete(&call, &entry.address, id, Some(*deleted_at))
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => {}
            Err(BackendError::Refused(refusal, _)) => {
                // A definite answer: replaying again would get the same one (a delete of
                // something the cluster never had, an id the cluster holds for another kind
                // of write).
                tracing::warn!(
                    seq,
                    request_id = %entry.request_id,
                    address = %entry.address,
                    code = %refusal.code,
                    message = %refusal.message,
                    "the cluster refused a journaled write; dropped from the journal"
                );
            }
            Err(e) => return Err(format!("entry {seq}: {e}")),
        }
        self.forget(seq, Some(&entry.address)).await
    }

    /// Removes a replayed entry; an error when the journal could not (the replay pauses
    /// rather than send the entry again at once).
    async fn forget(&self, seq: u64, address: Option<&Address>) -> Result<(), String> {
        match self.journal.remove(seq).await {
            Ok(last) => {
                if last && let Some(address) = address {
                    self.store.release(address);
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(seq, error = %e, "cannot remove a replayed journal entry");
                Err(format!("cannot remove journal entry {seq}: {e}"))
            }
        }
    }
}

/// The cluster with the local backend as fallback.
#[derive(Debug, Clone)]
pub struct HybridBackend {
    recovery: Arc<Recovery>,
}

fn fallback_via(attempts: u32, stale: bool) -> Via {
    Via {
        backend: BackendKind::Fallback,
        endpoint: None,
        attempts,
        stale,
    }
}

/// Why the real path was not taken or failed: `None` means a definite answer to pass on.
enum Route<T> {
    Served(Served<T>),
    Fallback {
        reason: &'static str,
        cause: Option<ClusterFailure>,
    },
}

fn route<T>(result: Result<Served<T>, BackendError>) -> Result<Route<T>, BackendError> {
    match result {
        Ok(served) => Ok(Route::Served(served)),
        Err(BackendError::Cluster(failure)) => Ok(Route::Fallback {
            reason: failure.reason(),
            cause: Some(failure),
        }),
        Err(other) => Err(other),
    }
}

impl HybridBackend {
    /// A hybrid backend over `recovery`.
    #[must_use]
    pub fn new(recovery: Arc<Recovery>) -> Self {
        Self { recovery }
    }

    fn store(&self) -> &LocalStore {
        &self.recovery.store
    }

    fn attempts(cause: Option<&ClusterFailure>) -> u32 {
        cause.map_or(0, |c| c.attempts)
    }

    async fn journal(&self, call: &Call, address: &Address, op: Op) -> Result<(), BackendError> {
        let entry = Entry {
            address: address.without_temporal(),
            op,
            request_id: call.request_id.clone(),
        };
        // A stalled disk must not hold the request past its deadline; if the commit lands
        // later, the replay of a write the client retried is a no-op (same id).
        match tokio::time::timeout_at(call.deadline, self.recovery.journal.append(&entry)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BackendError::Journal(ucxl::error::Chain(&e).to_string())),
            Err(_) => Err(BackendError::Timeout),
        }
    }

    async fn local_put(
        &self,
        call: &Call,
        address: &Address,
        new: NewVersion,
        reason: &'static str,
        cause: Option<&ClusterFailure>,
    ) -> Result<Served<Written>, BackendError> {
        let outcome = self
            .store()
            .put(address, new, Retention::Owned, Utc::now())?;
        let created = matches!(outcome, PutOutcome::Created { .. });
        let (number, stored) = outcome.parts();
        // An id the store already holds as the only copy may be a retry of a write whose
        // journal commit failed: journal it again (a replayed duplicate is a no-op).
        if created || self.store().is_owned(address) {
            let op = Op::Put {
                version: (**stored).clone(),
            };
            self.journal(call, address, op).await?;
            self.recovery.enter(reason);
        }
        Ok(Served {
            value: Written {
                envelope: Envelope::new(address, number, stored),
                created,
            },
            via: fallback_via(Self::attempts(cause), false),
        })
    }

    async fn local_delete(
        &self,
        call: &Call,
        address: &Address,
        id: EnvelopeId,
        reason: &'static str,
        cause: Option<&ClusterFailure>,
    ) -> Result<Served<Deleted>, BackendError> {
        let outcome = self.store().delete_blind(address, id, Utc::now())?;
        let tombstone = outcome.tombstone().clone();
        if matches!(outcome, ucxl::DeleteOutcome::Deleted(_)) || self.store().is_owned(address) {
            let op = Op::Delete {
                id: tombstone.id.clone(),
                deleted_at: tombstone.created_at,
            };
            self.journal(call, address, op).await?;
            self.recovery.enter(reason);
        }
        Ok(Served {
            value: Deleted {
                address: address.without_temporal(),
                id: tombstone.id,
                deleted_at: tombstone.created_at,
            },
            via: fallback_via(Self::attempts(cause), false),
        })
    }

    fn local_get(
        &self,
        address: &Address,
        reason: &'static str,
        cause: Option<ClusterFailure>,
    ) -> Result<Served<Envelope>, BackendError> {
        let attempts = Self::attempts(cause.as_ref());
        match self.store().lookup(address) {
            Lookup::Found(n, v) => {
                self.recovery.enter(reason);
                Ok(Served {
                    value: Envelope::new(address, n, &v),
                    via: fallback_via(attempts, true),
                })
            }
            Lookup::Missing => Err(BackendError::NotFound {
                address: address.to_string(),
            }),
            Lookup::NotHeld => Err(BackendError::NotCached {
                address: address.to_string(),
                cause,
            }),
        }
    }

    fn local_history(
        &self,
        address: &Address,
        reason: &'static str,
        cause: Option<ClusterFailure>,
    ) -> Result<Served<History>, BackendError> {
        let attempts = Self::attempts(cause.as_ref());
        match self.store().full_history(address) {
            Some(versions) if versions.is_empty() => Err(BackendError::NotFound {
                address: address.to_string(),
            }),
            Some(versions) => {
                self.recovery.enter(reason);
                Ok(Served {
                    value: History {
                        address: address.without_temporal(),
                        versions,
                    },
                    via: fallback_via(attempts, true),
                })
            }
            None => Err(BackendError::NotCached {
                address: address.to_string(),
                cause,
            }),
        }
    }

    async fn local_search(
        &self,
        call: &Call,
        query: &SearchQuery,
        reason: &'static str,
        attempts: u32,
    ) -> Result<Served<SearchPage>, BackendError> {
        self.recovery.enter(reason);
        let (items, next_cursor) = self
            .recovery
            .store
            .search_page(call.deadline, query)
            .await?;
        metrics::counter!("rustle_search_partial_total").increment(1);
        let failed_endpoints = self
            .recovery
            .real
            .cluster()
            .endpoints()
            .iter()
            .map(|e| e.url().to_owned())
            .collect();
        Ok(Served {
            value: SearchPage {
                items,
                next_cursor,
                partial: true,
                failed_endpoints,
            },
            via: fallback_via(attempts, true),
        })
    }

    /// True when a write to `address` must join the journal to keep its order: earlier
    /// writes to the address wait there. Writes to other addresses go to the cluster as
    /// soon as it takes them, so the backlog only shrinks during a replay.
    fn journal_first(&self, address: &Address) -> bool {
        self.recovery.journal.pending_for(address)
    }
}

#[async_trait]
impl Backend for HybridBackend {
    async fn put(
        &self,
        call: &Call,
        address: &Address,
        new: NewVersion,
    ) -> Result<Served<Written>, BackendError> {
        if self.journal_first(address) {
            return self
                .local_put(call, address, new, "journal_pending", None)
                .await;
        }
        match route(self.recovery.real.put(call, address, new.clone()).await)? {
            Route::Served(served) => Ok(served),
            Route::Fallback { reason, cause } => {
                self.local_put(call, address, new, reason, cause.as_ref())
                    .await
            }
        }
    }

    async fn get(&self, call: &Call, address: &Address) -> Result<Served<Envelope>, BackendError> {
        if self.recovery.journal.pending_for(address) {
            return self.local_get(address, "journal_pending", None);
        }
        match route(self.recovery.real.get(call, address).await)? {
            Route::Served(served) => Ok(served),
            Route::Fallback { reason, cause } => self.local_get(address, reason, cause),
        }
    }

    async fn delete(
        &self,
        call: &Call,
        address: &Address,
        id: EnvelopeId,
    ) -> Result<Served<Deleted>, BackendError> {
        if self.journal_first(address) {
            return self
                .local_delete(call, address, id, "journal_pending", None)
                .await;
        }
        match route(self.recovery.real.delete(call, address, id.clone()).await)? {
            Route::Served(served) => Ok(served),
            Route::Fallback { reason, cause } => {
                self.local_delete(call, address, id, reason, cause.as_ref())
                    .await
            }
        }
    }

    async fn history(
        &self,
        call: &Call,
        address: &Address,
    ) -> Result<Served<History>, BackendError> {
        if self.recovery.journal.pending_for(address) {
            return self.local_history(address, "journal_pending", None);
        }
        match route(self.recovery.real.history(call, address).await)? {
            Route::Served(served) => Ok(served),
            Route::Fallback { reason, cause } => self.local_history(address, reason, cause),
        }
    }

    async fn search(
        &self,
        call: &Call,
        query: &SearchQuery,
    ) -> Result<Served<SearchPage>, BackendError> {
        if self.recovery.active() || self.recovery.journal.pending() > 0 {
            return self.local_search(call, query, "fallback_active", 0).await;
        }
        match route(self.recovery.real.search(call, query).await)? {
            Route::Served(served) => Ok(served),
            Route::Fallback { reason, cause } => {
                self.local_search(call, query, reason, Self::attempts(cause.as_ref()))
                    .await
            }
        }
    }

    fn local_kind(&self) -> BackendKind {
        BackendKind::Fallback
    }

    fn ready(&self) -> bool {
        true
    }

    fn status(&self) -> BackendStatus {
        let since = self.recovery.since();
        BackendStatus {
            active_backend: if since.is_some() {
                BackendKind::Fallback
            } else {
                BackendKind::Real
            },
            fallback: FallbackStatus {
                active: since.is_some(),
                since,
            },
            journal: JournalStatus {
                pending: self.recovery.journal.pending(),
            },
            endpoints: self.recovery.real.cluster().status(),
            local_store: self.store().status(),
        }
    }
}
