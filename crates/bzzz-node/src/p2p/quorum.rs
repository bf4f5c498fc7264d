//! Writes being replicated: how many peers a write needs, which pushes are still out,
//! and when the write is answered (a majority and the rest settled or given a grace
//! period, or every push ended without a majority).

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ReplicateError;

/// How long a write with a majority waits for its remaining replicas before it is
/// acknowledged anyway (those get it through catch-up). Waiting for every reachable replica
/// first means a read at any healthy node sees an acknowledged write.
const REMAINING_REPLICAS_GRACE: Duration = Duration::from_millis(100);

/// Where the outcome of a write goes: the peers that stored it, or why too few did.
pub(super) type WriteReply = oneshot::Sender<Result<usize, ReplicateError>>;

/// Peers besides this node that must store a write: a majority of the replication factor
/// counts the local copy, and no more than `replication_factor − 1` peers hold one.
pub(super) fn peers_needed(replication_factor: usize) -> usize {
    (replication_factor / 2).min(replication_factor.saturating_sub(1))
}

/// A write being replicated: answered once `need` peers stored it, or once every push
/// has ended without that.
struct PendingWrite {
    need: usize,
    acked: usize,
    outstanding: usize,
    reply: Option<WriteReply>,
    /// When a majority had acknowledged while other pushes were still out.
    quorum_at: Option<Instant>,
}

/// The writes being replicated, by the id their pushes carry.
#[derive(Default)]
pub(super) struct Writes {
    pending: HashMap<u64, PendingWrite>,
    next: u64,
}

impl Writes {
    /// Starts a write pushed to `targets` peers, `need` of which must store it; returns the
    /// id its pushes carry.
    pub(super) fn start(&mut self, need: usize, targets: usize, reply: WriteReply) -> u64 {
        let write = self.next;
        self.next += 1;
        self.pending.insert(
            write,
            PendingWrite {
                need,
                acked: 0,
                outstanding: targets,
                reply: Some(reply),
                quorum_at: None,
            },
        );
        write
    }

    /// Acknowledges writes that have a majority and waited long enough for the rest.
    pub(super) fn acknowledge_slow(&mut self) {
        let now = Instant::now();
        for pending in self.pending.values_mut() {
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

    /// One push of `write` ended: the peer `stored` the record, or did not.
    pub(super) fn push_ended(&mut self, write: u64, stored: bool) {
        let Some(pending) = self.pending.get_mut(&write) else {
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
            self.pending.remove(&write);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;

    type Outcome = oneshot::Receiver<Result<usize, ReplicateError>>;

    fn start(writes: &mut Writes, need: usize, targets: usize) -> (u64, Outcome) {
        let (reply, outcome) = oneshot::channel();
        (writes.start(need, targets, reply), outcome)
    }

    fn unanswered(outcome: &mut Outcome) -> bool {
        matches!(outcome.try_recv(), Err(TryRecvError::Empty))
    }

    #[test]
    fn a_majority_of_the_replication_factor_counts_the_local_copy() {
        let needed: Vec<usize> = (0..=6).map(peers_needed).collect();
        assert_eq!(needed, [0, 0, 1, 1, 2, 2, 3]);
    }

    #[test]
    fn each_write_gets_its_own_id() {
        let mut writes = Writes::default();
        let (a, _) = start(&mut writes, 1, 2);
        let (b, _) = start(&mut writes, 1, 2);
        assert_ne!(a, b);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_every_target_stored_is_acknowledged_at_once() {
        let mut writes = Writes::default();
        let (write, mut outcome) = start(&mut writes, 1, 2);
        writes.push_ended(write, true);
        assert!(unanswered(&mut outcome), "one push is still out");
        writes.push_ended(write, true);
        assert_eq!(outcome.try_recv(), Ok(Ok(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_majority_waits_the_grace_period_for_a_slow_replica_then_is_acknowledged() {
        let mut writes = Writes::default();
        let (write, mut outcome) = start(&mut writes, 1, 2);
        writes.push_ended(write, true);
        writes.acknowledge_slow();
        assert!(unanswered(&mut outcome), "the grace period has not passed");
        let almost = REMAINING_REPLICAS_GRACE.saturating_sub(Duration::from_millis(1));
        tokio::time::advance(almost).await;
        writes.acknowledge_slow();
        assert!(unanswered(&mut outcome), "the grace period has not passed");
        tokio::time::advance(Duration::from_millis(1)).await;
        writes.acknowledge_slow();
        assert_eq!(outcome.try_recv(), Ok(Ok(1)));
        // The slow replica's push ending later changes nothing, and the write is forgotten.
        writes.push_ended(write, false);
        assert!(writes.pending.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_answers_within_the_grace_period_is_counted() {
        let mut writes = Writes::default();
        let (write, mut outcome) = start(&mut writes, 1, 2);
        writes.push_ended(write, true);
        tokio::time::advance(REMAINING_REPLICAS_GRACE / 2).await;
        writes.push_ended(write, true);
        assert_eq!(outcome.try_recv(), Ok(Ok(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_without_a_majority_is_never_acknowledged_by_the_grace_period() {
        let mut writes = Writes::default();
        let (write, mut outcome) = start(&mut writes, 2, 3);
        writes.push_ended(write, true);
        tokio::time::advance(REMAINING_REPLICAS_GRACE * 10).await;
        writes.acknowledge_slow();
        assert!(
            unanswered(&mut outcome),
            "one of two needed peers stored it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn peers_that_answer_not_stored_fail_the_write_once_every_push_ended() {
        let mut writes = Writes::default();
        let (write, mut outcome) = start(&mut writes, 2, 4);
        writes.push_ended(write, true);
        writes.push_ended(write, false);
        writes.push_ended(write, false);
        assert!(
            unanswered(&mut outcome),
            "the last push could still bring a majority"
        );
        writes.push_ended(write, false);
        assert_eq!(
            outcome.try_recv(),
            Ok(Err(ReplicateError::QuorumFailed { acked: 1, need: 2 }))
        );
        assert!(writes.pending.is_empty(), "a settled write is forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_an_unknown_write_is_ignored() {
        let mut writes = Writes::default();
        let (write, mut outcome) = start(&mut writes, 1, 1);
        writes.push_ended(write + 1, true);
        assert!(unanswered(&mut outcome));
        writes.push_ended(write, true);
        assert_eq!(outcome.try_recv(), Ok(Ok(1)));
    }
}
