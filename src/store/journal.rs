//! The durable write journal of hybrid mode (SPEC §6): writes accepted while the cluster is
//! unreachable, in order, on disk (redb), committed with an fsync before the client gets
//! its 202, so an acknowledged write survives a crash or SIGKILL of the gateway. The replay
//! sends them to the cluster in order and removes each once the cluster has it.
//!
//! Appends and removals go to one writer thread ([`redb_commit::GroupCommit`], shared with
//! the node's record store), which commits whatever has queued up in one transaction
//! (group commit): concurrent fallback writes share one fsync instead of queueing for one
//! each.
//!
//! A failed commit (a full or failing disk) refuses every write of its batch, none of which
//! was acknowledged. The writer then closes the file and reopens it (reloading the pending
//! counts and the next sequence number from disk) for the next write: once the disk works
//! again, so does the journal, without a restart.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use redb_commit::{Batch, CommitError, GroupCommit, Opener, Settings};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};
use ucxl::{Address, EnvelopeId, Version};

/// The journal's file name in `RUSTLE_JOURNAL_DIR`.
pub const FILE_NAME: &str = "journal.redb";

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");

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
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The journal directory cannot be created.
    #[error("journal {}: cannot create the directory", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The journal file cannot be opened or read at start.
    #[error("journal {}: cannot open", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: CommitError,
    },
    /// An entry cannot be encoded.
    #[error("cannot encode a journal entry")]
    Encode(#[source] Arc<serde_json::Error>),
    /// A commit or a read failed: the storage is full or unwritable, the file is closed
    /// until the writer reopens it, or the writer has stopped.
    #[error(transparent)]
    Storage(#[from] CommitError),
}

/// A write for the writer thread.
enum Job {
    Append {
        bytes: Vec<u8>,
        /// The canonical address, for the pending counts.
        address: String,
        /// Set by a caller that gave up waiting: a job not yet taken into a batch is then
        /// skipped, so the caller's failure answer is the truth.
        abandoned: Arc<std::sync::atomic::AtomicBool>,
        answer: oneshot::Sender<Result<u64, CommitError>>,
    },
    Remove {
        seqs: Vec<u64>,
        /// Per entry: true when no entry for its address is left.
        answer: oneshot::Sender<Result<Vec<bool>, CommitError>>,
    },
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

    fn add(&mut self, seq: u64, address: String) {
        *self.per_address.entry(address.clone()).or_default() += 1;
        self.addresses.insert(seq, address);
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

/// What the journal holds: the pending entries and the next sequence number.
fn load(db: &Database) -> Result<(Pending, u64), CommitError> {
    let mut pending = Pending::default();
    let mut next = 1;
    let read = db.begin_read()?;
    let table = read.open_table(ENTRIES)?;
    for row in table.iter()? {
        let (seq, bytes) = row?;
        let seq = seq.value();
        next = seq + 1;
        let address = serde_json::from_slice::<Entry>(bytes.value())
            .map_or_else(|_| String::new(), |e| e.address.canonical().to_owned());
        pending.add(seq, address);
    }
    Ok((pending, next))
}

/// The journal: a redb file in `RUSTLE_JOURNAL_DIR`.
#[derive(Debug)]
pub struct Journal {
    writer: GroupCommit<Job>,
    pending: Arc<Mutex<Pending>>,
    /// Woken by every append (the replayer waits on it).
    appended: Notify,
    replayed: AtomicU64,
}

#[allow(clippy::cast_precision_loss)] // a journal never holds 2^52 entries
fn set_pending_gauge(count: u64) {
    metrics::gauge!("rustle_journal_pending").set(count as f64);
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, counting what it holds, and starts its
    /// writer thread.
    ///
    /// # Errors
    /// When the directory or file cannot be created or read.
    pub fn open(dir: &Path) -> Result<Arc<Self>, JournalError> {
        std::fs::create_dir_all(dir).map_err(|e| JournalError::Directory {
            path: dir.to_owned(),
            source: Arc::new(e),
        })?;
        let path = dir.join(FILE_NAME);
        let file = path.clone();
        Self::start(&path, Box::new(move || Database::create(&file)))
    }

    /// Opens the journal with `open` (the file, or a test's storage) and starts its writer.
    fn start(path: &Path, open: Opener) -> Result<Arc<Self>, JournalError> {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let batch = Writes {
            next: 1,
            staged: Vec::new(),
            pending: Arc::clone(&pending),
        };
        let writer =
            GroupCommit::start(Settings::new("rustle-journal"), open, batch).map_err(|source| {
                JournalError::Open {
                    path: path.to_owned(),
                    source,
                }
            })?;
        let count = lock(&pending).count();
        if count > 0 {
            tracing::warn!(pending = count, path = %path.display(), "journal holds writes not yet replayed");
        }
        Ok(Arc::new(Self {
            writer,
            pending,
            appended: Notify::new(),
            replayed: AtomicU64::new(0),
        }))
    }

    /// Appends `entry` durably (committed and fsynced when this returns `Ok`).
    ///
    /// # Errors
    /// When the entry could not be committed.
    pub async fn append(&self, entry: &Entry) -> Result<u64, JournalError> {
        self.append_unless(entry, std::future::pending())
            .await?
            .ok_or(JournalError::Storage(CommitError::Stopped))
    }

    /// Appends `entry` durably, unless `give_up` resolves before the writer has taken it
    /// into a batch: then nothing is written and the answer is `Ok(None)`. Once taken, the
    /// append is waited for whatever `give_up` says (one commit at most), so an answer is
    /// never a failure for an entry the journal holds.
    ///
    /// # Errors
    /// When the entry could not be committed.
    pub async fn append_unless(
        &self,
        entry: &Entry,
        give_up: impl Future<Output = ()>,
    ) -> Result<Option<u64>, JournalError> {
        let bytes = serde_json::to_vec(entry).map_err(|e| JournalError::Encode(Arc::new(e)))?;
        let (answer, mut done) = oneshot::channel();
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.writer.submit(Job::Append {
            bytes,
            address: entry.address.canonical().to_owned(),
            abandoned: Arc::clone(&abandoned),
            answer,
        })?;
        let settled = tokio::select! {
            settled = &mut done => settled,
            () = give_up => {
                abandoned.store(true, Ordering::SeqCst);
                done.await
            }
        };
        match settled {
            Ok(Ok(seq)) => {
                self.appended.notify_waiters();
                Ok(Some(seq))
            }
            Ok(Err(e)) => Err(e.into()),
            // Dropped unanswered: the writer skipped it (abandoned) or stopped.
            Err(_) if abandoned.load(Ordering::SeqCst) => Ok(None),
            Err(_) => Err(CommitError::Stopped.into()),
        }
    }

    /// Removes a replayed entry. Returns true when no entry for its address is left.
    ///
    /// # Errors
    /// When the removal could not be committed.
    pub async fn remove(&self, seq: u64) -> Result<bool, JournalError> {
        let last = self.remove_many(vec![seq]).await?;
        Ok(last.first().copied().unwrap_or(false))
    }

    /// Removes replayed entries in one commit. Returns, per entry in `seqs`' order, true
    /// when no entry for its address is left (an entry removed before counts as none).
    ///
    /// # Errors
    /// When the removal could not be committed: none of them was removed.
    pub async fn remove_many(&self, seqs: Vec<u64>) -> Result<Vec<bool>, JournalError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let count = seqs.len() as u64;
        let (answer, done) = oneshot::channel();
        self.writer.submit(Job::Remove { seqs, answer })?;
        let last_for_address = done.await.map_err(|_| CommitError::Stopped)??;
        self.replayed.fetch_add(count, Ordering::Relaxed);
        metrics::counter!("rustle_journal_replayed_total").increment(count);
        Ok(last_for_address)
    }

    /// The oldest entries, up to `limit`, in order. An entry that cannot be decoded (it
    /// was never written by this gateway) is returned as `None` so the replay can drop it.
    ///
    /// # Errors
    /// When the file cannot be read, or is closed after a failed commit (the writer is then
    /// asked to reopen it, so the replay resumes without waiting for a client's write).
    pub fn oldest(&self, limit: usize) -> Result<Vec<(u64, Option<Entry>)>, JournalError> {
        let db = self.writer.database()?;
        let read = db.begin_read().map_err(CommitError::from)?;
        let table = read.open_table(ENTRIES).map_err(CommitError::from)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(CommitError::from)?.take(limit) {
            let (seq, bytes) = row.map_err(CommitError::from)?;
            out.push((seq.value(), serde_json::from_slice(bytes.value()).ok()));
        }
        Ok(out)
    }

    /// Entries not yet replayed.
    #[must_use]
    pub fn pending(&self) -> u64 {
        lock(&self.pending).count()
    }

    /// True when writes to `address` wait in the journal.
    #[must_use]
    pub fn pending_for(&self, address: &Address) -> bool {
        lock(&self.pending)
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

/// A change of the batch being committed, in arrival order.
enum Staged {
    Insert(u64, Vec<u8>),
    Remove(Vec<u64>),
}

/// An applied write waiting for its batch's commit.
enum Settle {
    Append {
        seq: u64,
        address: String,
        answer: oneshot::Sender<Result<u64, CommitError>>,
    },
    Remove {
        seqs: Vec<u64>,
        answer: oneshot::Sender<Result<Vec<bool>, CommitError>>,
    },
}

/// The journal's side of the writer thread.
struct Writes {
    /// The next sequence number. A failed batch does not give its numbers back: the reload
    /// after the reopen does, from what the disk holds.
    next: u64,
    staged: Vec<Staged>,
    pending: Arc<Mutex<Pending>>,
}

impl Batch for Writes {
    type Job = Job;
    type Pending = Settle;

    fn load(&mut self, db: &Database) -> Result<(), CommitError> {
        let txn = db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.commit()?;
        let (pending, next) = load(db)?;
        set_pending_gauge(pending.count());
        *lock(&self.pending) = pending;
        self.next = next;
        Ok(())
    }

    fn apply(&mut self, job: Job) -> Option<Settle> {
        Some(match job {
            Job::Append {
                bytes,
                address,
                abandoned,
                answer,
            } => {
                if abandoned.load(Ordering::SeqCst) {
                    // Its caller has answered a failure: it must not be written.
                    drop(answer);
                    return None;
                }
                let seq = self.next;
                self.next += 1;
                self.staged.push(Staged::Insert(seq, bytes));
                Settle::Append {
                    seq,
                    address,
                    answer,
                }
            }
            Job::Remove { seqs, answer } => {
                self.staged.push(Staged::Remove(seqs.clone()));
                Settle::Remove { seqs, answer }
            }
        })
    }

    fn dirty(&self) -> bool {
        !self.staged.is_empty()
    }

    fn write(&mut self, txn: &WriteTransaction) -> Result<(), CommitError> {
        let mut table = txn.open_table(ENTRIES)?;
        for change in &self.staged {
            match change {
                Staged::Insert(seq, bytes) => {
                    table.insert(seq, bytes.as_slice())?;
                }
                Staged::Remove(seqs) => {
                    for seq in seqs {
                        table.remove(seq)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The pending counts change with the commit: each write is counted before it is
    /// answered.
    fn committed(&mut self, settled: Vec<Settle>) {
        self.staged.clear();
        let mut counts = lock(&self.pending);
        for settle in settled {
            match settle {
                Settle::Append {
                    seq,
                    address,
                    answer,
                } => {
                    counts.add(seq, address);
                    let _ = answer.send(Ok(seq));
                }
                Settle::Remove { seqs, answer } => {
                    let last = seqs.into_iter().map(|seq| counts.forget(seq)).collect();
                    let _ = answer.send(Ok(last));
                }
            }
        }
        set_pending_gauge(counts.count());
    }

    fn failed(&mut self, settled: Vec<Settle>, error: &CommitError) {
        self.staged.clear();
        for settle in settled {
            match settle {
                Settle::Append { answer, .. } => drop(answer.send(Err(error.clone()))),
                Settle::Remove { answer, .. } => drop(answer.send(Err(error.clone()))),
            }
        }
    }
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
                    content: content.into(),
                    content_type: "application/json".into(),
                    metadata: serde_json::Map::new(),
                    created_at: Utc::now(),
                    hash,
                    size,
                    written_by: None,
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

    #[tokio::test]
    async fn replayed_entries_are_removed_together_and_the_pending_counts_follow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        let x1 = journal.append(&entry("x", 1)).await.expect("append");
        let y2 = journal.append(&entry("y", 2)).await.expect("append");
        let x3 = journal.append(&entry("x", 3)).await.expect("append");
        let (x, y) = (entry("x", 0).address, entry("y", 0).address);
        assert_eq!(
            journal.remove_many(vec![x1, y2]).await.expect("removed"),
            [false, true],
            "y has nothing left; x still has its third entry"
        );
        assert_eq!(journal.pending(), 1);
        assert!(journal.pending_for(&x) && !journal.pending_for(&y));
        assert_eq!(journal.replayed(), 2);
        let held: Vec<u64> = journal
            .oldest(10)
            .expect("read")
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        assert_eq!(held, [x3]);
        assert_eq!(
            journal.remove_many(vec![x3, x1]).await.expect("removed"),
            [true, false],
            "an entry removed before is no entry left"
        );
        assert_eq!(journal.pending(), 0);
        assert!(!journal.pending_for(&x));
        assert!(
            journal
                .remove_many(Vec::new())
                .await
                .expect("nothing")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_failed_commit_refuses_its_writes_and_the_journal_recovers_with_the_disk() {
        let storage = redb_commit::testing::FillableStorage::new();
        let disk = storage.clone();
        let journal = Journal::start(
            Path::new("memory"),
            Box::new(move || Database::builder().create_with_backend(disk.clone())),
        )
        .expect("open");
        let first = journal.append(&entry("x", 1)).await.expect("append");

        storage.fill_after(0);
        let refused = journal.append(&entry("x", 2)).await;
        assert!(
            matches!(&refused, Err(JournalError::Storage(e)) if e.is_unwritable()),
            "a write the disk did not take is refused: {refused:?}"
        );
        assert_eq!(journal.pending(), 1, "and not counted");
        assert!(
            journal.remove(first).await.is_err(),
            "the journal cannot reopen while the disk fails"
        );
        assert!(journal.oldest(10).is_err(), "closed until reopened");
        assert_eq!(journal.pending(), 1);

        storage.grow();
        // A reader finding the journal closed asks the writer to reopen it: the replay
        // resumes without waiting for a client's write.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while journal.oldest(10).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "the journal never reopened"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let third = journal
            .append(&entry("x", 3))
            .await
            .expect("the journal reopens once the disk works");
        assert!(third > first);
        let held: Vec<String> = journal
            .oldest(10)
            .expect("read")
            .into_iter()
            .filter_map(|(_, e)| e.map(|e| e.request_id))
            .collect();
        assert_eq!(held, ["r1", "r3"], "the acknowledged writes, nothing else");
        assert_eq!(journal.pending(), 2);
        assert!(!journal.remove(first).await.expect("remove"));
        assert!(journal.remove(third).await.expect("remove"));
        assert_eq!(journal.pending(), 0);
    }

    /// In-memory storage whose fsync waits while its gate is closed: holds the writer in
    /// the middle of a commit, so appends queue behind it.
    #[derive(Debug, Clone, Default)]
    struct GatedStorage {
        memory: StdArc<redb::backends::InMemoryBackend>,
        gate: StdArc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
        /// True while an fsync waits at the closed gate.
        held: StdArc<std::sync::atomic::AtomicBool>,
    }

    impl GatedStorage {
        fn set_closed(&self, closed: bool) {
            let (lock, wake) = &*self.gate;
            *lock.lock().expect("gate") = closed;
            wake.notify_all();
        }
    }

    impl redb::StorageBackend for GatedStorage {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.memory.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.memory.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.memory.set_len(len)
        }
        fn sync_data(&self) -> Result<(), std::io::Error> {
            let (lock, wake) = &*self.gate;
            let mut closed = lock.lock().expect("gate");
            while *closed {
                self.held.store(true, Ordering::SeqCst);
                closed = wake.wait(closed).expect("gate");
            }
            self.held.store(false, Ordering::SeqCst);
            drop(closed);
            self.memory.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.memory.write(offset, data)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_given_up_before_the_writer_took_it_is_not_written() {
        let storage = GatedStorage::default();
        let disk = storage.clone();
        let journal = Journal::start(
            Path::new("memory"),
            Box::new(move || Database::builder().create_with_backend(disk.clone())),
        )
        .expect("open");
        storage.set_closed(true);
        // The first append is taken into a batch and held in its fsync...
        let first = {
            let journal = StdArc::clone(&journal);
            tokio::spawn(async move {
                journal
                    .append_unless(&entry("a", 1), std::future::pending())
                    .await
            })
        };
        // ...(wait until the writer is inside that commit)...
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !storage.held.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < until,
                "the writer never committed"
            );
            tokio::task::yield_now().await;
        }
        // ...so the second waits in the queue, and its caller gives up at once.
        let second = {
            let journal = StdArc::clone(&journal);
            tokio::spawn(async move {
                journal
                    .append_unless(&entry("b", 2), std::future::ready(()))
                    .await
            })
        };
        tokio::task::yield_now().await;
        storage.set_closed(false);
        let first = first.await.expect("joins").expect("append");
        let second = second.await.expect("joins").expect("append");
        // Whichever way the race went, the answer is the truth: an append that returned
        // a number is in the journal, one given up is not.
        let held: Vec<u64> = journal
            .oldest(10)
            .expect("read")
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        assert_eq!(second, None, "queued behind a commit and given up: skipped");
        let first = first.expect("taken and committed");
        assert_eq!(held, [first], "the given-up append was not written");
        assert_eq!(journal.pending(), 1);
    }
}
