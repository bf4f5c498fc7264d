//! The journal replay: once an endpoint is available, the journal's writes go to the
//! cluster in order (each address in order, addresses in parallel; ids make a replay
//! idempotent), each removed once the cluster has it; then fallback is left.
//!
//! While an available breaker is closed, the oldest entries go in batches ([`plan`]):
//! one request to a node carries many entries (`POST /ucxi/v1/batch`), a few batches are
//! in flight at once, and what the cluster took leaves the journal in one commit. While
//! every available breaker is half-open, one entry at a time: those are the probes that
//! close a breaker. A node that refuses a batch as a whole (an older node without the
//! route answers 404 or 405, during a rolling upgrade) gets its entries one at a time.

pub mod plan;

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use ucxl::{Address, NewVersion};

use super::fallback::Fallback;
use crate::backend::{BackendError, Call, NotServed};
use crate::store::journal::{Entry, JournalError, Op};
use plan::{BATCH_BYTES, BATCH_ITEMS, Batch};

/// Entries read from the journal per round of batches: a few batches for each of a few
/// nodes.
const REPLAY_READ: usize = 1024;
/// Batches in flight at once.
const BATCH_CONCURRENCY: usize = 4;
/// Addresses replayed at once, one entry at a time.
const SINGLE_CONCURRENCY: usize = 64;
/// How often the replayer looks again when nothing woke it.
const REPLAY_TICK: Duration = Duration::from_millis(250);

/// Why a round of the replay stopped short: it pauses, then goes on.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The journal could not be read.
    #[error("cannot read the journal")]
    Read(#[source] JournalError),
    /// The task reading the journal failed.
    #[error("cannot read the journal")]
    Task(#[source] tokio::task::JoinError),
    /// An entry could not be encoded for a batch.
    #[error("cannot encode a journal entry")]
    Encode(#[source] serde_json::Error),
    /// Replayed entries could not be removed (they are sent again later: a no-op).
    #[error("cannot remove replayed entries from the journal")]
    Remove(#[source] JournalError),
    /// The cluster could not take a batch or an entry.
    #[error("the cluster failed")]
    Cluster(#[source] BackendError),
    /// A node took a batch but did not store some of its entries.
    #[error("the cluster did not store {0} entries; they are sent again later")]
    NotStored(usize),
}

impl Fallback {
    /// Starts the replayer (once) on the current runtime, until `stop` is cancelled.
    pub fn start(self: &Arc<Self>, stop: &CancellationToken) {
        if !self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tokio::spawn(Arc::clone(self).run(stop.clone()));
        }
    }

    /// Replays the journal whenever it holds writes and an endpoint is available, and
    /// leaves fallback once it is empty; until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let cluster = Arc::clone(self.real.cluster());
        loop {
            if stop.is_cancelled() {
                return;
            }
            let available = cluster.any_available();
            if self.journal.pending() == 0 {
                if available {
                    self.leave();
                }
                tokio::select! {
                    () = self.journal.appended() => {}
                    () = cluster.wait_for_recovery(REPLAY_TICK) => {}
                    () = stop.cancelled() => return,
                }
                continue;
            }
            if !available {
                tokio::select! {
                    () = cluster.wait_for_recovery(REPLAY_TICK) => {}
                    () = stop.cancelled() => return,
                }
                continue;
            }
            let recovered = cluster.recovery_signal();
            tokio::pin!(recovered);
            recovered.as_mut().enable();
            // While every available breaker is half-open (a few probes admitted), replay
            // one entry at a time: those are the probes that close a breaker.
            let round = if cluster.any_closed() {
                self.replay_batches(REPLAY_READ).await
            } else {
                self.replay_singly(1, 1).await
            };
            if let Err(e) = round {
                // Wait for the cluster (a recovery during the round counts) rather than
                // spin.
                tracing::info!(error = %ucxl::error::Chain(&e), "replay paused");
                tokio::select! {
                    _ = tokio::time::timeout(REPLAY_TICK, recovered) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }

    /// The oldest `limit` entries, in journal order (`None`: an entry that cannot be
    /// decoded).
    async fn oldest(&self, limit: usize) -> Result<Vec<(u64, Option<Entry>)>, ReplayError> {
        let journal = Arc::clone(&self.journal);
        tokio::task::spawn_blocking(move || journal.oldest(limit))
            .await
            .map_err(ReplayError::Task)?
            .map_err(ReplayError::Read)
    }

    /// The call a replayed write is sent with: the request timeout from now.
    fn replay_call(&self, request_id: String) -> Call {
        let timeout = *self
            .request_timeout
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Call::new(request_id, Instant::now() + timeout)
    }

    /// Replays the oldest `limit` entries in batches, a few at once, and removes what the
    /// cluster took in one commit. An error says why the round stopped short (what was
    /// taken is removed all the same).
    async fn replay_batches(&self, limit: usize) -> Result<(), ReplayError> {
        use futures_util::StreamExt as _;
        let plan = plan::plan(self.oldest(limit).await?, BATCH_ITEMS, BATCH_BYTES)
            .map_err(ReplayError::Encode)?;
        let mut remove: Vec<(u64, Option<Address>)> = Vec::new();
        for seq in plan.undecodable {
            tracing::error!(seq, "dropped a journal entry that cannot be decoded");
            remove.push((seq, None));
        }
        let sent: Vec<Sent> = futures_util::stream::iter(plan.batches)
            .map(|batch| async move { self.replay_batch(&batch).await })
            .buffer_unordered(BATCH_CONCURRENCY)
            .collect()
            .await;
        let mut first_error = None;
        for Sent { taken, error } in sent {
            remove.extend(taken);
            if let Some(e) = error {
                first_error.get_or_insert(e);
            }
        }
        self.forget(remove).await?;
        first_error.map_or(Ok(()), Err)
    }

    /// Sends one batch: the entries the cluster took or refused (to be removed), and why
    /// others were not taken. A batch refused as a whole (by a node without the batch
    /// route, or one that takes smaller batches) is replayed one entry at a time instead.
    async fn replay_batch(&self, batch: &Batch) -> Sent {
        let call = self.replay_call(format!("replay-{}", uuid::Uuid::now_v7()));
        let results = match self
            .real
            .send_batch(&call, batch.body.clone(), batch.addresses())
            .await
        {
            Ok(served) => served.value,
            Err(NotServed {
                error: BackendError::Refused(refusal),
                via,
            }) => {
                tracing::info!(
                    endpoint = via.endpoint.as_deref().unwrap_or_default(),
                    code = %refusal.code,
                    message = %refusal.message,
                    entries = batch.entries.len(),
                    "a node refused a batch (an older node without the route, or smaller \
                     limits): its entries are replayed one at a time"
                );
                let entries = batch
                    .entries
                    .iter()
                    .map(|(seq, entry)| (*seq, Some(entry.clone())))
                    .collect();
                // Each entry removes itself once replayed.
                let error = self.replay_entries(entries, SINGLE_CONCURRENCY).await.err();
                return Sent {
                    taken: Vec::new(),
                    error,
                };
            }
            Err(e) => {
                return Sent {
                    taken: Vec::new(),
                    error: Some(ReplayError::Cluster(e.error)),
                };
            }
        };
        let settled = plan::settle(batch, &results);
        for (seq, entry, result) in &settled.refused {
            // A definite answer: replaying again would get the same one (a delete of
            // something the cluster never had, an id the cluster holds for another kind
            // of write).
            tracing::warn!(
                seq,
                request_id = %entry.request_id,
                address = %entry.address,
                code = %result.code,
                message = %result.message,
                "the cluster refused a journaled write; dropped from the journal"
            );
        }
        Sent {
            taken: settled
                .remove
                .iter()
                .map(|(seq, address)| (*seq, Some((*address).clone())))
                .collect(),
            error: (settled.kept > 0).then_some(ReplayError::NotStored(settled.kept)),
        }
    }

    /// Replays the oldest `limit` entries one at a time: each address's entries in order,
    /// different addresses in parallel (up to `concurrency`). An error says why the replay
    /// stopped.
    async fn replay_singly(&self, limit: usize, concurrency: usize) -> Result<(), ReplayError> {
        let read = self.oldest(limit).await?;
        self.replay_entries(read, concurrency).await
    }

    /// Replays `entries` (in journal order) one at a time: each address's in order,
    /// different addresses in parallel (up to `concurrency`).
    async fn replay_entries(
        &self,
        entries: Vec<(u64, Option<Entry>)>,
        concurrency: usize,
    ) -> Result<(), ReplayError> {
        use futures_util::StreamExt as _;
        // Group by address, keeping each address's order (the journal's order).
        let mut groups: Vec<Vec<(u64, Option<Entry>)>> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (seq, entry) in entries {
            let key = entry
                .as_ref()
                .map_or_else(String::new, |e| e.address.canonical().to_owned());
            let i = *index.entry(key).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[i].push((seq, entry));
        }
        let results: Vec<Result<(), ReplayError>> = futures_util::stream::iter(groups)
            .map(|group| async move {
                for (seq, entry) in group {
                    self.replay_one(seq, entry).await?;
                }
                Ok(())
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Replays one entry and removes it; an error when the cluster failed (it stays) or the
    /// journal could not remove it.
    async fn replay_one(&self, seq: u64, entry: Option<Entry>) -> Result<(), ReplayError> {
        let Some(entry) = entry else {
            tracing::error!(seq, "dropped a journal entry that cannot be decoded");
            return self.forget(vec![(seq, None)]).await;
        };
        let call = self.replay_call(entry.request_id.clone());
        let result = match &entry.op {
            Op::Put { version } => self
                .real
                .send_put(&call, &entry.address, &NewVersion::from(version))
                .await
                .map(|_| ()),
            Op::Delete { id, deleted_at } => self
                .real
                .send_delete(&call, &entry.address, id, Some(*deleted_at))
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => {}
            Err(NotServed {
                error: BackendError::Refused(refusal),
                ..
            }) => {
                // A definite answer: replaying again would get the same one (a delete of
                // something the cluster never had, an id the cluster holds for another kind
                // of write).
                tracing::warn!(
                    seq,
                    request_id = %entry.request_id,
                    address = %entry.address,
                    code = %refusal.code,
                    message = %refusal.message,
                    "the cluster refused a journaled write; dropped from the journal"
                );
            }
            Err(e) => return Err(ReplayError::Cluster(e.error)),
        }
        self.forget(vec![(seq, Some(entry.address))]).await
    }

    /// Removes replayed entries in one commit, and releases the local store's records of
    /// the addresses that have no entry left; an error when the journal could not (the
    /// replay pauses rather than send the entries again at once).
    async fn forget(&self, replayed: Vec<(u64, Option<Address>)>) -> Result<(), ReplayError> {
        let seqs: Vec<u64> = replayed.iter().map(|(seq, _)| *seq).collect();
        match self.journal.remove_many(seqs).await {
            Ok(last) => {
                for ((_, address), last) in replayed.iter().zip(last) {
                    if last && let Some(address) = address {
                        self.store.release(address);
                    }
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    entries = replayed.len(),
                    error = %ucxl::error::Chain(&e),
                    "cannot remove replayed journal entries"
                );
                Err(ReplayError::Remove(e))
            }
        }
    }
}

/// What sending one batch came to.
struct Sent {
    /// Entries to remove (taken or refused by the cluster, or undecodable), with their
    /// addresses.
    taken: Vec<(u64, Option<Address>)>,
    /// Why the others were not taken.
    error: Option<ReplayError>,
}
