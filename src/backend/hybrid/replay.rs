//! The journal replay: once an endpoint is available, the journal's writes go to the
//! cluster in order (each address in order, addresses in parallel; ids make a replay
//! idempotent), each removed once the cluster has it; then fallback is left.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use ucxl::{Address, NewVersion};

use super::fallback::Fallback;
use crate::backend::{BackendError, Call, NotServed};
use crate::store::journal::{Entry, Op};

/// Entries replayed per read of the journal.
const REPLAY_BATCH: usize = 512;
/// Addresses replayed at once.
const REPLAY_CONCURRENCY: usize = 64;
/// How often the replayer looks again when nothing woke it.
const REPLAY_TICK: Duration = Duration::from_millis(250);

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
            // While every available breaker is half-open (a few probes admitted), replay
            // one entry at a time: those are the probes that close a breaker.
            let (limit, concurrency) = if cluster.any_closed() {
                (REPLAY_BATCH, REPLAY_CONCURRENCY)
            } else {
                (1, 1)
            };
            let recovered = cluster.recovery_signal();
            tokio::pin!(recovered);
            recovered.as_mut().enable();
            if let Err(e) = self.replay_batch(limit, concurrency).await {
                // The cluster failed mid-replay: wait for it (a recovery during the batch
                // counts) rather than spin.
                tracing::info!(error = %e, "replay paused: the cluster failed");
                tokio::select! {
                    _ = tokio::time::timeout(REPLAY_TICK, recovered) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }

    /// Replays the oldest `limit` entries: each address's entries in order, different
    /// addresses in parallel (up to `concurrency`). An error says why the replay stopped.
    async fn replay_batch(&self, limit: usize, concurrency: usize) -> Result<(), String> {
        use futures_util::StreamExt as _;
        let journal = Arc::clone(&self.journal);
        let batch = tokio::task::spawn_blocking(move || journal.oldest(limit))
            .await
            .map_err(|e| format!("cannot read the journal: {e}"))?
            .map_err(|e| format!("cannot read the journal: {e}"))?;
        // Group by address, keeping each address's order (the journal's order).
        let mut groups: Vec<Vec<(u64, Option<Entry>)>> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (seq, entry) in batch {
            let key = entry
                .as_ref()
                .map_or_else(String::new, |e| e.address.canonical().to_owned());
            let i = *index.entry(key).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[i].push((seq, entry));
        }
        let results: Vec<Result<(), String>> = futures_util::stream::iter(groups)
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
    async fn replay_one(&self, seq: u64, entry: Option<Entry>) -> Result<(), String> {
        let Some(entry) = entry else {
            tracing::error!(seq, "dropped a journal entry that cannot be decoded");
            return self.forget(seq, None).await;
        };
        let timeout = *self
            .request_timeout
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let call = Call {
            request_id: entry.request_id.clone(),
            deadline: Instant::now() + timeout,
        };
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
            Err(e) => return Err(format!("entry {seq}: {}", e.error)),
        }
        self.forget(seq, Some(&entry.address)).await
    }

    /// Removes a replayed entry; an error when the journal could not (the replay pauses
    /// rather than send the entry again at once).
    async fn forget(&self, seq: u64, address: Option<&Address>) -> Result<(), String> {
        match self.journal.remove(seq).await {
            Ok(last) => {
                if last && let Some(address) = address {
                    self.store.release(address);
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(seq, error = %e, "cannot remove a replayed journal entry");
                Err(format!("cannot remove journal entry {seq}: {e}"))
            }
        }
    }
}
