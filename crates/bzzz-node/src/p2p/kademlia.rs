//! Kademlia in the network task: lookups of records (every replica's value is collected,
//! so the caller merges them all) and puts from peers, which are merged without an
//! acknowledgement of durability.

use libp2p::PeerId;
use libp2p::kad::{self, GetRecordOk, PeerRecord, QueryId, QueryResult, RecordKey};
use tokio::sync::oneshot;

use super::network::Network;
use crate::dht::DhtStore;
use crate::store::DhtKey;

/// A DHT lookup: where the answer goes and the replicas found so far.
pub(super) type PendingFetch = (oneshot::Sender<Vec<Vec<u8>>>, Vec<Vec<u8>>);

impl Network {
    pub(super) fn kad(&mut self) -> &mut kad::Behaviour<DhtStore> {
        &mut self.swarm.behaviour_mut().kad
    }

    /// Starts a lookup of `key`; `reply` hears every replica's value found.
    pub(super) fn fetch(&mut self, key: DhtKey, reply: oneshot::Sender<Vec<Vec<u8>>>) {
        let id = self.kad().get_record(RecordKey::new(&key));
        self.gets.insert(id, (reply, Vec::new()));
    }

    /// A Kademlia put from a peer. Not part of BZZZ replication (which has its own
    /// protocol): merged, but Kademlia has already answered.
    pub(super) fn kad_put(&self, source: PeerId, record: &kad::Record) {
        match self.store.merge_dht(record.key.as_ref(), &record.value) {
            Ok(merging) => drop(merging),
            Err(e) => {
                tracing::warn!(peer = %source, error = %e, "refused a Kademlia record");
                metrics::counter!("bzzz_records_refused_total").increment(1);
            }
        }
    }

    pub(super) fn query_progressed(&mut self, id: QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::Bootstrap(_) if last && self.bootstrapping == Some(id) => {
                self.bootstrapping = None;
            }
            QueryResult::GetRecord(outcome) => {
                let Some((_, found)) = self.gets.get_mut(&id) else {
                    return;
                };
                if let Ok(GetRecordOk::FoundRecord(PeerRecord { record, .. })) = outcome {
                    found.push(record.value);
                }
                // Every replica answered (or the query ended): the caller merges them all,
                // not just the first, so a partial replica cannot hide versions.
                let enough = found.len() >= self.replication_factor;
                if (last || enough)
                    && let Some((reply, found)) = self.gets.remove(&id)
                {
                    let _ = reply.send(found);
                    if let Some(mut query) = self.kad().query_mut(&id) {
                        query.finish();
                    }
                }
            }
            _ => {}
        }
    }
}
