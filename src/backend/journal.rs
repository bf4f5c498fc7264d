//! The durable write journal of hybrid mode (SPEC §6): writes accepted while the cluster is
//! unreachable, in order, on disk (redb), committed with an fsync before the client gets
//! its 202, so an acknowledged write survives a crash or SIGKILL of the gateway. The replay
//! sends them to the cluster in order and removes each once the cluster has it.
//!
//! One writer thread owns all write transactions and commits whatever has queued up in one
//! transaction (group commit): concurrent fallback writes share one fsync instead of
//! queueing for one each.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use ucxl::{Address, EnvelopeId, Version};

/// The journal's file name in `RUSTLE_JOURNAL_DIR`.
pub const FILE_NAME: &str = "journal.redb";

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
/// Most commands committed in one transaction.
const MAX_BATCH: usize = 512;

/// What a journaled write does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A put, with the version as the gateway accepted it (id, time, hash fixed).
    Put {
        /// The version.
        version: Version,
    },
    /// A delete, with its id and the time it was accepted.
    Delete {
        /// The delete's id.
        id: EnvelopeId,
        /// When it was accepted.
        #[serde(with = "ucxl::envelope::rfc3339")]
        deleted_at: DateTime<Utc>,
    },
}

/// One journaled write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The canonical address.
    pub address: Address,
    /// The write.
    pub op: Op,
    /// The request that was answered 202 (for logs).
    pub request_id: String,
}

/// Why the journal failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("journal {path}: {message}")]
pub struct JournalError {
    path: String,
    message: String,
}

enum Command {
    /// Entry bytes, canonical address, ack.
    Append(Vec<u8>, String, oneshot::Sender<Result<u64, String>>),
    /// Sequence number, ack (true when no entry for its address is left).
    Remove(u64, oneshot::Sender<Result<bool, String>>),
}

#[derive(Debug, Default)]
struct Pending {
    per_address: HashMap<String, u64>,
    /// seq → canonical address, for removals.
    addresses: HashMap<u64, String>,
}

impl Pending {
    fn count(&self) -> u64 {
        self.addresses.len() as u64
    }

    /// Forgets a removed entry; true when it was the last of its address.
    fn forget(&mut self, seq: u64) -> bool {
        let Some(address) = self.addresses.remove(&seq) else {
            return false;
        };
        let Some(n) = self.per_address.get_mut(&address) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        self.per_address.remove(&address);
        true
    }
}

/// The journal: a redb file in `RUSTLE_JOURNAL_DIR`.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    db: Arc<Database>,
    commands: mpsc::UnboundedSender<Command>,
    pending: Arc<Mutex<Pending>>,
    /// Woken by every append (the replayer waits on it).
    appended: Notify,
    replayed: AtomicU64,
}

#[allow(clippy::cast_precision_loss)] // a journal never holds 2^52 entries
fn set_pending_gauge(count: u64) {
    metrics::gauge!("rustle_journal_pending").set(count as f64);
}

fn fail(path: &Path, e: impl std::fmt::Display) -> JournalError {
    JournalError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, counting what it holds, and starts its
    /// writer thread.
    ///
    /// # Errors
    /// When the directory or file cannot be created or read.
    pub fn open(dir: &Path) -> Result<Arc<Self>, JournalError> {
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| fail(&path, e))?;
        let txn = db.begin_write().map_err(|e| fail(&path, e))?;
        txn.open_table(ENTRIES).map_err(|e| fail(&path, e))?;
        txn.commit().map_err(|e| fail(&path, e))?;
        let mut pending = Pending::default();
        let mut next = 1;
        {
            let read = db.begin_read().map_err(|e| fail(&path, e))?;
            let table = read.open_table(ENTRIES).map_err(|e| fail(&path, e))?;
            for row in table.iter().map_err(|e| fail(&path, e))? {
                let (seq, bytes) = row.map_err(|e| fail(&path, e))?;
                let seq = seq.value();
                next = seq + 1;
                let address = serde_json::from_slice::<Entry>(bytes.value())
                    .map_or_else(|_| String::new(), |e| e.address.canonical().to_owned());
                *pending.per_address.entry(address.clone()).or_default() += 1;
                pending.addresses.insert(seq, address);
            }
        }
        let db = Arc::new(db);
        let (commands, rx) = mpsc::unbounded_channel();
        let writer_db = Arc::clone(&db);
        set_pending_gauge(pending.count());
        if pending.count() > 0 {
            tracing::warn!(pending = pending.count(), path = %path.display(), "journal holds writes not yet replayed");
        }
        let pending = Arc::new(Mutex::new(pending));
        let writer_pending = Arc::clone(&pending);
        std::thread::Builder::new()
            .name("rustle-journal".into())
            .spawn(move || writer(&writer_db, rx, next, &writer_pending))
            .map_err(|e| fail(&path, e))?;
        Ok(Arc::new(Self {
            path,
            db,
            commands,
            pending,
            appended: Notify::new(),
            replayed: AtomicU64::new(0),
        }))
    }

    fn pending_lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `entry` durably (committed and fsynced when this returns `Ok`).
    ///
    /// # Errors
    /// When the entry could not be committed.
    pub async fn append(&self, entry: &Entry) -> Result<u64, JournalError> {
        let bytes = serde_json::to_vec(entry).map_err(|e| fail(&self.path, e))?;
        let address = entry.address.canonical().to_owned();
        let (ack, done) = oneshot::channel();
        self.commands
            .send(Command::Append(bytes, address, ack))
            .map_err(|_| fail(&self.path, "the journal writer has stopped"))?;
        let seq = done
            .await
            .map_err(|_| fail(&self.path, "the journal writer has stopped"))?
            .map_err(|e| fail(&self.path, e))?;
        self.appended.notify_waiters();
        Ok(seq)
    }

    /// Removes a replayed entry. Returns true when no entry for its address is left.
    ///
    /// # Errors
    /// When the removal could not be committed.
    pub async fn remove(&self, seq: u64) -> Result<bool, JournalError> {
        let (ack, done) = oneshot::channel();
        self.commands
            .send(Command::Remove(seq, ack))
            .map_err(|_| fail(&self.path, "the journal writer has stopped"))?;
        let last_for_address = done
            .await
            .map_err(|_| fail(&self.path, "the journal writer has stopped"))?
            .map_err(|e| fail(&self.path, e))?;
        self.replayed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("rustle_journal_replayed_total").increment(1);
        Ok(last_for_address)
    }

    /// The oldest entries, up to `limit`, in order. An entry that cannot be decoded (it
    /// was never written by this gateway) is returned as `Err` so the replay can drop it.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn oldest(&self, limit: usize) -> Result<Vec<(u64, Option<Entry>)>, JournalError> {
        let read = self.db.begin_read().map_err(|e| fail(&self.path, e))?;
        let table = read.open_table(ENTRIES).map_err(|e| fail(&self.path, e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| fail(&self.path, e))?.take(limit) {
            let (seq, bytes) = row.map_err(|e| fail(&self.path, e))?;
            out.push((seq.value(), serde_json::from_slice(bytes.value()).ok()));
        }
        Ok(out)
    }

    /// Entries not yet replayed.
    #[must_use]
    pub fn pending(&self) -> u64 {
        self.pending_lock().count()
    }

    /// True when writes to `address` wait in the journal.
    #[must_use]
    pub fn pending_for(&self, address: &Address) -> bool {
        self.pending_lock()
            .per_address
            .contains_key(address.canonical())
    }

    /// Entries replayed since start.
    #[must_use]
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    /// Waits for the next append.
    pub async fn appended(&self) {
        self.appended.notified().await;
    }
}

/// Commits queued commands in batches, one fsync per batch, until every sender is gone;
/// the pending counts change with each commit, before anyone is answered.
fn writer(
    db: &Database,
    mut rx: mpsc::UnboundedReceiver<Command>,
    mut next: u64,
    pending: &Mutex<Pending>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let start = next;
        let result = commit(db, &batch, &mut next);
        if result.is_err() {
            // Nothing of the batch is durable: the sequence numbers may be used again.
            next = start;
        }
        let mut seq = start;
        let mut counts = pending.lock().unwrap_or_else(PoisonError::into_inner);
        for command in batch {
            match command {
                Command::Append(_, address, ack) => {
                    if result.is_ok() {
                        *counts.per_address.entry(address.clone()).or_default() += 1;
                        counts.addresses.insert(seq, address);
                    }
                    let _ = ack.send(result.clone().map(|()| seq));
                    seq += 1;
                }
                Command::Remove(removed, ack) => {
                    let last = result.is_ok() && counts.forget(removed);
                    let _ = ack.send(result.clone().map(|()| last));
                }
            }
        }
        set_pending_gauge(counts.count());
        drop(counts);
    }
}

fn commit(db: &Database, batch: &[Command], next: &mut u64) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
        for command in batch {
            match command {
                Command::Append(bytes, _, _) => {
                    table
                        .insert(*next, bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                    *next += 1;
                }
                Command::Remove(seq, _) => {
                    table.remove(*seq).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc as StdArc;

    fn entry(path: &str, n: u32) -> Entry {
        let address = Address::parse(&format!("ucxl://a:b@c:d/{path}")).expect("address");
        let content = serde_json::json!({"n": n});
        let (hash, size) = ucxl::content_digest(&content).expect("digest");
        Entry {
            address,
            op: Op::Put {
                version: Version {
                    id: EnvelopeId::parse(&format!("id-{n}")).expect("id"),
                    content: StdArc::new(content),
                    content_type: "application/json".into(),
                    metadata: serde_json::Map::new(),
                    created_at: Utc::now(),
                    hash,
                    size,
                },
            },
            request_id: format!("r{n}"),
        }
    }

    #[tokio::test]
    async fn entries_survive_reopening_in_order_and_removal_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let journal = Journal::open(dir.path()).expect("open");
            let appends = (0..20).map(|n| {
                let journal = StdArc::clone(&journal);
                async move { journal.append(&entry("x", n)).await.expect("append") }
            });
            let seqs = futures_util::future::join_all(appends).await;
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 20, "every append has its own sequence number");
            journal.append(&entry("y", 99)).await.expect("append");
            assert_eq!(journal.pending(), 21);
            assert!(journal.pending_for(&entry("y", 0).address));
            let first = journal.oldest(1).expect("read")[0].0;
            assert!(!journal.remove(first).await.expect("remove"));
        }
        // The writer thread may still hold the file for a moment: reopen until it is free.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let journal = loop {
            match Journal::open(dir.path()) {
                Ok(j) => break j,
                Err(e) if std::time::Instant::now() > until => panic!("cannot reopen: {e}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        };
        assert_eq!(journal.pending(), 20);
        let oldest = journal.oldest(100).expect("read");
        assert_eq!(oldest.len(), 20);
        assert!(oldest.windows(2).all(|w| w[0].0 < w[1].0), "in order");
        let last = oldest.last().and_then(|(_, e)| e.clone()).expect("entry");
        assert_eq!(last.request_id, "r99");
        assert!(journal.remove(oldest[19].0).await.expect("remove"));
        assert!(!journal.pending_for(&entry("y", 0).address));
    }
}
