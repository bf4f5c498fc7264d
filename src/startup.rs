//! Building and running the application: state, router and layers, listener, shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use chrono::Utc;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa_swagger_ui::SwaggerUi;

use crate::backend::{self, ModeUnavailable};
use crate::config::{BackendMode, Cli, Config};
use crate::openapi;
use crate::state::{Active, AppState, EnvSource, LogReload, Shared};
use crate::store::local::LocalStore;
use crate::upstream::cluster::{Cluster, Jitters};

/// What the application needs besides its configuration.
#[derive(Clone)]
pub struct Options {
    /// The command line (reloads keep flag precedence).
    pub cli: Cli,
    /// Reads the environment (reloads re-read it).
    pub env: EnvSource,
    /// Changes the log filter, when this process installed the subscriber.
    pub log_reload: Option<LogReload>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("cli", &self.cli)
            .finish_non_exhaustive()
    }
}

impl Default for Options {
    /// No flags, an empty environment, no log reload: what tests use.
    fn default() -> Self {
        Self {
            cli: Cli::default(),
            env: Arc::new(Default::default),
            log_reload: None,
        }
    }
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configured mode is not available.
    #[error(transparent)]
    Mode(#[from] ModeUnavailable),
    /// The journal or the HTTP client could not be set up.
    #[error("{0}")]
    Environment(String),
    /// The TLS certificate or key cannot be used.
    #[error("RUSTLE_TLS_CERT/RUSTLE_TLS_KEY: {0}")]
    Tls(#[from] ucxl_service::tls::TlsError),
    /// The policy file is invalid (one line per problem).
    #[error("{}", .0.join("\n"))]
    Policy(Vec<String>),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// The shared state for `config`. The journal is opened in hybrid mode, and in any mode
/// when it exists and may hold writes to replay.
///
/// # Errors
/// A mode that cannot be served, or a journal that cannot be opened.
pub fn build_state(config: Config, options: Options) -> Result<AppState, StartupError> {
    // The recorder first: endpoints register their gauges when they are created.
    let metrics = crate::metrics::handle();
    let store = Arc::new(LocalStore::new(config.cache_max_entries));
    let cluster = Cluster::new(&config, Jitters::default())
        .map_err(|e| StartupError::Environment(format!("cannot build the HTTP client: {e}")))?;
    let journal_dir = config.journal_dir.clone();
    let open_journal = config.backend_mode == BackendMode::Hybrid
        || journal_dir.join(crate::store::journal::FILE_NAME).exists();
    let mode = config.backend_mode;
    let auth = crate::auth::Auth::new(&config, &(options.env)()).map_err(StartupError::Policy)?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(ucxl_service::tls::ServerTls::load(
            &ucxl_service::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
            },
        )?),
        _ => None,
    };
    let audit = crate::audit::Audit::open(&config.audit_log).map_err(|e| {
        StartupError::Environment(format!(
            "cannot open the audit log {:?}: {e}",
            config.audit_log
        ))
    })?;
    let watch = crate::watch::Hub::new(config.watch(), Some(Arc::clone(&store)));
    // The backend is chosen once the journal is open: start with the mock.
    let mock = Arc::new(crate::backend::mock::MockBackend::new(Arc::clone(&store)));
    let state = AppState::new(Shared {
        active: ArcSwap::from_pointee(Active {
            mode: BackendMode::Mock,
            backend: mock,
        }),
        config: ArcSwap::from_pointee(config),
        store,
        cluster: Arc::new(cluster),
        fallback: std::sync::OnceLock::new(),
        durable: std::sync::OnceLock::new(),
        background: CancellationToken::new(),
        in_flight: std::sync::atomic::AtomicUsize::new(0),
        metrics,
        cli: options.cli,
        env: options.env,
        log_reload: options.log_reload,
        admin_lock: tokio::sync::Mutex::new(()),
        auth,
        audit,
        watch,
        tls,
        started_at: Utc::now(),
        started: Instant::now(),
    });
    if open_journal {
        state
            .open_journal(&journal_dir)
            .map_err(StartupError::Environment)?;
    }
    if mode == BackendMode::Mock {
        state.open_durable().map_err(StartupError::Environment)?;
    }
    let backend = backend::for_mode(mode, state.parts())?;
    state.active.store(Arc::new(Active { mode, backend }));
    Ok(state)
}

/// The whole HTTP application: API routes, Swagger UI, fallbacks and layers.
///
/// Served inside [`crate::edge::Edge`] (CORS and compression). Layers of the data and
/// admin routes, outermost first: load shedding (a global guard, before any work), the
/// audit record (it sees every answer below it), authentication and the caller's rate;
/// then each route checks its operation on its address before reading a body.
pub fn router(state: AppState) -> Router {
    let (api, doc) = openapi::parts(|guarded| {
        guarded
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::auth::http::authenticate,
            ))
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::audit::record,
            ))
    });
    // No validator: Swagger UI would otherwise send the spec's URL to validator.swagger.io
    // from every deployment not on localhost (and show a broken badge offline).
    let docs = SwaggerUi::new("/docs")
        .url("/openapi.json", doc)
        .config(utoipa_swagger_ui::Config::from("/openapi.json").validator_url("none"));
    // `/mcp` gets the data routes' layers in the same order: its tools act as the
    // authenticated caller and count against the same in-flight limit.
    let mcp = Router::new()
        .route("/mcp", crate::mcp::route(state.clone()))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::http::authenticate,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::record,
        ));
    let api = api
        .merge(mcp)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::resilience::shed::shed_load,
        ));
    // RFC 9728 metadata: open, like the documents (it names no data).
    let metadata = Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            axum::routing::get(crate::auth::metadata::protected_resource),
        )
        .route(
            crate::auth::metadata::MCP_METADATA_PATH,
            axum::routing::get(crate::auth::metadata::protected_resource),
        );
    with_layers(api.merge(docs).merge(metadata)).with_state(state)
}

/// The service name in error bodies.
pub const SOURCE: ucxl_service::Source = ucxl_service::Source("rustle-gateway");

/// The gateway's request metrics.
pub const METRICS: ucxl_service::MetricNames = ucxl_service::MetricNames {
    requests_total: "rustle_requests_total",
    request_duration_seconds: "rustle_request_duration_seconds",
    requests_abandoned_total: "rustle_requests_abandoned_total",
};

/// Adds the fallbacks and the layer stack every route gets (see `ucxl_service`).
pub fn with_layers<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    ucxl_service::with_layers(routes, SOURCE, METRICS)
}

/// A bound, ready-to-run gateway.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
}

impl Application {
    /// Builds the state and binds the listener (port 0 picks a free port).
    ///
    /// # Errors
    /// An unavailable mode or a failed bind.
    pub async fn build(config: Config, options: Options) -> Result<Self, StartupError> {
        let listen = config.listen_addr;
        let state = build_state(config, options)?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartupError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: listen,
            source,
        })?;
        Ok(Self {
            listener,
            addr,
            state,
        })
    }

    /// The bound address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The application state.
    #[must_use]
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled, then drains open requests for at most the
    /// configured grace period.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> io::Result<()> {
        let (grace, header_read_timeout) = {
            let config = self.state.config.load();
            (config.shutdown_grace, config.client_header_timeout)
        };
        let upkeep = tokio::spawn(metrics_upkeep(self.state.clone(), shutdown.clone()));
        let background = self.state.background.clone();
        tokio::spawn(crate::resilience::health::run(
            Arc::clone(&self.state.cluster),
            background.clone(),
        ));
        // The SIGHUP handler is installed here, before "listening" is logged.
        tokio::spawn(crate::control::reload_on_hangup(
            self.state.clone(),
            background.clone(),
        ));
        if let Some(verifier) = self.state.auth.verifier() {
            tokio::spawn(verifier.refresh_jwks(background.clone()));
        }
        let config = self.state.config.load();
        if config.auth == crate::config::AuthMode::None && !self.addr.ip().is_loopback() {
            tracing::warn!(addr = %self.addr, "RUSTLE_AUTH=none on an address beyond loopback: anyone who can reach it may read, overwrite and delete every envelope");
        }
        if config.auth == crate::config::AuthMode::None
            && config.http.cors_allowed_origins == crate::config::CorsOrigins::Any
        {
            tracing::warn!(
                "RUSTLE_CORS_ALLOWED_ORIGINS=* with RUSTLE_AUTH=none: any web page opened in a browser that reaches this gateway may read, overwrite and delete every envelope"
            );
        }
        drop(config);
        if let Some(fallback) = self.state.fallback.get() {
            fallback.start(&background);
        }
        tokio::spawn(crate::watch::follow::run(
            Arc::clone(&self.state.watch),
            Arc::clone(&self.state.cluster),
            watch_source(&self.state),
            background.clone(),
        ));
        // Watch streams end when stopping starts: the drain need not wait for them.
        let (hub, stopping) = (Arc::clone(&self.state.watch), shutdown.clone());
        tokio::spawn(async move {
            stopping.cancelled().await;
            hub.end_all(&crate::watch::End::Shutdown);
        });
        tracing::info!(addr = %self.addr, mode = %self.state.active.load().mode, "listening");
        let listener = match self.state.tls.clone() {
            Some(tls) => ucxl_service::serve::Listener::tls(self.listener, tls),
            None => ucxl_service::serve::Listener::plain(self.listener),
        };
        let app = crate::edge::Edge::new(router(self.state.clone()), &self.state.config.load());
        let serve = ucxl_service::serve::serve(
            listener,
            app,
            ucxl_service::serve::Limits {
                header_read_timeout,
            },
            shutdown.clone().cancelled_owned(),
        );
        tokio::pin!(serve);
        let result = tokio::select! {
            result = &mut serve => result,
            () = shutdown.cancelled() => drain(serve, grace).await,
        };
        upkeep.abort();
        background.cancel();
        result
    }
}

/// What the feed followers read of the state: the mode and the node client settings.
fn watch_source(state: &AppState) -> crate::watch::follow::SourceFn {
    let state = state.clone();
    Arc::new(move || {
        let config = state.config.load();
        crate::watch::follow::Source {
            cluster: state.active.load().mode != BackendMode::Mock,
            client: crate::upstream::transport::ClientSettings::of(&config),
            heartbeat: (config.cache_max_lag / 4).clamp(
                std::time::Duration::from_millis(50),
                std::time::Duration::from_secs(5),
            ),
        }
    })
}

/// Waits for in-flight requests to finish, at most `grace`.
async fn drain(serve: impl Future<Output = io::Result<()>>, grace: Duration) -> io::Result<()> {
    tracing::info!(
        grace_ms = grace.as_millis(),
        "shutting down: draining open requests"
    );
    if let Ok(result) = tokio::time::timeout(grace, serve).await {
        tracing::info!("drained");
        result
    } else {
        tracing::warn!("drain time over: closing the remaining connections");
        Ok(())
    }
}

async fn metrics_upkeep(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(crate::metrics::UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => state.metrics.run_upkeep(),
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_open_requests_up_to_the_grace_period() {
        let started = Instant::now();
        let result = drain(
            std::future::pending::<io::Result<()>>(),
            Duration::from_secs(3),
        )
        .await;
        assert!(result.is_ok());
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(3),
            "gives up exactly at the grace period"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drain_returns_as_soon_as_the_server_finishes() {
        let started = Instant::now();
        let server = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Err(io::Error::other("listener failed"))
        };
        let result = drain(server, Duration::from_secs(3)).await;
        assert!(result.is_err(), "the server's own result is passed on");
        assert_eq!(started.elapsed(), Duration::from_millis(200));
    }
}
