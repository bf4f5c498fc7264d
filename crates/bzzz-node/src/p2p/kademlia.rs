//! Kademlia in the network task: lookups of records (every replica's value is collected,
//! so the caller merges them all) and puts from peers, which are merged without an
//! acknowledgement of durability.

use libp2p::PeerId;
use libp2p::kad::{self, GetRecordOk, PeerRecord, QueryId, QueryResult, RecordKey};
use tokio::sync::oneshot;

use super::network::Network;
use crate::dht::DhtStore;
use crate::store::{DhtKey, NodeStore, StoreError};

/// A DHT lookup: where the answer goes and the replicas' values found so far.
pub(super) struct Lookup {
    reply: oneshot::Sender<Vec<Vec<u8>>>,
    found: Vec<Vec<u8>>,
}

impl Lookup {
    fn new(reply: oneshot::Sender<Vec<Vec<u8>>>) -> Self {
        Self {
            reply,
            found: Vec::new(),
        }
    }

    /// One step of the query: the value a replica returned, if any, and whether the query
    /// has ended. True once the lookup is complete: `replicas` values found, or the query
    /// ended with fewer. The caller merges them all, not just the first, so a partial
    /// replica cannot hide versions.
    fn step(&mut self, value: Option<Vec<u8>>, last: bool, replicas: usize) -> bool {
        self.found.extend(value);
        last || self.found.len() >= replicas
    }

    /// Sends what was found to whoever asked (who may have stopped waiting).
    fn answer(self) {
        let _ = self.reply.send(self.found);
    }
}

/// Merges a Kademlia put from a peer. Not part of BZZZ replication (which has its own
/// protocol): Kademlia has already answered, so the merge is queued and the network task
/// does not wait for it; the returned future resolves once it is durable.
fn merge_put(
    store: &NodeStore,
    source: PeerId,
    record: &kad::Record,
) -> Option<impl Future<Output = Result<bool, StoreError>> + Send + use<>> {
    match store.merge_dht(record.key.as_ref(), &record.value) {
        Ok(merging) => Some(merging),
        Err(e) => {
            tracing::warn!(peer = %source, error = %e, "refused a Kademlia record");
            metrics::counter!("bzzz_records_refused_total").increment(1);
            None
        }
    }
}

impl Network {
    pub(super) fn kad(&mut self) -> &mut kad::Behaviour<DhtStore> {
        &mut self.swarm.behaviour_mut().kad
    }

    /// Starts a lookup of `key`; `reply` hears every replica's value found.
    pub(super) fn fetch(&mut self, key: DhtKey, reply: oneshot::Sender<Vec<Vec<u8>>>) {
        let id = self.kad().get_record(RecordKey::new(&key));
        self.gets.insert(id, Lookup::new(reply));
    }

    /// A Kademlia put from a peer: merged, not awaited.
    pub(super) fn kad_put(&self, source: PeerId, record: &kad::Record) {
        drop(merge_put(&self.store, source, record));
    }

    pub(super) fn query_progressed(&mut self, id: QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::Bootstrap(_) if last && self.bootstrapping == Some(id) => {
                self.bootstrapping = None;
            }
            QueryResult::GetRecord(outcome) => {
                let Some(lookup) = self.gets.get_mut(&id) else {
                    return;
                };
                let value = match outcome {
                    Ok(GetRecordOk::FoundRecord(PeerRecord { record, .. })) => Some(record.value),
                    _ => None,
                };
                if lookup.step(value, last, self.replication_factor)
                    && let Some(lookup) = self.gets.remove(&id)
                {
                    lookup.answer();
                    if let Some(mut query) = self.kad().query_mut(&id) {
                        query.finish();
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use ucxl::{Address, EnvelopeId, NewVersion};

    use super::*;
    use crate::store::{StoreSettings, dht_key};

    fn lookup() -> (Lookup, oneshot::Receiver<Vec<Vec<u8>>>) {
        let (reply, answer) = oneshot::channel();
        (Lookup::new(reply), answer)
    }

    #[test]
    fn a_lookup_is_complete_once_every_replica_answered() {
        let (mut lookup, mut answer) = lookup();
        assert!(!lookup.step(Some(b"a".to_vec()), false, 3));
        assert!(
            !lookup.step(None, false, 3),
            "a step without a value does not count"
        );
        assert!(!lookup.step(Some(b"b".to_vec()), false, 3));
        assert!(lookup.step(Some(b"c".to_vec()), false, 3));
        lookup.answer();
        assert_eq!(
            answer.try_recv(),
            Ok(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]),
            "every replica's value, not just the first"
        );
    }

    #[test]
    fn a_lookup_that_ends_early_answers_with_what_it_found() {
        let (mut lookup, mut answer) = lookup();
        assert!(!lookup.step(Some(b"a".to_vec()), false, 3));
        assert!(lookup.step(None, true, 3));
        lookup.answer();
        assert_eq!(answer.try_recv(), Ok(vec![b"a".to_vec()]));

        let (mut lookup, mut answer) = self::lookup();
        assert!(lookup.step(None, true, 3));
        lookup.answer();
        assert_eq!(answer.try_recv(), Ok(Vec::new()), "nothing found");
    }

    #[tokio::test]
    async fn a_kademlia_put_from_a_peer_is_merged_and_a_bad_one_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let source = NodeStore::open(&dir.path().join("source"), StoreSettings::new(1 << 20))
            .expect("a store");
        let store = NodeStore::open(&dir.path().join("store"), StoreSettings::new(1 << 20))
            .expect("a store");
        let a = Address::parse("ucxl://a:r@p:t/x").expect("an address");
        let id = EnvelopeId::parse("1").expect("an id");
        source
            .put(&a, NewVersion::json(id, serde_json::json!(1)), Utc::now())
            .await
            .expect("stored");
        let key = dht_key(&a);
        let value = source.dht_value(&key).expect("held");
        let peer = PeerId::random();

        let elsewhere = dht_key(&Address::parse("ucxl://a:r@p:t/y").expect("an address"));
        let wrong_key = kad::Record::new(RecordKey::new(&elsewhere), value.clone());
        assert!(merge_put(&store, peer, &wrong_key).is_none());
        let garbage = kad::Record::new(RecordKey::new(&key), b"garbage".to_vec());
        assert!(merge_put(&store, peer, &garbage).is_none());
        assert!(store.is_empty());

        let good = kad::Record::new(RecordKey::new(&key), value);
        let merging = merge_put(&store, peer, &good).expect("accepted");
        assert!(merging.await.expect("merged"), "something new");
        assert_eq!(store.get(&a).map(|r| r.set.len()), Some(1));
    }
}
