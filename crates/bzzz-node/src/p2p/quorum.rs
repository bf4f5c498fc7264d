//! Writes being replicated: how many peers a write needs, which pushes are still out,
//! and when the write is answered (a majority and the rest settled or given a grace
//! period, or every push ended without a majority).

use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ReplicateError;
use super::network::Network;
use crate::store::DhtKey;

/// A write being replicated: answered once `need` peers stored it, or once every push
/// has ended without that.
pub(super) struct PendingWrite {
    pub(super) need: usize,
    pub(super) acked: usize,
    pub(super) outstanding: usize,
    pub(super) reply: Option<oneshot::Sender<Result<usize, ReplicateError>>>,
    /// When a majority had acknowledged while other pushes were still out.
    pub(super) quorum_at: Option<Instant>,
}

/// How long a write with a majority waits for its remaining replicas before it is
/// acknowledged anyway (those get it through catch-up). Waiting for every reachable replica
/// first means a read at any healthy node sees an acknowledged write.
const REMAINING_REPLICAS_GRACE: Duration = Duration::from_millis(100);

impl Network {
    /// Acknowledges writes that have a majority and waited long enough for the rest.
    pub(super) fn acknowledge_slow_writes(&mut self) {
        let now = Instant::now();
        for pending in self.writes.values_mut() {
            if pending
                .quorum_at
                .is_some_and(|at| now.duration_since(at) >= REMAINING_REPLICAS_GRACE)
                && let Some(reply) = pending.reply.take()
            {
                metrics::counter!("bzzz_replications_total", "outcome" => "ok").increment(1);
                let _ = reply.send(Ok(pending.acked));
            }
        }
    }

    /// One push of a write ended.
    pub(super) fn push_ended(&mut self, write: u64, peer: PeerId, key: DhtKey, stored: bool) {
        if !stored {
            // The peer missed it: it gets the record again through catch-up.
            self.catch_up.push((peer, key));
        }
        let Some(pending) = self.writes.get_mut(&write) else {
            return;
        };
        pending.outstanding = pending.outstanding.saturating_sub(1);
        if stored {
            pending.acked += 1;
        }
        let (need, acked, outstanding) = (pending.need, pending.acked, pending.outstanding);
        if acked >= need && outstanding > 0 {
            pending.quorum_at.get_or_insert_with(Instant::now);
        } else if acked >= need {
            if let Some(reply) = pending.reply.take() {
                metrics::counter!("bzzz_replications_total", "outcome" => "ok").increment(1);
                let _ = reply.send(Ok(acked));
            }
        } else if outstanding == 0
            && let Some(reply) = pending.reply.take()
        {
            metrics::counter!("bzzz_replications_total", "outcome" => "failed").increment(1);
            let _ = reply.send(Err(ReplicateError::QuorumFailed { acked, need }));
        }
        if outstanding == 0 {
            self.writes.remove(&write);
        }
    }
}
