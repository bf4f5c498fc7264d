//! The application state: built once in `startup`, cloned cheaply into every handler.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::time::Instant;

use std::sync::OnceLock;
use std::sync::atomic::AtomicUsize;

use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::backend::hybrid::Fallback;
use crate::config::{BackendMode, Cli, Config};
use crate::store::local::LocalStore;
use crate::upstream::cluster::Cluster;

/// Reads the environment as it is now (`POST /v1/admin/reload` re-reads it).
pub type EnvSource = Arc<dyn Fn() -> HashMap<String, String> + Send + Sync>;

/// Changes the log filter of the running process.
pub type LogReload = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The backend serving requests now, and the mode it implements.
#[derive(Debug, Clone)]
pub struct Active {
    /// The configured mode.
    pub mode: BackendMode,
    /// The backend that implements it.
    pub backend: Arc<dyn Backend>,
}

/// Shared state of one application.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] holds.
pub struct Shared {
    /// The configuration in force (swapped by reload).
    pub config: ArcSwap<Config>,
    /// The active backend (swapped by mode changes).
    pub active: ArcSwap<Active>,
    /// The local store (mock data, fallback data and cache).
    pub store: Arc<LocalStore>,
    /// The BZZZ endpoints and their resilience state (kept across mode switches).
    pub cluster: Arc<Cluster>,
    /// The journal and fallback state, once the journal is open.
    pub fallback: OnceLock<Arc<Fallback>>,
    /// The local store's disk, once opened (mock mode with `RUSTLE_LOCAL_STORE=disk`).
    pub durable: OnceLock<Arc<crate::store::durable::DurableStore>>,
    /// Cancelled when the application stops: background tasks end with it.
    pub background: CancellationToken,
    /// Requests in flight, bounded by `RUSTLE_MAX_IN_FLIGHT`.
    pub in_flight: AtomicUsize,
    /// The Prometheus handle `/metrics` renders.
    pub metrics: PrometheusHandle,
    /// The command line, for reloads (flags keep their precedence).
    pub cli: Cli,
    /// The environment, for reloads.
    pub env: EnvSource,
    /// Log filter reload, when this process owns the subscriber.
    pub log_reload: Option<LogReload>,
    /// Serialises mode changes and reloads.
    pub admin_lock: tokio::sync::Mutex<()>,
    /// Who may do what: the policy, JWT keys and request rates.
    pub auth: crate::auth::Auth,
    /// The audit log.
    pub audit: crate::audit::Audit,
    /// Watch streams and the merge of the change feeds.
    pub watch: Arc<crate::watch::Hub>,
    /// The HTTPS certificate, when the API is served over TLS (re-read on reload).
    pub tls: Option<ucxl_service::tls::ServerTls>,
    /// Wall-clock start time.
    pub started_at: DateTime<Utc>,
    /// Monotonic start time.
    pub started: Instant,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("mode", &self.active.load().mode)
            .field("config", &self.config.load())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Wraps the shared state.
    #[must_use]
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }

    /// What backends are built from.
    #[must_use]
    pub fn parts(&self) -> crate::backend::Parts<'_> {
        crate::backend::Parts {
            store: &self.store,
            cluster: &self.cluster,
            fallback: self.fallback.get(),
            durable: self.durable.get(),
        }
    }

    /// Opens the local store's disk in `RUSTLE_DATA_DIR` (once), loading what it holds,
    /// when the configuration keeps the store on disk; `None` when it lives in memory.
    ///
    /// # Errors
    /// When the data directory or the store file cannot be opened or read.
    pub fn open_durable(&self) -> Result<Option<Arc<crate::store::durable::DurableStore>>, String> {
        let config = self.config.load();
        if config.local_store != crate::config::LocalStorage::Disk {
            return Ok(None);
        }
        if let Some(durable) = self.durable.get() {
            return Ok(Some(Arc::clone(durable)));
        }
        let durable =
            crate::store::durable::DurableStore::open(&config.data_dir, Arc::clone(&self.store))
                .map_err(|e| ucxl::error::Chain(&e).to_string())?;
        Ok(Some(Arc::clone(self.durable.get_or_init(|| durable))))
    }

    /// Opens the journal in `dir` (once); [`Fallback::start`] starts its replayer.
    ///
    /// # Errors
    /// When the journal cannot be opened.
    pub fn open_journal(&self, dir: &std::path::Path) -> Result<Arc<Fallback>, String> {
        if let Some(fallback) = self.fallback.get() {
            return Ok(Arc::clone(fallback));
        }
        let journal = crate::store::journal::Journal::open(dir)
            .map_err(|e| ucxl::error::Chain(&e).to_string())?;
        let fallback = Fallback::new(
            journal,
            Arc::clone(&self.store),
            Arc::clone(&self.cluster),
            self.config.load().request_timeout,
        );
        Ok(Arc::clone(self.fallback.get_or_init(|| fallback)))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}
