//! The HTTP server of both services, plain HTTP/1.1 or HTTPS, with the connection limits
//! `axum::serve` lacks.
//!
//! `axum::serve` gives hyper no timer, so hyper's header read timeout never runs: a client
//! that opens a connection and sends nothing, or sends a request head one byte at a time
//! (slowloris), holds a socket, a task and a read buffer for as long as it likes. Here every
//! connection gets hyper's header read timeout, armed whenever the server waits for a request
//! head: on a new connection, and between the requests of a kept-alive one. A client that
//! has not sent a whole head within it is disconnected, so idle and slow connections cost at
//! most that long. Requests themselves keep their own deadlines (`X-Request-Timeout-Ms`).
//!
//! Shutdown is graceful as before: stop accepting, let requests in flight finish, resolve
//! when every connection is done. Idle connections, and new ones that have sent nothing,
//! close at once; one in the middle of sending a head keeps it up to the header read
//! timeout (the gateway's drain grace bounds that wait).
//!
//! With [`ServerTls`] every connection is TLS. The handshake runs in the connection's own
//! task, so a slow or silent client never holds up the accept loop, and must finish within
//! the header read timeout; a failed handshake (plain HTTP sent to the TLS port, an unknown
//! client certificate) closes that connection alone. The protocol is the one ALPN settled:
//! HTTP/2 for `h2`, otherwise HTTP/1.1 (HTTP/2 over TLS requires ALPN, RFC 9113 §3.2).
//! HTTP/1.1 gets the same header read timeout as plain connections. HTTP/2 has no such
//! timeout in hyper, so a connection whose first request has not arrived within it is
//! closed; after that, an idle HTTP/2 connection stays open until the client or shutdown
//! ends it. Shutdown drops handshakes still under way, as it closes plain connections that
//! have sent nothing; HTTP/2 connections get a GOAWAY and finish their streams.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::tls::ServerTls;

/// The header read timeout unless a service configures another.
/// (nginx's `client_header_timeout` default; it is also how long an idle kept-alive
/// connection stays open, so HTTP clients keeping connections in a pool should let them go
/// sooner).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the accept loop pauses after an accept error that is not about one connection
/// (out of file descriptors, say), so it neither spins nor floods the log; connections
/// already open are served meanwhile and close, freeing descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a client has to send a whole request head, on a new connection and between
    /// requests of a kept-alive one.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// Where [`serve`] accepts connections, and whether they speak TLS.
#[derive(Debug)]
pub struct Listener {
    /// The bound socket.
    pub tcp: TcpListener,
    /// TLS on every connection, or plain HTTP/1.1 when `None`.
    pub tls: Option<ServerTls>,
}

impl Listener {
    /// Plain HTTP/1.1 on `tcp`.
    #[must_use]
    pub fn plain(tcp: TcpListener) -> Self {
        Self { tcp, tls: None }
    }

    /// HTTPS (HTTP/2 or HTTP/1.1, by ALPN) on `tcp`.
    #[must_use]
    pub fn tls(tcp: TcpListener, tls: ServerTls) -> Self {
        Self {
            tcp,
            tls: Some(tls),
        }
    }
}

/// The client's address, in every request's extensions (rates per client, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// `request` with the client's address.
fn with_peer<B>(
    mut request: axum::http::Request<B>,
    peer: Option<std::net::SocketAddr>,
) -> axum::http::Request<B> {
    if let Some(peer) = peer {
        request.extensions_mut().insert(PeerAddr(peer));
    }
    request
}

/// Serves `app` on `listener` until `shutdown` completes, then waits for the open
/// connections to finish their requests.
///
/// # Errors
/// Never at present: accept errors are logged and the loop goes on. The `Result` keeps the
/// signature of `axum::serve`.
pub async fn serve(
    listener: Listener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let Listener { tcp: listener, tls } = listener;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let tls = tls.map(|tls| Arc::new(TlsConnections::new(&tls, limits)));
    let graceful = GracefulShutdown::new();
    // Cancelled when shutdown starts, to drop the TLS handshakes under way: they hold
    // graceful-shutdown watchers, which `graceful.shutdown()` waits for.
    let handshakes = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        if let Some(tls) = &tls {
            tokio::spawn(Arc::clone(tls).serve(
                stream,
                app.clone(),
                graceful.watcher(),
                handshakes.clone(),
            ));
            continue;
        }
        let app = app
            .clone()
            .map_request(move |request| with_peer(request, Some(peer)));
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts, resets and malformed heads: the client's doing, not ours.
                tracing::trace!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    handshakes.cancel();
    graceful.shutdown().await;
    Ok(())
}

/// What every TLS connection of one [`serve`] shares.
struct TlsConnections {
    acceptor: tokio_rustls::TlsAcceptor,
    /// The header read timeout, for the TLS handshake and an HTTP/2 connection's first request.
    header_read_timeout: Duration,
    /// For connections that negotiated `http/1.1`, or nothing.
    http1: auto::Builder<TokioExecutor>,
    /// For connections that negotiated `h2`.
    http2: auto::Builder<TokioExecutor>,
}

impl TlsConnections {
    fn new(tls: &ServerTls, limits: Limits) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        // The protocol is fixed per connection rather than sniffed from its first bytes:
        // ALPN has settled it, and sniffing would run before the header read timeout does.
        Self {
            acceptor: tls.acceptor(),
            header_read_timeout: limits.header_read_timeout,
            http1: builder.clone().http1_only(),
            http2: builder.http2_only(),
        }
    }

    /// Runs the handshake, then serves the connection under `watcher`.
    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        app: Router,
        watcher: Watcher,
        shutdown: CancellationToken,
    ) {
        let peer = stream.peer_addr().ok();
        let handshake = tokio::select! {
            handshake = tokio::time::timeout(
                self.header_read_timeout,
                self.acceptor.accept(stream),
            ) => handshake,
            () = shutdown.cancelled() => return,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            // Plain HTTP on the TLS port, an untrusted client certificate, a port scan:
            // the client's doing, and common.
            Ok(Err(e)) => {
                tracing::debug!(error = %e, ?peer, "TLS handshake failed");
                return;
            }
            Err(_elapsed) => {
                tracing::debug!(?peer, "TLS handshake timed out");
                return;
            }
        };
        let served = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.serve_http2(TokioIo::new(stream), app, peer, watcher)
                .await
        } else {
            let app = app.map_request(move |request| with_peer(request, peer));
            let connection = self
                .http1
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            watcher.watch(connection).await
        };
        if let Err(e) = served {
            tracing::trace!(error = %e, "connection ended");
        }
    }

    /// Serves an HTTP/2 connection, closing it if no request arrives within the header read
    /// timeout: hyper bounds neither the wait for the client's preface nor for its first
    /// request, so without this a client could hold the connection by sending nothing.
    async fn serve_http2(
        &self,
        io: TokioIo<tokio_rustls::server::TlsStream<TcpStream>>,
        app: Router,
        peer: Option<std::net::SocketAddr>,
        watcher: Watcher,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let requested = Arc::new(AtomicBool::new(false));
        let app = app.map_request({
            let requested = Arc::clone(&requested);
            move |request| {
                requested.store(true, Ordering::Relaxed);
                with_peer(request, peer)
            }
        });
        let connection = watcher.watch(
            self.http2
                .serve_connection(io, TowerToHyperService::new(app)),
        );
        tokio::pin!(connection);
        tokio::select! {
            served = &mut connection => return served,
            () = tokio::time::sleep(self.header_read_timeout) => {}
        }
        if requested.load(Ordering::Relaxed) {
            connection.await
        } else {
            tracing::debug!("no HTTP/2 request within the header read timeout; closing");
            Ok(())
        }
    }
}

/// Errors about one incoming connection (it was reset before it was accepted, say): the
/// next accept may succeed at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
