//! Catch-up: every record this node holds is queued for a peer that connects, so records
//! written while it was away reach it; the queue is pumped into pushes a bounded number at
//! a time, so live writes are not queued behind a catch-up.

use std::collections::{HashSet, VecDeque};

use libp2p::PeerId;

use super::network::Network;
use super::replication::Outgoing;
use crate::store::{self, DhtKey};

/// Catch-up records in flight at once, over all peers (so live writes are not queued
/// behind a catch-up).
pub(super) const CATCH_UP_IN_FLIGHT: usize = 64;

/// Records to push to peers, in order, each (peer, key) queued at most once.
#[derive(Default)]
pub(super) struct CatchUp {
    queue: VecDeque<(PeerId, DhtKey)>,
    queued: HashSet<(PeerId, DhtKey)>,
}

impl CatchUp {
    pub(super) fn push(&mut self, item: (PeerId, DhtKey)) {
        if self.queued.insert(item) {
            self.queue.push_back(item);
        }
    }

    pub(super) fn pop_front(&mut self) -> Option<(PeerId, DhtKey)> {
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
}

impl Network {
    /// Pushes queued records to (re)connected peers, a bounded number at a time.
    pub(super) fn pump_catch_up(&mut self) {
        while self.catch_up_in_flight < CATCH_UP_IN_FLIGHT {
            let Some((peer, key)) = self.catch_up.pop_front() else {
                break;
            };
            if !self.swarm.is_connected(&peer) {
                continue;
            }
            let Some(record) = self.store.by_key(&key) else {
                continue;
            };
            let Ok(record) = store::encode(&record) else {
                continue;
            };
            self.outbox.entry(peer).or_default().push(Outgoing {
                write: None,
                key,
                record,
            });
            self.catch_up_in_flight += 1;
        }
    }
}
