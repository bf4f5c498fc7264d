//! The Kademlia record store of a node: a view of its [`NodeStore`], so DHT lookups find
//! every record the node holds.
//!
//! Writes do not travel through Kademlia: its store interface is synchronous and it
//! acknowledges a put as soon as the store returns, so a durable acknowledgement would mean
//! one disk flush per record on the network task. Writes are pushed with the replication
//! protocol of [`crate::p2p`] instead, acknowledged once group-committed. Kademlia puts
//! that arrive anyway (from other implementations) are filtered and merged by the network
//! task without an acknowledgement of durability.

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
        // Only reached for a local `put_record`, which the node does not use (inbound puts
        // are filtered): the merge is queued, not awaited.
        match self.store.merge_dht(r.key.as_ref(), &r.value) {
            Ok(merging) => {
                drop(merging);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused a record");
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
