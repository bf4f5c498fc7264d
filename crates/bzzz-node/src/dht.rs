//! The Kademlia record store of a node: its [`NodeStore`], so records a peer puts are
//! merged (set union) and committed to disk *before* Kademlia acknowledges them. An
//! acknowledgement therefore means a durable copy, which is what the write quorum counts.

use std::borrow::Cow;
use std::sync::Arc;

use libp2p::PeerId;
use libp2p::kad::store::{self, MemoryStore, RecordStore};
use libp2p::kad::{ProviderRecord, Record, RecordKey};

use crate::store::NodeStore;

/// Kademlia's view of the node store. Provider records (unused by BZZZ) live in memory.
pub struct DhtStore {
    store: Arc<NodeStore>,
    providers: MemoryStore,
}

impl std::fmt::Debug for DhtStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtStore")
            .field("records", &self.store.len())
            .finish_non_exhaustive()
    }
}

fn owned<'a>(record: Record) -> Cow<'a, Record> {
    Cow::Owned(record)
}

impl DhtStore {
    /// A record store over `store`.
    #[must_use]
    pub fn new(local: PeerId, store: Arc<NodeStore>) -> Self {
        Self {
            store,
            providers: MemoryStore::new(local),
        }
    }
}

impl RecordStore for DhtStore {
    type RecordsIter<'a> =
        std::iter::Map<std::vec::IntoIter<Record>, fn(Record) -> Cow<'a, Record>>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.store
            .dht_value(k.as_ref())
            .map(|value| Cow::Owned(Record::new(k.clone(), value)))
    }

    fn put(&mut self, r: Record) -> store::Result<()> {
        match self.store.merge_dht(r.key.as_ref(), &r.value) {
            Ok(changed) => {
                if changed {
                    tracing::debug!(key = %hex::encode(r.key.as_ref()), "merged a replica from a peer");
                }
                Ok(())
            }
            Err(e) => {
                // Kademlia has no richer error: the peer sees a reset, the log has why.
                tracing::warn!(error = %e, "refused a record from a peer");
                metrics::counter!("bzzz_records_refused_total").increment(1);
                Err(store::Error::ValueTooLarge)
            }
        }
    }

    fn remove(&mut self, _k: &RecordKey) {
        // Version sets only grow (deletes are tombstones); nothing is ever removed.
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        let records: Vec<Record> = self
            .store
            .dht_records()
            .into_iter()
            .map(|(key, value)| Record::new(RecordKey::new(&key), value))
            .collect();
        records.into_iter().map(owned)
    }

    fn add_provider(&mut self, record: ProviderRecord) -> store::Result<()> {
        self.providers.add_provider(record)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.providers.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.providers.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.providers.remove_provider(k, p);
    }
}
