//! The mock backend: the local store as the one and only copy, with the semantics of a
//! BZZZ node (temporal navigation, tombstones, idempotent ids, pattern search). It is the
//! embedded default, for offline development and tests.
//!
//! Its writes are kept on disk before they are answered (the durable store) unless the
//! store is configured to live in memory only (`RUSTLE_LOCAL_STORE=memory`).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use ucxl::{Address, Envelope, EnvelopeId, History, NewVersion, PutOutcome};

use super::{
    Backend, BackendError, BackendKind, BackendStatus, Call, Deleted, FallbackStatus,
    JournalStatus, NotServed, Outcome, SearchPage, SearchQuery, Served, Via, Written,
};
use crate::store::durable::DurableStore;
use crate::store::local::{LocalStore, Retention};

/// The local store, serving as the backend.
#[derive(Debug, Clone)]
pub struct MockBackend {
    store: Arc<LocalStore>,
    /// Where writes are made durable; `None` when the store lives in memory only.
    durable: Option<Arc<DurableStore>>,
}

impl MockBackend {
    /// A mock backend over `store`, kept in memory only.
    #[must_use]
    pub fn new(store: Arc<LocalStore>) -> Self {
        Self {
            store,
            durable: None,
        }
    }

    /// A mock backend whose writes `durable` keeps on disk (reads come from its store).
    #[must_use]
    pub fn durable(durable: Arc<DurableStore>) -> Self {
        Self {
            store: Arc::clone(durable.store()),
            durable: Some(durable),
        }
    }

    fn served<T>(value: T) -> Served<T> {
        Served {
            value,
            via: Via::local(BackendKind::Mock),
        }
    }

    fn not_served(error: impl Into<BackendError>) -> NotServed {
        NotServed::new(error, Via::local(BackendKind::Mock))
    }
}

#[async_trait]
impl Backend for MockBackend {
    async fn put(&self, _call: &Call, address: &Address, new: NewVersion) -> Outcome<Written> {
        let outcome = match &self.durable {
            Some(durable) => durable.put(address, new, Utc::now()).await,
            None => self
                .store
                .put(address, new, Retention::Owned, Utc::now())
                .map_err(Into::into),
        }
        .map_err(Self::not_served)?;
        let created = matches!(outcome, PutOutcome::Created { .. });
        let (version, stored) = outcome.parts();
        Ok(Self::served(Written {
            envelope: Envelope::new(address, version, stored),
            created,
        }))
    }

    async fn get(&self, _call: &Call, address: &Address) -> Outcome<Envelope> {
        let (version, stored) = self.store.get(address).ok_or_else(|| {
            Self::not_served(BackendError::NotFound {
                address: address.to_string(),
            })
        })?;
        Ok(Self::served(Envelope::new(address, version, &stored)))
    }

    async fn delete(&self, _call: &Call, address: &Address, id: EnvelopeId) -> Outcome<Deleted> {
        let outcome = match &self.durable {
            Some(durable) => durable.delete(address, id, Utc::now()).await,
            None => self
                .store
                .delete(address, id, Retention::Owned, Utc::now())
                .map_err(Into::into),
        }
        .map_err(Self::not_served)?;
        let tombstone = outcome.tombstone();
        Ok(Self::served(Deleted {
            address: address.without_temporal(),
            id: tombstone.id.clone(),
            deleted_at: tombstone.created_at,
        }))
    }

    async fn history(&self, _call: &Call, address: &Address) -> Outcome<History> {
        let versions = self.store.history(address);
        if versions.is_empty() {
            return Err(Self::not_served(BackendError::NotFound {
                address: address.to_string(),
            }));
        }
        Ok(Self::served(History {
            address: address.without_temporal(),
            versions,
        }))
    }

    async fn search(&self, call: &Call, query: &SearchQuery) -> Outcome<SearchPage> {
        let (items, next_cursor) = self
            .store
            .search_page(call.deadline, query)
            .await
            .map_err(Self::not_served)?;
        Ok(Self::served(SearchPage {
            items,
            next_cursor,
            partial: false,
            failed_endpoints: Vec::new(),
        }))
    }

    fn ready(&self) -> bool {
        true
    }

    fn status(&self) -> BackendStatus {
        BackendStatus {
            active_backend: BackendKind::Mock,
            fallback: FallbackStatus {
                active: false,
                since: None,
            },
            journal: JournalStatus { pending: 0 },
            endpoints: Vec::new(),
            local_store: self.store.status(),
        }
    }
}
