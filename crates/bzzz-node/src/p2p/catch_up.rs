//! Catch-up: every record this node holds is queued for a peer that connects, so records
//! written while it was away reach it; the queue is pumped into pushes a bounded number at
//! a time, so live writes are not queued behind a catch-up.

use std::collections::{HashSet, VecDeque};

use libp2p::PeerId;
use serde_json::value::RawValue;

use super::network::Network;
use super::replication::{Delivery, Outgoing};
use crate::store::{self, DhtKey};

/// Catch-up records in flight at once, over all peers (so live writes are not queued
/// behind a catch-up).
const CATCH_UP_IN_FLIGHT: usize = 64;

/// Records to push to peers, in order, each (peer, key) queued at most once, and how many
/// taken for pushes are not settled yet.
#[derive(Default)]
pub(super) struct CatchUp {
    queue: VecDeque<(PeerId, DhtKey)>,
    queued: HashSet<(PeerId, DhtKey)>,
    /// Records taken for pushes whose push has not ended (at most [`CATCH_UP_IN_FLIGHT`]).
    in_flight: usize,
}

impl CatchUp {
    /// Queues a record for a peer, unless it is queued for that peer already.
    pub(super) fn push(&mut self, item: (PeerId, DhtKey)) {
        if self.queued.insert(item) {
            self.queue.push_back(item);
        }
    }

    fn pop_front(&mut self) -> Option<(PeerId, DhtKey)> {
        let item = self.queue.pop_front()?;
        self.queued.remove(&item);
        Some(item)
    }

    /// Queues every key for `peer`, replacing what was queued for it.
    pub(super) fn replace(&mut self, peer: PeerId, keys: Vec<DhtKey>) {
        self.queue.retain(|(p, _)| *p != peer);
        self.queued.retain(|(p, _)| *p != peer);
        for key in keys {
            self.push((peer, key));
        }
    }

    /// Takes the records to push now, in the order they were queued, while fewer than
    /// [`CATCH_UP_IN_FLIGHT`] are in flight. A record for a peer no longer `connected`, or
    /// one `load` no longer finds, is dropped: a peer that comes back is queued afresh.
    pub(super) fn take(
        &mut self,
        connected: impl Fn(&PeerId) -> bool,
        mut load: impl FnMut(&DhtKey) -> Option<Box<RawValue>>,
    ) -> Vec<(PeerId, DhtKey, Box<RawValue>)> {
        let mut taken = Vec::new();
        while self.in_flight < CATCH_UP_IN_FLIGHT {
            let Some((peer, key)) = self.pop_front() else {
                break;
            };
            if !connected(&peer) {
                continue;
            }
            let Some(record) = load(&key) else {
                continue;
            };
            taken.push((peer, key, record));
            self.in_flight += 1;
        }
        taken
    }

    /// The push of a record taken for `peer` ended. A record the peer missed (it was busy
    /// or did not answer) is queued again while the peer is `connected`; one it refused is
    /// not, since sending it again would be refused again.
    pub(super) fn settled(
        &mut self,
        peer: PeerId,
        key: DhtKey,
        delivery: Delivery,
        connected: bool,
    ) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if delivery != Delivery::Stored {
            tracing::debug!(%peer, ?delivery, "a catch-up record was not stored");
            if delivery == Delivery::Missed && connected {
                self.push((peer, key));
            }
        }
    }
}

impl Network {
    /// Pushes queued records to (re)connected peers, a bounded number at a time.
    pub(super) fn pump_catch_up(&mut self) {
        let (swarm, records) = (&self.swarm, &self.store);
        let taken = self.catch_up.take(
            |peer| swarm.is_connected(peer),
            |key| {
                let record = records.by_key(key)?;
                store::encode(&record).ok()
            },
        );
        for (peer, key, record) in taken {
            self.outbox.entry(peer).or_default().push(Outgoing {
                write: None,
                key,
                record,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> DhtKey {
        [n; 32]
    }

    fn record(key: &DhtKey) -> Option<Box<RawValue>> {
        RawValue::from_string(key[0].to_string()).ok()
    }

    /// Takes every record it may, for peers that are all connected and records all held.
    fn take_all(catch_up: &mut CatchUp) -> Vec<(PeerId, DhtKey)> {
        catch_up
            .take(|_| true, record)
            .into_iter()
            .map(|(peer, key, _)| (peer, key))
            .collect()
    }

    #[test]
    fn records_are_taken_in_the_order_they_were_queued() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut catch_up = CatchUp::default();
        catch_up.push((a, key(2)));
        catch_up.push((b, key(1)));
        catch_up.push((a, key(1)));
        assert_eq!(
            take_all(&mut catch_up),
            [(a, key(2)), (b, key(1)), (a, key(1))]
        );
        assert!(take_all(&mut catch_up).is_empty(), "each is taken once");
    }

    #[test]
    fn a_record_is_queued_once_per_peer() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut catch_up = CatchUp::default();
        catch_up.push((a, key(1)));
        catch_up.push((a, key(1)));
        catch_up.push((b, key(1)));
        assert_eq!(take_all(&mut catch_up), [(a, key(1)), (b, key(1))]);
        // Once taken, it may be queued again.
        catch_up.push((a, key(1)));
        assert_eq!(take_all(&mut catch_up), [(a, key(1))]);
    }

    #[test]
    fn a_new_connection_replaces_what_was_queued_for_that_peer_only() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut catch_up = CatchUp::default();
        catch_up.push((a, key(1)));
        catch_up.push((b, key(2)));
        catch_up.push((a, key(3)));
        catch_up.replace(a, vec![key(3), key(4), key(4)]);
        assert_eq!(
            take_all(&mut catch_up),
            [(b, key(2)), (a, key(3)), (a, key(4))]
        );
    }

    #[test]
    fn at_most_a_bounded_number_of_records_is_in_flight() {
        let peer = PeerId::random();
        let mut catch_up = CatchUp::default();
        let keys: Vec<DhtKey> = (0..=u8::MAX).map(key).collect();
        catch_up.replace(peer, keys.clone());
        let first = take_all(&mut catch_up);
        assert_eq!(first.len(), CATCH_UP_IN_FLIGHT);
        assert!(take_all(&mut catch_up).is_empty(), "none settled yet");
        for (peer, key) in first.into_iter().take(3) {
            catch_up.settled(peer, key, Delivery::Stored, true);
        }
        let next = take_all(&mut catch_up);
        assert_eq!(
            next,
            keys[CATCH_UP_IN_FLIGHT..CATCH_UP_IN_FLIGHT + 3]
                .iter()
                .map(|k| (peer, *k))
                .collect::<Vec<_>>(),
            "three settled, three more taken, in order"
        );
    }

    #[test]
    fn records_for_a_disconnected_peer_or_no_longer_held_are_dropped_without_counting() {
        let (gone, here) = (PeerId::random(), PeerId::random());
        let mut catch_up = CatchUp::default();
        catch_up.replace(gone, (0..100).map(key).collect());
        catch_up.push((here, key(1)));
        catch_up.push((here, key(2)));
        let taken: Vec<_> = catch_up
            .take(
                |peer| *peer == here,
                |k| if *k == key(1) { None } else { record(k) },
            )
            .into_iter()
            .map(|(peer, key, record)| (peer, key, record.get().to_owned()))
            .collect();
        assert_eq!(taken, [(here, key(2), "2".to_owned())]);
        assert_eq!(catch_up.in_flight, 1);
        assert!(take_all(&mut catch_up).is_empty(), "dropped, not kept");
    }

    #[test]
    fn a_missed_record_is_queued_again_while_its_peer_is_connected() {
        let peer = PeerId::random();
        let mut catch_up = CatchUp::default();
        for (delivery, connected, again) in [
            (Delivery::Missed, true, true),
            (Delivery::Missed, false, false),
            (Delivery::Refused, true, false),
            (Delivery::Stored, true, false),
        ] {
            catch_up.push((peer, key(1)));
            assert_eq!(take_all(&mut catch_up), [(peer, key(1))]);
            catch_up.settled(peer, key(1), delivery, connected);
            assert_eq!(catch_up.in_flight, 0, "{delivery:?} settles its record");
            let requeued = take_all(&mut catch_up);
            assert_eq!(
                !requeued.is_empty(),
                again,
                "{delivery:?}, connected {connected}"
            );
            if again {
                catch_up.settled(peer, key(1), Delivery::Stored, true);
            }
        }
    }
}
