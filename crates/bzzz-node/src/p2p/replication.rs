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
use crate::store::{self, DhtKey};

/// The replication protocol: a push of one record, answered once it is durable.
pub const REPLICATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/bzzz/replicate/1.0.0");
/// Most records one push carries.
pub(super) const PUSH_RECORDS: usize = 256;
/// Replication streams one connection carries at once, each way.
pub(super) const REPLICATION_STREAMS: usize = 256;
/// Bytes of inbound pushes a node merges at once, at least (4 × the largest record, when
/// that is more).
pub(super) const INBOUND_MIN_CAP: usize = 64 << 20;
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

impl Network {
    /// The connected peers closest to `key`, at most `n`.
    fn closest_connected(&self, key: &RecordKey, n: usize) -> Vec<PeerId> {
        let target = KBucketKey::new(key.clone());
        let mut peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        peers.sort_by_key(|p| KBucketKey::from(*p).distance(&target));
        peers.truncate(n);
        peers
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

    /// Sends what is queued for each peer: live writes first, in pushes of at most
    /// [`PUSH_RECORDS`] records and `push_bytes` bytes, then catch-up records in pushes of
    /// their own (at most [`CATCH_UP_PUSH_BYTES`]), so a write's acknowledgement never
    /// waits for a catch-up's merge.
    pub(super) fn flush(&mut self) {
        for (peer, queued) in std::mem::take(&mut self.outbox) {
            let (live, catch_up): (Vec<Outgoing>, Vec<Outgoing>) =
                queued.into_iter().partition(|o| o.write.is_some());
            self.send_chunked(peer, live, self.push_bytes);
            self.send_chunked(peer, catch_up, self.push_bytes.min(CATCH_UP_PUSH_BYTES));
        }
    }

    fn send_chunked(&mut self, peer: PeerId, queued: Vec<Outgoing>, max_bytes: usize) {
        let mut records = Vec::new();
        let mut items = Vec::new();
        let mut bytes = 0;
        for out in queued {
            let size = out.record.get().len();
            if !records.is_empty() && (records.len() == PUSH_RECORDS || bytes + size > max_bytes) {
                self.send_push(
                    peer,
                    std::mem::take(&mut records),
                    std::mem::take(&mut items),
                );
                bytes = 0;
            }
            bytes += size;
            records.push(out.record);
            items.push((out.write, out.key));
        }
        if !records.is_empty() {
            self.send_push(peer, records, items);
        }
    }

    fn send_push(&mut self, peer: PeerId, records: Vec<Box<RawValue>>, items: Vec<PushedItem>) {
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
        if self.inbound_bytes > 0 && self.inbound_bytes.saturating_add(size) > self.inbound_cap {
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
        self.inbound_bytes += size;
        let merges: Vec<_> = push
            .records
            .iter()
            .map(|record| {
                let merging = store::decode(record.get().as_bytes())
                    .map(|value| self.store.merge(&value.address, value.set));
                async move {
                    match merging {
                        Ok(merging) => merging.await,
                        Err(e) => Err(e),
                    }
                }
            })
            .collect();
        self.merges.push(Box::pin(async move {
            let stored = futures::future::join_all(merges)
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
                .collect();
            (channel, stored, size)
        }));
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
    use super::*;

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
