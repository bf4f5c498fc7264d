//! Storage that fills up on purpose, for tests of what a store does when its disk is full:
//! an in-memory redb backend that takes a given number of bytes more, then refuses every
//! write, resize and fsync with `StorageFull` until it is grown again.

use std::sync::{Arc, Mutex, PoisonError};

use redb::StorageBackend;
use redb::backends::InMemoryBackend;

/// In-memory storage that can be filled on purpose. Clones share the same bytes and state,
/// so each reopen of a database can take a clone (as a reopened file sees the same disk).
#[derive(Debug, Clone, Default)]
pub struct FillableStorage {
    memory: Arc<InMemoryBackend>,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes of writes still taken; `None` is unlimited.
    room: Option<u64>,
    /// A write found no room: everything but reads fails until grown.
    full: bool,
    syncs: u64,
}

impl FillableStorage {
    /// Empty storage without a limit.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `bytes` more bytes of writes; the first write that does not fit fails, and so
    /// does every write, growth and fsync after it, until [`grow`](Self::grow).
    pub fn fill_after(&self, bytes: u64) {
        self.state().room = Some(bytes);
    }

    /// Takes writes again, without a limit (the filesystem was grown).
    pub fn grow(&self) {
        let mut state = self.state();
        state.room = None;
        state.full = false;
    }

    /// Whether a write found no room and the storage has not been grown since.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.state().full
    }

    /// The fsyncs that succeeded so far.
    #[must_use]
    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    fn refuse() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "no space left on device (FillableStorage)",
        )
    }
}

impl StorageBackend for FillableStorage {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.memory.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.memory.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if self.state().full && len > self.memory.len()? {
            return Err(Self::refuse());
        }
        self.memory.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut state = self.state();
        if state.full {
            return Err(Self::refuse());
        }
        state.syncs += 1;
        drop(state);
        self.memory.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut state = self.state();
        if state.full {
            return Err(Self::refuse());
        }
        if let Some(room) = state.room {
            let len = data.len() as u64;
            if len > room {
                state.full = true;
                return Err(Self::refuse());
            }
            state.room = Some(room - len);
        }
        drop(state);
        self.memory.write(offset, data)
    }
}
