//! The fallback: serving from the local store when the cluster cannot, with the durable
//! journal for writes. [`Fallback`] holds the state every hybrid backend shares: the
//! journal, the local store, the real backend the journal is replayed to, and since when
//! requests are served locally.
//!
//! - Writes go to the journal (committed before the answer) and to the local store as
//!   owned data, answered as journaled (202).
//! - Reads come from the local store (also a cache of every real read and write), marked
//!   stale; a version the store does not hold is 503, never a wrong version or a false 404.
//! - Search runs locally and is `partial`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ucxl::{Address, Envelope, EnvelopeId, History, NewVersion, PutOutcome};

use crate::backend::real::RealBackend;
use crate::backend::{
    BackendError, Call, Deleted, NotServed, Outcome, SearchPage, SearchQuery, Served, Via, Written,
};
use crate::store::journal::{Entry, Journal, Op};
use crate::store::local::{LocalStore, Lookup, Retention};
use crate::upstream::cluster::{Cluster, ClusterFailure};

/// Why a request is served by the fallback: the label of
/// `rustle_fallback_events_total`, and the cluster's failure when it was asked.
#[derive(Debug, Clone)]
pub struct Reason {
    /// The label.
    pub label: &'static str,
    /// The cluster's failure, when the cluster was asked first.
    pub cause: Option<ClusterFailure>,
}

impl Reason {
    /// Served locally without asking the cluster: `label` says why.
    #[must_use]
    pub fn without_asking(label: &'static str) -> Self {
        Self { label, cause: None }
    }

    /// The cluster failed as `cause` says.
    #[must_use]
    pub fn cluster_failed(cause: ClusterFailure) -> Self {
        Self {
            label: cause.reason(),
            cause: Some(cause),
        }
    }

    /// Attempts the cluster made before the fallback took over.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.cause.as_ref().map_or(0, |c| c.attempts)
    }
}

/// The fallback state and the journal, shared by every hybrid backend and the replayer.
#[derive(Debug)]
pub struct Fallback {
    pub(super) journal: Arc<Journal>,
    pub(super) store: Arc<LocalStore>,
    pub(super) real: RealBackend,
    since: Mutex<Option<DateTime<Utc>>>,
    pub(super) request_timeout: Mutex<Duration>,
    pub(super) started: std::sync::atomic::AtomicBool,
}

impl Fallback {
    /// The fallback over `journal` and `store`, replaying to `cluster`.
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

    /// Applies a reloaded request timeout (used for replay calls).
    pub fn set_request_timeout(&self, timeout: Duration) {
        *self
            .request_timeout
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = timeout;
    }

    /// Since when requests are served locally, while they are.
    #[must_use]
    pub fn since(&self) -> Option<DateTime<Utc>> {
        *self.since.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True while requests are served locally.
    #[must_use]
    pub fn active(&self) -> bool {
        self.since().is_some()
    }

    /// The journal.
    #[must_use]
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// The cluster the journal is replayed to.
    #[must_use]
    pub fn cluster(&self) -> &Arc<Cluster> {
        self.real.cluster()
    }

    pub(super) fn enter(&self, reason: &'static str) {
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

    pub(super) fn leave(&self) {
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

    /// Commits `op` at `address` to the journal and enters fallback (the journal holding a
    /// write is what fallback means).
    async fn journal_write(
        &self,
        call: &Call,
        address: &Address,
        op: Op,
        reason: &Reason,
    ) -> Result<(), BackendError> {
        let entry = Entry {
            address: address.without_temporal(),
            op,
            request_id: call.request_id.clone(),
        };
        // A stalled disk must not hold the request past its deadline: an append the writer
        // has not taken by then is dropped (the 504 is the truth); one it has taken is
        // waited for (one commit), so a write the journal holds is never answered as failed.
        let deadline = tokio::time::sleep_until(call.deadline);
        match self.journal.append_unless(&entry, deadline).await {
            Ok(Some(_)) => {
                self.enter(reason.label);
                Ok(())
            }
            Ok(None) => Err(BackendError::Timeout),
            Err(e) => Err(BackendError::Journal(ucxl::error::Chain(&e).to_string())),
        }
    }

    /// A write served locally: stored as owned data and journaled.
    pub(super) async fn put(
        &self,
        call: &Call,
        address: &Address,
        new: NewVersion,
        reason: Reason,
    ) -> Outcome<Written> {
        let via = Via::fallback(reason.attempts());
        let outcome = self
            .store
            .put(address, new, Retention::Owned, Utc::now())
            .map_err(|e| NotServed::new(e, via.clone()))?;
        let created = matches!(outcome, PutOutcome::Created { .. });
        let (number, stored) = outcome.parts();
        // An id the store already holds as the only copy may be a retry of a write whose
        // journal commit failed: journal it again (a replayed duplicate is a no-op).
        let journaled = created || self.store.is_owned(address);
        if journaled {
            let op = Op::Put {
                version: (**stored).clone(),
            };
            if let Err(e) = self.journal_write(call, address, op, &reason).await {
                // Not journaled: the store must not show it (a retry with the same id
                // stores and journals it again).
                if created {
                    self.store.undo_put(address, &stored.id);
                }
                return Err(NotServed::new(e, via));
            }
        }
        Ok(Served {
            value: Written {
                envelope: Envelope::new(address, number, stored),
                created,
            },
            via: Via { journaled, ..via },
        })
    }

    /// A delete served locally: a tombstone, owned and journaled (the cluster decides on
    /// replay whether there was anything to delete).
    pub(super) async fn delete(
        &self,
        call: &Call,
        address: &Address,
        id: EnvelopeId,
        reason: Reason,
    ) -> Outcome<Deleted> {
        let via = Via::fallback(reason.attempts());
        let outcome = self
            .store
            .delete_blind(address, id, Utc::now())
            .map_err(|e| NotServed::new(e, via.clone()))?;
        let tombstone = outcome.tombstone().clone();
        let journaled =
            matches!(outcome, ucxl::DeleteOutcome::Deleted(_)) || self.store.is_owned(address);
        if journaled {
            let op = Op::Delete {
                id: tombstone.id.clone(),
                deleted_at: tombstone.created_at,
            };
            if let Err(e) = self.journal_write(call, address, op, &reason).await {
                self.store.discard(address);
                return Err(NotServed::new(e, via));
            }
        }
        Ok(Served {
            value: Deleted {
                address: address.without_temporal(),
                id: tombstone.id,
                deleted_at: tombstone.created_at,
            },
            via: Via { journaled, ..via },
        })
    }

    /// A read served locally (stale).
    pub(super) fn get(&self, address: &Address, reason: Reason) -> Outcome<Envelope> {
        let via = Via {
            stale: true,
            ..Via::fallback(reason.attempts())
        };
        match self.store.lookup(address) {
            Lookup::Found(n, v) => {
                self.enter(reason.label);
                Ok(Served {
                    value: Envelope::new(address, n, &v),
                    via,
                })
            }
            Lookup::Missing => Err(NotServed::new(
                BackendError::NotFound {
                    address: address.to_string(),
                },
                via,
            )),
            Lookup::NotHeld => Err(NotServed::new(
                BackendError::NotCached {
                    address: address.to_string(),
                    cause: reason.cause,
                },
                via,
            )),
        }
    }

    /// A history served locally (stale).
    pub(super) fn history(&self, address: &Address, reason: Reason) -> Outcome<History> {
        let via = Via {
            stale: true,
            ..Via::fallback(reason.attempts())
        };
        match self.store.full_history(address) {
            Some(versions) if versions.is_empty() => Err(NotServed::new(
                BackendError::NotFound {
                    address: address.to_string(),
                },
                via,
            )),
            Some(versions) => {
                self.enter(reason.label);
                Ok(Served {
                    value: History {
                        address: address.without_temporal(),
                        versions,
                    },
                    via,
                })
            }
            None => Err(NotServed::new(
                BackendError::NotCached {
                    address: address.to_string(),
                    cause: reason.cause,
                },
                via,
            )),
        }
    }

    /// A search served locally: partial, every endpoint named as failed.
    pub(super) async fn search(
        &self,
        call: &Call,
        query: &SearchQuery,
        reason: Reason,
    ) -> Outcome<SearchPage> {
        let via = Via {
            stale: true,
            ..Via::fallback(reason.attempts())
        };
        self.enter(reason.label);
        let (items, next_cursor) = self
            .store
            .search_page(call.deadline, query)
            .await
            .map_err(|e| NotServed::new(e, via.clone()))?;
        metrics::counter!("rustle_search_partial_total").increment(1);
        let failed_endpoints = self
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
            via,
        })
    }
}
