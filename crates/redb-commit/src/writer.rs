//! The writer thread: it owns every write transaction of one redb database, applies
//! whatever jobs have queued up in one transaction with one fsync (group commit), answers
//! them only after the commit, and after a failed batch closes the database and reopens it
//! (reloading its owner's state from disk) for the next one.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, Durability, WriteTransaction};

use crate::error::{Chain, CommitError};

/// What a batch does: the owner's side of the writer.
///
/// For each batch the writer calls [`apply`](Batch::apply) for every job in arrival order,
/// then, when the batch is [`dirty`](Batch::dirty), [`write`](Batch::write) inside one
/// write transaction and commits it, then either [`committed`](Batch::committed) or
/// [`failed`](Batch::failed). After a failed batch the database is closed, and
/// [`load`](Batch::load) runs on the reopened one before the next batch is applied.
pub trait Batch: Send + 'static {
    /// A change sent to the writer (usually with the channel its caller waits on).
    type Job: Send + 'static;
    /// What an applied job waits with until its batch is durable (usually its answer).
    type Pending: Send;

    /// Derives the owner's in-memory state from `db` (and creates its tables): when the
    /// writer starts, and after every reopen, so state changed by a failed batch never
    /// outlives it.
    ///
    /// # Errors
    /// When the database cannot be read; the open then fails.
    fn load(&mut self, db: &Database) -> Result<(), CommitError>;

    /// Applies `job` on top of the batch so far. Returns what to settle after the commit,
    /// or `None` when the job is answered already (a refusal that needs no disk).
    fn apply(&mut self, job: Self::Job) -> Option<Self::Pending>;

    /// Whether the batch so far has anything to write. A batch that has not is settled as
    /// committed without a transaction (and without an fsync).
    fn dirty(&self) -> bool;

    /// Writes what the batch applied into its one write transaction.
    ///
    /// # Errors
    /// A table that cannot be opened or written: the batch fails.
    fn write(&mut self, txn: &WriteTransaction) -> Result<(), CommitError>;

    /// The batch is durable: publish what it changed, then answer its jobs.
    fn committed(&mut self, pending: Vec<Self::Pending>);

    /// Nothing of the batch is durable: drop what it staged and answer every job of it
    /// with `error` (none of them was acknowledged).
    fn failed(&mut self, pending: Vec<Self::Pending>, error: &CommitError);

    /// Housekeeping after a batch that wrote something, once its jobs are answered (so it
    /// adds nothing to their latency, only to the next batch's wait): compaction, say, in
    /// transactions of its own. The default does nothing.
    ///
    /// # Errors
    /// A transaction that failed: the writer closes the database as after a failed batch,
    /// and the next batch reopens it and reloads the owner's state.
    fn tidy(&mut self, db: &Database) -> Result<(), CommitError> {
        let _ = db;
        Ok(())
    }
}

/// How the writer runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The writer thread's name, also the `database` field of its log lines.
    pub name: String,
    /// Most jobs applied in one transaction (default 512): bounds the latency of the last
    /// job of a burst and the memory a batch stages.
    pub max_batch: usize,
    /// Extra attempts to open the database while its file is still locked (default 10): a
    /// reader that held the closed database releases it a moment later.
    pub open_retries: u32,
    /// Wait between those attempts (default 10 ms).
    pub open_retry_interval: Duration,
}

impl Settings {
    /// The defaults, with the thread named `name`.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_batch: 512,
            open_retries: 10,
            open_retry_interval: Duration::from_millis(10),
        }
    }
}

/// Opens the database: at start, and again after every failed batch.
pub type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;

enum Message<J> {
    Job(J),
    /// Reopen the database if a failed batch closed it (a reader found it closed).
    Reopen,
}

/// The open database, shared by the writer and readers; empty between a failed batch and
/// the reopen.
type Slot = Mutex<Option<Arc<Database>>>;

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<Arc<Database>>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The handle of a running writer. Dropping it lets the writer finish the jobs already
/// queued and waits for it, so the database file is released when this returns.
pub struct GroupCommit<J> {
    name: String,
    queue: Option<Sender<Message<J>>>,
    slot: Arc<Slot>,
    thread: Option<JoinHandle<()>>,
}

impl<J> std::fmt::Debug for GroupCommit<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("name", &self.name)
            .field("open", &lock(&self.slot).is_some())
            .finish_non_exhaustive()
    }
}

impl<J: Send + 'static> GroupCommit<J> {
    /// Opens the database with `open`, loads `batch`'s state from it (on this thread, so an
    /// unreadable database is reported here) and starts the writer thread.
    ///
    /// # Errors
    /// When the database cannot be opened or loaded, or the thread cannot start.
    pub fn start<B: Batch<Job = J>>(
        settings: Settings,
        open: Opener,
        batch: B,
    ) -> Result<Self, CommitError> {
        let slot = Arc::new(Slot::default());
        let mut writer = Writer {
            batch,
            open,
            slot: Arc::clone(&slot),
            db: None,
            opened: false,
            settings: settings.clone(),
        };
        writer.database()?;
        let (queue, jobs) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(settings.name.clone())
            .spawn(move || writer.run(&jobs))?;
        Ok(Self {
            name: settings.name,
            queue: Some(queue),
            slot,
            thread: Some(thread),
        })
    }

    /// Queues `job`; the owner answers it after its batch commits or fails.
    ///
    /// # Errors
    /// [`CommitError::Stopped`] when the writer has stopped (the job is dropped).
    pub fn submit(&self, job: J) -> Result<(), CommitError> {
        self.send(Message::Job(job))
    }

    fn send(&self, message: Message<J>) -> Result<(), CommitError> {
        self.queue
            .as_ref()
            .ok_or(CommitError::Stopped)?
            .send(message)
            .map_err(|_| CommitError::Stopped)
    }

    /// The open database, for readers (never for writes: those go through the writer).
    ///
    /// # Errors
    /// [`CommitError::Closed`] after a failed batch until the writer reopened the database;
    /// the call asks the writer to reopen it, so readers need not wait for the next write.
    pub fn database(&self) -> Result<Arc<Database>, CommitError> {
        if let Some(db) = lock(&self.slot).as_ref() {
            return Ok(Arc::clone(db));
        }
        self.send(Message::Reopen)?;
        Err(CommitError::Closed)
    }
}

impl<J> Drop for GroupCommit<J> {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what it holds and release the file.
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread's state.
struct Writer<B> {
    batch: B,
    open: Opener,
    slot: Arc<Slot>,
    /// The open database; none after a failed batch until the next one reopens it.
    db: Option<Arc<Database>>,
    /// Whether the database was open before (a later open is a recovery, and logged).
    opened: bool,
    settings: Settings,
}

impl<B: Batch> Writer<B> {
    /// Runs batches until every handle is gone.
    fn run(mut self, queue: &Receiver<Message<B::Job>>) {
        while let Ok(first) = queue.recv() {
            let mut jobs = Vec::new();
            let mut message = Some(first);
            while let Some(m) = message.take() {
                if let Message::Job(job) = m {
                    jobs.push(job);
                }
                if jobs.len() < self.settings.max_batch {
                    message = queue.try_recv().ok();
                }
            }
            self.run_batch(jobs);
        }
    }

    /// Applies `jobs` on the (re)opened database and commits them in one transaction.
    fn run_batch(&mut self, jobs: Vec<B::Job>) {
        // Reopened (and the owner's state reloaded) before anything is applied on it.
        let opened = self.database();
        if jobs.is_empty() {
            // A reopen asked for by a reader.
            if let Err(e) = opened {
                tracing::warn!(database = %self.settings.name, error = %Chain(&e), "the database cannot be reopened yet");
            }
            return;
        }
        let count = jobs.len();
        let pending: Vec<B::Pending> = jobs
            .into_iter()
            .filter_map(|job| self.batch.apply(job))
            .collect();
        let written = if self.batch.dirty() {
            opened.and_then(|db| self.commit(&db).map(|()| Some(db)))
        } else {
            // Nothing to write needs no disk, even a failing one.
            Ok(None)
        };
        match written {
            Ok(db) => {
                self.batch.committed(pending);
                if let Some(db) = db
                    && let Err(e) = self.batch.tidy(&db)
                {
                    tracing::error!(database = %self.settings.name, error = %Chain(&e), "housekeeping after a batch failed; the database will be reopened");
                    drop(db);
                    self.close();
                }
            }
            Err(e) => {
                tracing::error!(database = %self.settings.name, jobs = count, error = %Chain(&e), "a batch failed to commit; its jobs were refused");
                // redb refuses all use of a database after an I/O error: close it, so the
                // next batch reopens it and works again once the storage does.
                self.close();
                self.batch.failed(pending, &e);
            }
        }
    }

    /// One transaction, one fsync.
    fn commit(&mut self, db: &Database) -> Result<(), CommitError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        self.batch.write(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// The open database, opened (and the owner's state loaded from it) when closed.
    fn database(&mut self) -> Result<Arc<Database>, CommitError> {
        if let Some(db) = &self.db {
            return Ok(Arc::clone(db));
        }
        let db = Arc::new(self.open()?);
        self.batch.load(&db)?;
        *lock(&self.slot) = Some(Arc::clone(&db));
        self.db = Some(Arc::clone(&db));
        if self.opened {
            tracing::warn!(database = %self.settings.name, "the database was reopened after a failed batch");
        }
        self.opened = true;
        Ok(db)
    }

    /// Opens the database, retrying while its file is locked: a reader may still hold the
    /// database closed after a failure for a moment.
    fn open(&self) -> Result<Database, CommitError> {
        let mut tries = 0;
        loop {
            match (self.open)() {
                Ok(db) => return Ok(db),
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if tries < self.settings.open_retries =>
                {
                    tries += 1;
                    std::thread::sleep(self.settings.open_retry_interval);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn close(&mut self) {
        if self.db.take().is_some() {
            *lock(&self.slot) = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::mpsc::{Receiver, Sender, channel};

    use redb::{ReadableDatabase, ReadableTable, TableDefinition};

    use super::*;
    use crate::testing::FillableStorage;

    const LOG: TableDefinition<u64, u64> = TableDefinition::new("log");

    type Answer = Sender<Result<u64, CommitError>>;

    enum Job {
        /// Appends a value under the next sequence number.
        Append(u64, Answer),
        /// Writes nothing; answered with the current count of values.
        Count(Answer),
        /// Holds the writer inside its batch until released, so the jobs queued meanwhile
        /// all wait for the next batch.
        Gate {
            entered: Sender<()>,
            release: Receiver<()>,
        },
    }

    /// What the test sees of the writer: the published values, how often state was loaded
    /// and the size of every committed batch.
    #[derive(Default)]
    struct Seen {
        values: BTreeMap<u64, u64>,
        loads: usize,
        batches: Vec<usize>,
    }

    /// A log of values with sequence numbers. Like the journal, it takes the next sequence
    /// number in `apply`, before the commit, and does not give it back when the batch
    /// fails: only the reload after the reopen makes it right again.
    struct Log {
        next: u64,
        staged: Vec<(u64, u64)>,
        seen: Arc<Mutex<Seen>>,
        /// When set, housekeeping drops all but the last this many values from the disk.
        keep: Option<u64>,
    }

    impl Batch for Log {
        type Job = Job;
        type Pending = (Option<u64>, Answer);

        fn load(&mut self, db: &Database) -> Result<(), CommitError> {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?;
            txn.commit()?;
            let read = db.begin_read()?;
            let table = read.open_table(LOG)?;
            let mut values = BTreeMap::new();
            for row in table.iter()? {
                let (seq, value) = row?;
                values.insert(seq.value(), value.value());
            }
            self.next = values.keys().next_back().map_or(1, |last| last + 1);
            let mut seen = self.seen.lock().expect("seen");
            seen.values = values;
            seen.loads += 1;
            Ok(())
        }

        fn apply(&mut self, job: Job) -> Option<Self::Pending> {
            match job {
                Job::Append(value, answer) => {
                    let seq = self.next;
                    self.next += 1;
                    self.staged.push((seq, value));
                    Some((Some(seq), answer))
                }
                Job::Count(answer) => Some((None, answer)),
                Job::Gate { entered, release } => {
                    entered.send(()).expect("the test waits");
                    release.recv().expect("the test releases");
                    None
                }
            }
        }

        fn dirty(&self) -> bool {
            !self.staged.is_empty()
        }

        fn write(&mut self, txn: &WriteTransaction) -> Result<(), CommitError> {
            let mut table = txn.open_table(LOG)?;
            for (seq, value) in &self.staged {
                table.insert(seq, value)?;
            }
            Ok(())
        }

        fn committed(&mut self, pending: Vec<Self::Pending>) {
            let mut seen = self.seen.lock().expect("seen");
            if !self.staged.is_empty() {
                seen.batches.push(self.staged.len());
            }
            seen.values.extend(self.staged.drain(..));
            let count = seen.values.len() as u64;
            drop(seen);
            for (seq, answer) in pending {
                let _ = answer.send(Ok(seq.unwrap_or(count)));
            }
        }

        fn failed(&mut self, pending: Vec<Self::Pending>, error: &CommitError) {
            self.staged.clear();
            for (_, answer) in pending {
                let _ = answer.send(Err(error.clone()));
            }
        }

        fn tidy(&mut self, db: &Database) -> Result<(), CommitError> {
            let Some(keep) = self.keep else {
                return Ok(());
            };
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LOG)?;
                let below = self.next.saturating_sub(keep);
                table.retain_in(..below, |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        }
    }

    fn start(
        storage: &FillableStorage,
        settings: Settings,
    ) -> (GroupCommit<Job>, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let log = Log {
            next: 1,
            staged: Vec::new(),
            seen: Arc::clone(&seen),
            keep: None,
        };
        let storage = storage.clone();
        let open: Opener =
            Box::new(move || Database::builder().create_with_backend(storage.clone()));
        let writer = GroupCommit::start(settings, open, log).expect("starts");
        (writer, seen)
    }

    fn settings() -> Settings {
        Settings {
            open_retry_interval: Duration::ZERO,
            ..Settings::new("test-log")
        }
    }

    fn append(writer: &GroupCommit<Job>, value: u64) -> Receiver<Result<u64, CommitError>> {
        let (answer, outcome) = channel();
        writer.submit(Job::Append(value, answer)).expect("queued");
        outcome
    }

    fn outcome(answer: &Receiver<Result<u64, CommitError>>) -> Result<u64, CommitError> {
        answer.recv().expect("answered")
    }

    /// Holds the writer until the returned sender is used (or dropped).
    fn hold(writer: &GroupCommit<Job>) -> Sender<()> {
        let (entered, inside) = channel();
        let (release, released) = channel();
        writer
            .submit(Job::Gate {
                entered,
                release: released,
            })
            .expect("queued");
        inside.recv().expect("the writer holds the gate");
        release
    }

    /// What the database holds, read directly.
    fn stored(db: &Database) -> BTreeMap<u64, u64> {
        let read = db.begin_read().expect("read");
        let table = read.open_table(LOG).expect("table");
        table
            .iter()
            .expect("iter")
            .map(|row| {
                let (seq, value) = row.expect("row");
                (seq.value(), value.value())
            })
            .collect()
    }

    #[test]
    fn the_jobs_waiting_together_commit_in_one_transaction_with_one_fsync() {
        let storage = FillableStorage::new();
        let (writer, seen) = start(&storage, settings());
        let before = storage.syncs();
        assert_eq!(outcome(&append(&writer, 1)).expect("committed"), 1);
        let one_commit = storage.syncs() - before;
        assert!(one_commit > 0, "a commit is fsynced");

        let release = hold(&writer);
        let answers: Vec<_> = (0..50).map(|n| append(&writer, n)).collect();
        let before = storage.syncs();
        release.send(()).expect("released");
        let seqs: Vec<u64> = answers
            .iter()
            .map(|a| outcome(a).expect("committed"))
            .collect();
        assert_eq!(seqs, (2..52).collect::<Vec<_>>(), "in arrival order");
        assert_eq!(
            storage.syncs() - before,
            one_commit,
            "fifty jobs cost the fsyncs of one"
        );
        assert_eq!(seen.lock().expect("seen").batches, [1, 50]);
    }

    #[test]
    fn housekeeping_follows_each_committed_batch() {
        let storage = FillableStorage::new();
        let open: Opener = {
            let storage = storage.clone();
            Box::new(move || Database::builder().create_with_backend(storage.clone()))
        };
        let log = Log {
            next: 1,
            staged: Vec::new(),
            seen: Arc::default(),
            keep: Some(2),
        };
        let writer = GroupCommit::start(settings(), open, log).expect("starts");
        for value in [10, 20, 30, 40] {
            outcome(&append(&writer, value)).expect("committed");
        }
        // Jobs run in order: once the writer holds this gate, the last batch is tidied.
        hold(&writer).send(()).expect("released");
        let db = writer.database().expect("open");
        assert_eq!(stored(&db), BTreeMap::from([(3, 30), (4, 40)]));
    }

    #[test]
    fn a_batch_is_bounded() {
        let storage = FillableStorage::new();
        let (writer, seen) = start(
            &storage,
            Settings {
                max_batch: 2,
                ..settings()
            },
        );
        let release = hold(&writer);
        let answers: Vec<_> = (0..5).map(|n| append(&writer, n)).collect();
        release.send(()).expect("released");
        for answer in &answers {
            outcome(answer).expect("committed");
        }
        assert_eq!(seen.lock().expect("seen").batches, [2, 2, 1]);
    }

    #[test]
    fn a_failed_batch_refuses_every_job_and_the_writer_recovers_with_the_storage() {
        let storage = FillableStorage::new();
        let (writer, seen) = start(&storage, settings());
        assert_eq!(outcome(&append(&writer, 10)).expect("committed"), 1);

        let release = hold(&writer);
        let answers: Vec<_> = [20, 30, 40].map(|v| append(&writer, v)).into();
        storage.fill_after(1024);
        release.send(()).expect("released");
        for answer in &answers {
            let e = outcome(answer).expect_err("refused");
            assert!(e.is_unwritable(), "{e}");
        }
        assert!(storage.is_full());
        assert_eq!(
            seen.lock().expect("seen").values,
            BTreeMap::from([(1, 10)]),
            "nothing of the failed batch is published"
        );
        let e = outcome(&append(&writer, 45)).expect_err("still full");
        assert!(e.is_unwritable(), "while the storage is full: {e}");
        assert_eq!(
            seen.lock().expect("seen").loads,
            1,
            "reopening needs writes too: it waits for the storage"
        );

        storage.grow();
        assert_eq!(
            outcome(&append(&writer, 50)).expect("committed"),
            2,
            "the next batch commits, numbered from what the disk holds"
        );
        let seen_now = seen.lock().expect("seen");
        assert_eq!(seen_now.loads, 2, "the state was reloaded after the reopen");
        assert_eq!(seen_now.values, BTreeMap::from([(1, 10), (2, 50)]));
        drop(seen_now);
        let db = writer.database().expect("open");
        assert_eq!(stored(&db), BTreeMap::from([(1, 10), (2, 50)]));
        drop(db);

        drop(writer);
        let reopened = Database::builder()
            .create_with_backend(storage.clone())
            .expect("reopens");
        assert_eq!(
            stored(&reopened),
            BTreeMap::from([(1, 10), (2, 50)]),
            "durable: the acknowledged values, nothing of the failed batch"
        );
    }

    #[test]
    fn a_reader_finding_the_database_closed_gets_it_reopened_without_a_write() {
        let storage = FillableStorage::new();
        let (writer, seen) = start(&storage, settings());
        assert_eq!(outcome(&append(&writer, 10)).expect("committed"), 1);
        storage.fill_after(0);
        assert!(outcome(&append(&writer, 20)).is_err());
        storage.grow();

        assert!(matches!(writer.database(), Err(CommitError::Closed)));
        // Jobs run in order: once the writer holds this gate, it has handled the reopen.
        drop(hold(&writer));
        let db = writer.database().expect("reopened");
        assert_eq!(stored(&db), BTreeMap::from([(1, 10)]));
        assert_eq!(seen.lock().expect("seen").loads, 2);
    }

    #[test]
    fn a_batch_with_nothing_to_write_needs_no_disk() {
        let storage = FillableStorage::new();
        let (writer, _) = start(&storage, settings());
        assert_eq!(outcome(&append(&writer, 10)).expect("committed"), 1);
        storage.fill_after(0);
        let syncs = storage.syncs();
        let (answer, count) = channel();
        writer.submit(Job::Count(answer)).expect("queued");
        assert_eq!(outcome(&count).expect("answered"), 1);
        assert_eq!(storage.syncs(), syncs, "no fsync");
        assert!(!storage.is_full(), "no write");
    }

    #[test]
    fn full_storage_at_start_is_reported_unwritable() {
        let storage = FillableStorage::new();
        storage.fill_after(0);
        let open: Opener = {
            let storage = storage.clone();
            Box::new(move || Database::builder().create_with_backend(storage.clone()))
        };
        let log = Log {
            next: 1,
            staged: Vec::new(),
            seen: Arc::default(),
            keep: None,
        };
        let e = GroupCommit::start(settings(), open, log).expect_err("cannot open");
        assert!(e.is_unwritable(), "{e}");
    }

    #[test]
    fn dropping_the_writer_releases_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.redb");
        for round in 1..=3 {
            let file = path.clone();
            let open: Opener = Box::new(move || Database::create(&file));
            let seen = Arc::new(Mutex::new(Seen::default()));
            let log = Log {
                next: 1,
                staged: Vec::new(),
                seen: Arc::clone(&seen),
                keep: None,
            };
            let writer = GroupCommit::start(settings(), open, log).expect("the file is free");
            assert_eq!(outcome(&append(&writer, round)).expect("committed"), round);
            drop(writer);
            assert_eq!(seen.lock().expect("seen").values.len() as u64, round);
        }
    }

    #[test]
    fn jobs_sent_after_the_writer_stopped_are_refused() {
        let storage = FillableStorage::new();
        let (mut writer, _) = start(&storage, settings());
        writer.queue = None;
        let (answer, _) = channel();
        assert!(matches!(
            writer.submit(Job::Append(1, answer)),
            Err(CommitError::Stopped)
        ));
    }
}
