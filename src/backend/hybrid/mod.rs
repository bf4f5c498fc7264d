//! Hybrid mode (SPEC §6): the cluster first; when it cannot serve, the local backend
//! (`fallback`), with the durable journal replayed to the cluster on recovery (`replay`).
//!
//! One decision, written once in [`HybridBackend::serve_or_fallback`] and used by every
//! operation: serve locally at once when the address has journaled writes waiting (so the
//! cluster receives every address's writes in the order they were accepted), else ask the
//! cluster and fall back when the cluster fails (no endpoint, attempts or deadline
//! exhausted, an unusable answer), never when a node answered definitely.
//!
//! Writes keep part of their deadline for the journal: the cluster gets the rest, so a
//! write whose attempts hang until the deadline can still be journaled and answered 202.

pub mod fallback;
pub mod replay;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ucxl::{Address, Envelope, EnvelopeId, History, NewVersion};

pub use fallback::{Fallback, Reason};

use super::{
    Backend, BackendError, BackendKind, BackendStatus, Call, Deleted, FallbackStatus,
    JournalStatus, NotServed, Outcome, SearchPage, SearchQuery, Written,
};

/// The part of a write's deadline kept for the journal when the cluster fails: at most
/// this, at most half of what is left. An fsync takes milliseconds; a hung cluster takes
/// whatever it is given.
pub const JOURNAL_RESERVE: Duration = Duration::from_millis(250);

/// The cluster with the local backend as fallback.
#[derive(Debug, Clone)]
pub struct HybridBackend {
    fallback: Arc<Fallback>,
}

/// When to serve locally without asking the cluster.
enum First {
    /// Ask the cluster first.
    Cluster,
    /// Serve locally at once, for this reason.
    Local(&'static str),
}

impl HybridBackend {
    /// A hybrid backend over `fallback`.
    #[must_use]
    pub fn new(fallback: Arc<Fallback>) -> Self {
        Self { fallback }
    }

    /// Writes and reads of an address with journaled writes waiting are served locally,
    /// so they keep their order (and reads see them).
    fn first_for(&self, address: &Address) -> First {
        if self.fallback.journal.pending_for(address) {
            First::Local("journal_pending")
        } else {
            First::Cluster
        }
    }

    /// The one fallback decision: serve locally at once when `first` says so; else ask
    /// the cluster, and serve locally when the cluster failed, passing every other answer
    /// (data, a node's refusal, a bad request) on as it is.
    async fn serve_or_fallback<T, Real, Local, LocalFut>(
        first: First,
        real: Real,
        local: Local,
    ) -> Outcome<T>
    where
        Real: Future<Output = Outcome<T>>,
        Local: FnOnce(Reason) -> LocalFut,
        LocalFut: Future<Output = Outcome<T>>,
    {
        if let First::Local(label) = first {
            return local(Reason::without_asking(label)).await;
        }
        match real.await {
            Err(NotServed {
                error: BackendError::Cluster(failure),
                ..
            }) => local(Reason::cluster_failed(failure)).await,
            served_or_definite => served_or_definite,
        }
    }
}

#[async_trait]
impl Backend for HybridBackend {
    async fn put(&self, call: &Call, address: &Address, new: NewVersion) -> Outcome<Written> {
        let f = &self.fallback;
        let cluster_call = call.reserving(JOURNAL_RESERVE);
        Self::serve_or_fallback(
            self.first_for(address),
            f.real.put(&cluster_call, address, new.clone()),
            |reason| f.put(call, address, new, reason),
        )
        .await
    }

    async fn get(&self, call: &Call, address: &Address) -> Outcome<Envelope> {
        let f = &self.fallback;
        Self::serve_or_fallback(
            self.first_for(address),
            f.real.get(call, address),
            |reason| async move { f.get(address, reason) },
        )
        .await
    }

    async fn delete(&self, call: &Call, address: &Address, id: EnvelopeId) -> Outcome<Deleted> {
        let f = &self.fallback;
        let cluster_call = call.reserving(JOURNAL_RESERVE);
        Self::serve_or_fallback(
            self.first_for(address),
            f.real.delete(&cluster_call, address, id.clone()),
            |reason| f.delete(call, address, id, reason),
        )
        .await
    }

    async fn history(&self, call: &Call, address: &Address) -> Outcome<History> {
        let f = &self.fallback;
        Self::serve_or_fallback(
            self.first_for(address),
            f.real.history(call, address),
            |reason| async move { f.history(address, reason) },
        )
        .await
    }

    async fn search(&self, call: &Call, query: &SearchQuery) -> Outcome<SearchPage> {
        let f = &self.fallback;
        // While anything waits in the journal, the cluster's view is behind the gateway's.
        let first = if f.active() || f.journal.pending() > 0 {
            First::Local("fallback_active")
        } else {
            First::Cluster
        };
        Self::serve_or_fallback(first, f.real.search(call, query), |reason| {
            f.search(call, query, reason)
        })
        .await
    }

    fn ready(&self) -> bool {
        true
    }

    fn status(&self) -> BackendStatus {
        let f = &self.fallback;
        let since = f.since();
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
                pending: f.journal.pending(),
            },
            endpoints: f.cluster().status(),
            local_store: f.store.status(),
        }
    }
}
