//! Starting and stopping a node: store, network, HTTP listener, graceful shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use libp2p::Multiaddr;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, NodeState};
use crate::auth::TokenGuard;
use crate::config::NodeConfig;
use crate::p2p::{self, P2pError};
use crate::store::{NodeStore, StoreError, StoreSettings};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The record store failed to open.
    #[error(
        "cannot open the record store in {dir}: {}",
        ucxl::error::Chain(source)
    )]
    Store {
        /// The data directory.
        dir: String,
        /// Why.
        source: StoreError,
    },
    /// The network failed to start.
    #[error(transparent)]
    P2p(#[from] P2pError),
    /// The TLS certificate, key or client CA cannot be used.
    #[error("BZZZ_TLS_CERT/BZZZ_TLS_KEY/BZZZ_TLS_CLIENT_CA: {0}")]
    Tls(#[from] ucxl_service::tls::TlsError),
    /// The HTTP listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Histograms with the gateway's buckets (a summary's quantiles cannot be
            // aggregated across nodes).
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    ucxl_service::observe::LATENCY_BUCKETS,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new())
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            metrics::describe_gauge!("bzzz_records", "addresses this node holds");
            metrics::describe_gauge!("bzzz_peers", "connected peers");
            metrics::describe_counter!(
                "bzzz_replications_total",
                "writes replicated to a majority, by outcome"
            );
            metrics::describe_counter!(
                "bzzz_records_refused_total",
                "records from peers refused (undecodable, wrong key, too large)"
            );
            metrics::describe_counter!(
                "bzzz_pushes_busy_total",
                "replication pushes from peers answered busy (too much being merged already)"
            );
            metrics::describe_counter!(
                "bzzz_requests_total",
                "HTTP requests by route template, method and status"
            );
            metrics::describe_histogram!(
                "bzzz_request_duration_seconds",
                metrics::Unit::Seconds,
                "HTTP request latency by route template"
            );
            metrics::describe_counter!(
                "bzzz_requests_abandoned_total",
                "HTTP requests whose client went away before the answer (not counted in bzzz_requests_total), by route template"
            );
            handle
        })
        .clone()
}

/// A started node.
#[derive(Debug)]
pub struct Node {
    listener: TcpListener,
    tls: Option<ucxl_service::tls::ServerTls>,
    http_addr: SocketAddr,
    p2p_addr: Multiaddr,
    state: NodeState,
    network: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Node {
    /// Opens the store, starts the network and binds the HTTP listener.
    ///
    /// # Errors
    /// [`StartError`].
    pub async fn start(
        config: &NodeConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let store =
            NodeStore::open(&config.data_dir, StoreSettings::of(config)).map_err(|source| {
                StartError::Store {
                    dir: config.data_dir.display().to_string(),
                    source,
                }
            })?;
        Self::start_with_store(config, store, shutdown).await
    }

    /// Starts the network and binds the HTTP listener over `store`, opened by the caller
    /// (on other storage than `BZZZ_DATA_DIR`'s file, say).
    ///
    /// # Errors
    /// [`StartError`].
    pub async fn start_with_store(
        config: &NodeConfig,
        store: NodeStore,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let tls = match &config.tls {
            Some(files) => Some(ucxl_service::tls::ServerTls::load(files)?),
            None => None,
        };
        let store = Arc::new(store);
        metrics::gauge!("bzzz_records").set(u32::try_from(store.len()).unwrap_or(u32::MAX));
        let (p2p, p2p_addr, network) =
            p2p::start(config, Arc::clone(&store), shutdown.clone()).await?;
        let listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| StartError::Http {
                addr: config.http_addr,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Http {
            addr: config.http_addr,
            source,
        })?;
        let state = NodeState {
            store,
            p2p,
            metrics: metrics_handle(),
            node_name: config.node_name.clone(),
            replication_factor: config.replication_factor,
            clustered: !config.bootstrap.is_empty(),
            max_body_bytes: config.max_body_bytes,
            request_timeout: config.request_timeout,
            auth: config
                .api_token
                .as_ref()
                .map(|token| Arc::new(TokenGuard::new(token))),
            private_network: config.swarm_key.is_some(),
            watch: api::WatchSettings {
                heartbeat: config.feed_heartbeat,
                content_limit: config.max_record_bytes as u64,
                stop: shutdown.clone(),
            },
        };
        tracing::info!(
            http = %http_addr,
            p2p = %p2p_addr,
            peer_id = %state.p2p.view().peer_id,
            records = state.store.len(),
            feed = %state.store.feed().position().id,
            feed_seq = state.store.feed().position().current_seq,
            node = %config.node_name,
            private_network = state.private_network,
            // A one-way fingerprint (as go-libp2p logs it): operators can compare keys
            // across nodes without the key being written anywhere.
            swarm_key_fingerprint = config.swarm_key.map(|k| k.fingerprint().to_string()),
            api_token = state.auth.is_some(),
            tls = tls.is_some(),
            "ready"
        );
        Ok(Self {
            listener,
            tls,
            http_addr,
            p2p_addr,
            state,
            network,
            shutdown,
        })
    }

    /// The bound HTTP address.
    #[must_use]
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The p2p address, with `/p2p/<id>`.
    #[must_use]
    pub fn p2p_addr(&self) -> &Multiaddr {
        &self.p2p_addr
    }

    /// Serves until the shutdown token is cancelled, then stops the network. Records are
    /// committed to disk as they are written, so nothing is pending at exit.
    ///
    /// # Errors
    /// When the HTTP server fails.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let app = api::router(self.state);
        let listener = match self.tls {
            Some(tls) => {
                tokio::spawn(reload_on_hangup(tls.clone(), self.shutdown.clone()));
                ucxl_service::serve::Listener::tls(self.listener, tls)
            }
            None => ucxl_service::serve::Listener::plain(self.listener),
        };
        let served = ucxl_service::serve::serve(
            listener,
            app,
            ucxl_service::serve::Limits::default(),
            self.shutdown.clone().cancelled_owned(),
        )
        .await;
        self.shutdown.cancel();
        if let Err(e) = self.network.await {
            tracing::error!(error = %e, "network task failed");
        }
        tracing::info!("stopped");
        served
    }
}

/// Re-reads the certificate and key on every SIGHUP (a renewed certificate needs no
/// restart); a broken pair is logged and the current one stays.
async fn reload_on_hangup(tls: ucxl_service::tls::ServerTls, stop: CancellationToken) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        loop {
            tokio::select! {
                received = hangups.recv() => if received.is_none() { return },
                () = stop.cancelled() => return,
            }
            match tls.reload() {
                Ok(()) => tracing::info!(signal = "SIGHUP", "TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(signal = "SIGHUP", error = %e, "TLS certificate not reloaded; the current one stays");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (tls, stop);
    }
}
