//! The replication protocol, [`REPLICATE_PROTOCOL`]: a write pushed to the connected
//! peers closest to its key; records queued per peer and sent in pushes bounded in
//! records and bytes; the answers to our pushes; and pushes from peers, merged and answered
//! once durable, refused at once (busy) past the inbound byte cap.

use std::time::Duration;

use futures::future::BoxFuture;
use libp2p::kad::{KBucketKey, RecordKey};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ReplicateError;
use super::network::Network;
use super::quorum::{self, WriteReply};
use crate::store::{self, DhtKey, NodeStore};

/// The replication protocol: a push of one record, answered once it is durable.
pub const REPLICATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/bzzz/replicate/1.0.0");
/// Most records one push carries.
const PUSH_RECORDS: usize = 256;
/// Replication streams one connection carries at once, each way.
pub(super) const REPLICATION_STREAMS: usize = 256;
/// Bytes of inbound pushes a node merges at once, at least (4 × the largest record, when
/// that is more).
const INBOUND_MIN_CAP: usize = 64 << 20;
/// Bytes of one catch-up push, at most (a single larger record still goes, alone).
const CATCH_UP_PUSH_BYTES: usize = 1 << 20;
/// How long a push may wait for its answer.
pub(super) const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// A push of [`REPLICATE_PROTOCOL`]: records, each the JSON of a [`store::DhtValue`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Push {
    /// The records.
    pub records: Vec<Box<RawValue>>,
}

/// The answer to a [`Push`], once every record is settled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pushed {
    /// Per record, in order: true once merged and on disk, false when refused.
    pub stored: Vec<bool>,
    /// True when the receiver had too much in flight and took none of it: send it again
    /// later.
    #[serde(default)]
    pub busy: bool,
}

/// An inbound push being merged: where its answer goes, the outcome, and its size.
pub(super) type Merging = BoxFuture<'static, (ResponseChannel<Pushed>, Vec<bool>, usize)>;

/// What a push carried, per record: the write it belongs to (none for catch-up), and key.
pub(super) type PushedItem = (Option<u64>, DhtKey);

/// How one record of a push of ours ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// The peer merged it and it is on the peer's disk.
    Stored,
    /// The peer refused it (it does not decode, is too large, ...): sent again, it would be
    /// refused again.
    Refused,
    /// The peer was busy or did not answer: it may take the record later.
    Missed,
}

impl Delivery {
    /// How record `i` of a push ended, given the answer's `stored` (empty when the push
    /// failed) and `again` (the peer was busy or did not answer).
    fn of(stored: &[bool], i: usize, again: bool) -> Self {
        match stored.get(i) {
            Some(true) => Self::Stored,
            _ if again => Self::Missed,
            _ => Self::Refused,
        }
    }
}

/// A record queued for a peer: for a write being replicated, or for catch-up (`None`).
pub(super) struct Outgoing {
    pub(super) write: Option<u64>,
    pub(super) key: DhtKey,
    pub(super) record: Box<RawValue>,
}

/// One push to send: its records and, per record, what it carried.
#[derive(Debug, Default)]
struct Batch {
    records: Vec<Box<RawValue>>,
    items: Vec<PushedItem>,
}

/// Splits what is queued for a peer into pushes: live writes first, in pushes of at most
/// [`PUSH_RECORDS`] records and `push_bytes` bytes, then catch-up records in pushes of
/// their own (at most [`CATCH_UP_PUSH_BYTES`]), so a write's acknowledgement never
/// waits for a catch-up's merge. A record larger than the limit goes alone.
fn batches(queued: Vec<Outgoing>, push_bytes: usize) -> Vec<Batch> {
    let (live, catch_up): (Vec<Outgoing>, Vec<Outgoing>) =
        queued.into_iter().partition(|o| o.write.is_some());
    let mut batches = Vec::new();
    chunk(live, push_bytes, &mut batches);
    chunk(catch_up, push_bytes.min(CATCH_UP_PUSH_BYTES), &mut batches);
    batches
}

/// Appends `queued` to `batches` in pushes of at most [`PUSH_RECORDS`] records and
/// `max_bytes` bytes, in order.
fn chunk(queued: Vec<Outgoing>, max_bytes: usize, batches: &mut Vec<Batch>) {
    let mut batch = Batch::default();
    let mut bytes = 0;
    for out in queued {
        let size = out.record.get().len();
        if !batch.records.is_empty()
            && (batch.records.len() == PUSH_RECORDS || bytes + size > max_bytes)
        {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.records.push(out.record);
        batch.items.push((out.write, out.key));
    }
    if !batch.records.is_empty() {
        batches.push(batch);
    }
}

/// The peers closest to `key` by Kademlia distance, nearest first, at most `n`.
fn closest(peers: impl Iterator<Item = PeerId>, key: &RecordKey, n: usize) -> Vec<PeerId> {
    let target = KBucketKey::new(key.clone());
    let mut peers: Vec<PeerId> = peers.collect();
    peers.sort_by_key(|p| KBucketKey::from(*p).distance(&target));
    peers.truncate(n);
    peers
}

/// Bytes of inbound pushes being merged, and how many may be at once.
#[derive(Debug)]
pub(super) struct InboundBudget {
    bytes: usize,
    cap: usize,
}

impl InboundBudget {
    /// The budget of a node whose records are at most `max_record_bytes`: 4 × that, at
    /// least [`INBOUND_MIN_CAP`].
    pub(super) fn new(max_record_bytes: usize) -> Self {
        Self {
            bytes: 0,
            cap: max_record_bytes.saturating_mul(4).max(INBOUND_MIN_CAP),
        }
    }

    /// Takes `size` bytes for a push, unless too much is being merged already. A push
    /// arriving when nothing is being merged is always taken, however large.
    fn try_take(&mut self, size: usize) -> bool {
        if self.bytes > 0 && self.bytes.saturating_add(size) > self.cap {
            return false;
        }
        self.bytes += size;
        true
    }

    /// A push of `size` bytes taken earlier has been merged.
    pub(super) fn release(&mut self, size: usize) {
        self.bytes = self.bytes.saturating_sub(size);
    }
}

/// Merges the records of a push from `peer` into `store`. The future (which does not
/// borrow the store) resolves once every merge is durable or refused: per record, in
/// order, whether it is now on disk.
fn merge_push(
    store: &NodeStore,
    peer: PeerId,
    push: &Push,
) -> impl Future<Output = Vec<bool>> + Send + use<> {
    let merges: Vec<_> = push
        .records
        .iter()
        .map(|record| {
            let merging = store::decode(record.get().as_bytes())
                .map(|value| store.merge(&value.address, value.set));
            async move {
                match merging {
                    Ok(merging) => merging.await,
                    Err(e) => Err(e),
                }
            }
        })
        .collect();
    async move {
        futures::future::join_all(merges)
            .await
            .into_iter()
            .map(|merged| match merged {
                Ok(changed) => {
                    if changed {
                        tracing::debug!(%peer, "merged a replica from a peer");
                    }
                    true
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "refused a record from a peer");
                    metrics::counter!("bzzz_records_refused_total").increment(1);
                    false
                }
            })
            .collect()
    }
}

impl Network {
    /// The connected peers closest to `key`, at most `n`.
    fn closest_connected(&self, key: &RecordKey, n: usize) -> Vec<PeerId> {
        closest(self.swarm.connected_peers().copied(), key, n)
    }

    /// Pushes a write to the closest connected peers; `reply` hears once a majority stored
    /// it, or that it did not.
    pub(super) fn replicate(&mut self, key: DhtKey, value: &RawValue, reply: WriteReply) {
        let record_key = RecordKey::new(&key);
        let targets =
            self.closest_connected(&record_key, self.replication_factor.saturating_sub(1));
        let need = quorum::peers_needed(self.replication_factor);
        if need == 0 {
            let _ = reply.send(Ok(0));
            return;
        }
        if targets.len() < need {
            let _ = reply.send(Err(ReplicateError::NotEnoughPeers {
                have: targets.len(),
                need,
            }));
            return;
        }
        // One push per target, so every target's outcome is known: a target that
        // misses the write gets it again through catch-up.
        let write = self.writes.start(need, targets.len(), reply);
        for peer in &targets {
            self.outbox.entry(*peer).or_default().push(Outgoing {
                write: Some(write),
                key,
                record: value.to_owned(),
            });
        }
    }

    /// Sends what is queued for each peer (see [`batches`]).
    pub(super) fn flush(&mut self) {
        for (peer, queued) in std::mem::take(&mut self.outbox) {
            for batch in batches(queued, self.push_bytes) {
                self.send_push(peer, batch);
            }
        }
    }

    fn send_push(&mut self, peer: PeerId, batch: Batch) {
        let Batch { records, items } = batch;
        let id = self
            .swarm
            .behaviour_mut()
            .replicate
            .send_request(&peer, Push { records });
        self.puts.insert(id, (peer, items));
    }

    pub(super) fn replication(&mut self, event: request_response::Event<Push, Pushed>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.pushed_to_us(peer, &request, channel),
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.push_answered(request_id, &response.stored, response.busy),
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "a push failed");
                self.push_answered(request_id, &[], true);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "a push from a peer failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// A peer pushed records: merge them, answer once every merge is durable (or refused).
    fn pushed_to_us(&mut self, peer: PeerId, push: &Push, channel: ResponseChannel<Pushed>) {
        let size: usize = push.records.iter().map(|r| r.get().len()).sum();
        if !self.inbound.try_take(size) {
            // Too much is being merged already (a slow disk): refuse at once rather than
            // queue without bound; the pusher sends it again later.
            metrics::counter!("bzzz_pushes_busy_total").increment(1);
            let _ = self.swarm.behaviour_mut().replicate.send_response(
                channel,
                Pushed {
                    stored: vec![false; push.records.len()],
                    busy: true,
                },
            );
            return;
        }
        let merging = merge_push(&self.store, peer, push);
        self.merges
            .push(Box::pin(async move { (channel, merging.await, size) }));
    }

    /// A push of ours was answered (`stored` per record) or failed (empty: none stored).
    /// `again`: the peer was busy or did not answer, so what it did not store may be sent
    /// again.
    fn push_answered(&mut self, id: OutboundRequestId, stored: &[bool], again: bool) {
        let Some((peer, items)) = self.puts.remove(&id) else {
            return;
        };
        for (i, (write, key)) in items.into_iter().enumerate() {
            let delivery = Delivery::of(stored, i, again);
            if let Some(write) = write {
                if delivery != Delivery::Stored {
                    // The peer missed it: it gets the record again through catch-up.
                    self.catch_up.push((peer, key));
                }
                self.writes.push_ended(write, delivery == Delivery::Stored);
            } else {
                let connected = self.swarm.is_connected(&peer);
                self.catch_up.settled(peer, key, delivery, connected);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use ucxl::{Address, EnvelopeId, NewVersion, VersionSet};

    use super::*;
    use crate::store::{DhtValue, StoreSettings};

    /// A record of exactly `bytes` bytes (a JSON string), for write `write` or catch-up.
    fn out(write: Option<u64>, n: u8, bytes: usize) -> Outgoing {
        let json = format!("\"{}\"", "x".repeat(bytes.saturating_sub(2)));
        Outgoing {
            write,
            key: [n; 32],
            record: RawValue::from_string(json).expect("a JSON string"),
        }
    }

    /// Per push, per record: (write, first key byte, size).
    fn shape(batches: &[Batch]) -> Vec<Vec<(Option<u64>, u8, usize)>> {
        batches
            .iter()
            .map(|b| {
                assert_eq!(b.records.len(), b.items.len());
                b.items
                    .iter()
                    .zip(&b.records)
                    .map(|((write, key), record)| (*write, key[0], record.get().len()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn live_writes_leave_first_in_pushes_of_their_own_and_order_is_kept() {
        let queued = vec![
            out(None, 1, 10),
            out(Some(7), 2, 10),
            out(None, 3, 10),
            out(Some(8), 4, 10),
        ];
        assert_eq!(
            shape(&batches(queued, 1 << 20)),
            [
                vec![(Some(7), 2, 10), (Some(8), 4, 10)],
                vec![(None, 1, 10), (None, 3, 10)],
            ]
        );
        assert!(
            batches(Vec::new(), 1 << 20).is_empty(),
            "nothing queued, no push"
        );
    }

    #[test]
    fn pushes_are_cut_at_the_byte_limit_and_a_larger_record_goes_alone() {
        let queued = vec![
            out(Some(1), 1, 40),
            out(Some(1), 2, 60),
            out(Some(1), 3, 2),
            out(Some(1), 4, 150),
            out(Some(1), 5, 30),
        ];
        let sizes: Vec<Vec<usize>> = shape(&batches(queued, 100))
            .into_iter()
            .map(|push| push.into_iter().map(|(_, _, size)| size).collect())
            .collect();
        assert_eq!(sizes, [vec![40, 60], vec![2], vec![150], vec![30]]);
    }

    #[test]
    fn a_push_carries_at_most_a_bounded_number_of_records() {
        let queued = (0..600).map(|i| out(Some(i), 0, 2)).collect();
        let counts: Vec<usize> = batches(queued, usize::MAX)
            .iter()
            .map(|b| b.records.len())
            .collect();
        assert_eq!(counts, [PUSH_RECORDS, PUSH_RECORDS, 600 - 2 * PUSH_RECORDS]);
    }

    #[test]
    fn catch_up_pushes_stay_small_when_records_may_be_large() {
        let record = 600 << 10;
        let mut queued: Vec<Outgoing> = (0..3).map(|n| out(None, n, record)).collect();
        queued.extend((0..3).map(|n| out(Some(1), n, record)));
        let counts: Vec<(bool, usize)> = batches(queued, 4 << 20)
            .iter()
            .map(|b| (b.items[0].0.is_some(), b.records.len()))
            .collect();
        // Three live records fit one push of 4 MiB; catch-up pushes stop at 1 MiB.
        assert_eq!(counts, [(true, 3), (false, 1), (false, 1), (false, 1)]);
        // A node whose pushes are smaller than that keeps its own limit for both.
        let queued = (0..4).map(|n| out(None, n, 40)).collect();
        assert_eq!(batches(queued, 100).len(), 2);
    }

    #[test]
    fn a_write_goes_to_the_peers_nearest_its_key() {
        let peers: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
        let key = RecordKey::new(&[7u8; 32]);
        let target = KBucketKey::new(key.clone());
        let distance = |p: &PeerId| KBucketKey::from(*p).distance(&target);
        let chosen = closest(peers.iter().copied(), &key, 4);
        assert_eq!(chosen.len(), 4);
        assert!(
            chosen
                .windows(2)
                .all(|w| distance(&w[0]) <= distance(&w[1])),
            "nearest first"
        );
        let farthest_chosen = distance(&chosen[3]);
        for peer in peers.iter().filter(|p| !chosen.contains(p)) {
            assert!(
                distance(peer) >= farthest_chosen,
                "a nearer peer was left out"
            );
        }
        assert_eq!(closest(peers.iter().copied().take(2), &key, 4).len(), 2);
    }

    #[test]
    fn inbound_pushes_are_refused_past_the_cap_until_merges_settle() {
        let mut budget = InboundBudget::new(1024);
        assert_eq!(budget.cap, INBOUND_MIN_CAP, "the floor");
        assert_eq!(
            InboundBudget::new(32 << 20).cap,
            128 << 20,
            "4 × the largest record"
        );
        assert!(budget.try_take(INBOUND_MIN_CAP - 10));
        assert!(budget.try_take(10), "exactly the cap");
        assert!(!budget.try_take(1), "past the cap");
        budget.release(10);
        assert!(!budget.try_take(11));
        assert!(budget.try_take(10));
    }

    #[test]
    fn a_push_larger_than_the_cap_is_taken_when_nothing_else_is_merging() {
        let mut budget = InboundBudget::new(1024);
        assert!(budget.try_take(INBOUND_MIN_CAP * 2));
        assert!(!budget.try_take(1));
        budget.release(INBOUND_MIN_CAP * 2);
        assert!(budget.try_take(1));
    }

    fn replica(address: &str, id: &str) -> (Address, Box<RawValue>) {
        let address = Address::parse(address).expect("an address");
        let mut set = VersionSet::default();
        set.put(
            NewVersion::json(EnvelopeId::parse(id).expect("an id"), serde_json::json!(id)),
            Utc::now(),
        )
        .expect("a version");
        let value = DhtValue {
            address: address.clone(),
            set,
        };
        (
            address,
            serde_json::value::to_raw_value(&value).expect("encodes"),
        )
    }

    #[tokio::test]
    async fn a_push_to_us_answers_per_record_in_order_once_merged() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = NodeStore::open(dir.path(), StoreSettings::new(1 << 20)).expect("a store");
        let (a, first) = replica("ucxl://a:r@p:t/one", "1");
        let (b, second) = replica("ucxl://a:r@p:t/two", "2");
        let (_, temporal) = replica("ucxl://a:r@p:t/~~1/three", "3");
        let push = Push {
            records: vec![
                first,
                RawValue::from_string("\"not a record\"".into()).expect("JSON"),
                second,
                temporal,
            ],
        };
        let stored = merge_push(&store, PeerId::random(), &push).await;
        assert_eq!(stored, [true, false, true, false]);
        assert!(store.get(&a).is_some() && store.get(&b).is_some());
        assert_eq!(store.len(), 2);
        // The same push again: nothing new, still stored.
        assert_eq!(
            merge_push(&store, PeerId::random(), &push).await,
            [true, false, true, false]
        );
    }

    #[test]
    fn the_wire_format_of_pushes_and_answers() {
        let push = Push {
            records: vec![RawValue::from_string(r#"{"a":1}"#.into()).expect("JSON")],
        };
        assert_eq!(
            serde_json::to_string(&push).expect("encodes"),
            r#"{"records":[{"a":1}]}"#
        );
        let answer: Pushed = serde_json::from_str(r#"{"stored":[true,false]}"#).expect("decodes");
        assert_eq!(
            (answer.stored, answer.busy),
            (vec![true, false], false),
            "an answer without busy is not busy"
        );
        let busy: Pushed =
            serde_json::from_str(r#"{"stored":[false],"busy":true}"#).expect("decodes");
        assert!(busy.busy);
    }

    #[test]
    fn a_record_is_stored_only_when_the_answer_says_so() {
        let answer = [true, false];
        let delivered: Vec<Delivery> = (0..3).map(|i| Delivery::of(&answer, i, false)).collect();
        assert_eq!(
            delivered,
            [Delivery::Stored, Delivery::Refused, Delivery::Refused],
            "a record the answer leaves out was not stored"
        );
        let busy: Vec<Delivery> = (0..2)
            .map(|i| Delivery::of(&[false, false], i, true))
            .collect();
        assert_eq!(busy, [Delivery::Missed, Delivery::Missed]);
        assert_eq!(
            Delivery::of(&[], 0, true),
            Delivery::Missed,
            "a failed push"
        );
    }
}
