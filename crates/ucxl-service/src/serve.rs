//! The HTTP server of both services, plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge)
//! or HTTPS, with the connection limits `axum::serve` lacks.
//!
//! `axum::serve` gives hyper no timer, so hyper's header read timeout never runs: a client
//! that opens a connection and sends nothing, or sends a request head one byte at a time
//! (slowloris), holds a socket, a task and a read buffer for as long as it likes. Here every
//! connection must send its first request within the header read timeout, and an HTTP/1.1
//! connection gets hyper's header read timeout besides, armed whenever the server waits for
//! a request head: on a new connection, and between the requests of a kept-alive one. A
//! client that has not sent a whole head within it is disconnected, so idle and slow
//! connections cost at most that long. Requests themselves keep their own deadlines
//! (`X-Request-Timeout-Ms`).
//!
//! A plain connection speaks HTTP/2 when it opens with the HTTP/2 connection preface
//! ("prior knowledge", h2c: RFC 9113 §3.3), HTTP/1.1 otherwise; the first bytes decide (an
//! HTTP/1.1 request differs from the preface within its first two). The `Upgrade: h2c`
//! dance of RFC 7540 is not offered (RFC 9113 deprecated it).
//! HTTP/2 has no header read timeout in hyper: a connection whose first request has not
//! arrived within the header read timeout is closed; after that, an idle HTTP/2 connection
//! stays open until the client or shutdown ends it. HTTP/2 requests carry their authority
//! in `:authority`, not `Host`: the server copies it into `Host` when the client sent none,
//! as RFC 9113 §8.3.1 asks of an intermediary, so handlers read one header either way.
//!
//! Shutdown is graceful as before: stop accepting, let requests in flight finish, resolve
//! when every connection is done. Idle connections, and new ones that have sent nothing
//! (or too little to tell the protocol), close at once; an HTTP/1.1 connection in the middle of sending a head keeps it up to the
//! header read timeout (the gateway's drain grace bounds that wait); HTTP/2 connections get
//! a GOAWAY and finish their streams.
//!
//! With [`ServerTls`] every connection is TLS. The handshake runs in the connection's own
//! task, so a slow or silent client never holds up the accept loop, and must finish within
//! the header read timeout; a failed handshake (plain HTTP sent to the TLS port, an unknown
//! client certificate) closes that connection alone. The protocol is the one ALPN settled:
//! HTTP/2 for `h2`, otherwise HTTP/1.1 (HTTP/2 over TLS requires ALPN, RFC 9113 §3.2), with
//! the same limits as on plain connections. Shutdown drops handshakes still under way, as
//! it closes plain connections that have sent nothing.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::Request;
use hyper::body::Incoming;
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
    /// TLS on every connection, or plain HTTP (HTTP/1.1 and h2c) when `None`.
    pub tls: Option<ServerTls>,
}

impl Listener {
    /// Plain HTTP on `tcp`: HTTP/1.1, and HTTP/2 with prior knowledge.
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
pub struct PeerAddr(pub SocketAddr);

/// `request` with the client's address and, when it came over HTTP/2 without a `Host`
/// header, one made from its `:authority` (RFC 9113 §8.3.1), so that everything reading
/// `Host` (the MCP transport's DNS-rebinding check, the OAuth metadata) works the same over
/// either protocol.
fn prepare<B>(mut request: Request<B>, peer: SocketAddr) -> Request<B> {
    request.extensions_mut().insert(PeerAddr(peer));
    if request.version() == axum::http::Version::HTTP_2
        && !request.headers().contains_key(axum::http::header::HOST)
        && let Some(host) = request
            .uri()
            .authority()
            .and_then(|a| axum::http::HeaderValue::from_str(a.as_str()).ok())
    {
        request.headers_mut().insert(axum::http::header::HOST, host);
    }
    request
}

/// Serves `app` on `listener` until `shutdown` completes, then waits for the open
/// connections to finish their requests.
///
/// # Errors
/// Never at present: accept errors are logged and the loop goes on. The `Result` keeps the
/// signature of `axum::serve`.
pub async fn serve<S>(
    listener: Listener,
    app: S,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: App,
{
    let Listener { tcp: listener, tls } = listener;
    let connections = Arc::new(Connections::new(tls.as_ref(), limits));
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
        tokio::spawn(Arc::clone(&connections).serve(
            stream,
            peer,
            app.clone(),
            graceful.watcher(),
            handshakes.clone(),
        ));
    }
    drop(listener);
    handshakes.cancel();
    graceful.shutdown().await;
    Ok(())
}

/// What [`serve`] serves: an [`axum::Router`], or a service around one.
pub trait App:
    tower::Service<
        Request<Incoming>,
        Response = axum::response::Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<
            Request<Incoming>,
            Response = axum::response::Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// What every connection of one [`serve`] shares.
struct Connections {
    /// The TLS acceptor of an HTTPS listener.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The header read timeout, for the TLS handshake and the first request.
    header_read_timeout: Duration,
    /// For plain connections: HTTP/2 when they open with its preface, else HTTP/1.1.
    plain: auto::Builder<TokioExecutor>,
    /// For TLS connections that negotiated `http/1.1`, or nothing.
    http1: auto::Builder<TokioExecutor>,
    /// For TLS connections that negotiated `h2`.
    http2: auto::Builder<TokioExecutor>,
}

impl Connections {
    fn new(tls: Option<&ServerTls>, limits: Limits) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        // Over TLS the protocol is fixed per connection rather than sniffed from its first
        // bytes: ALPN has settled it.
        Self {
            tls: tls.map(ServerTls::acceptor),
            header_read_timeout: limits.header_read_timeout,
            plain: builder.clone(),
            http1: builder.clone().http1_only(),
            http2: builder.http2_only(),
        }
    }

    /// Serves one accepted connection under `watcher`; `shutdown` drops a TLS handshake
    /// still under way.
    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        app: impl App,
        watcher: Watcher,
        shutdown: CancellationToken,
    ) {
        let served = match &self.tls {
            None => {
                let io = TokioIo::new(stream);
                self.serve_io(&self.plain, io, app, peer, watcher).await
            }
            Some(acceptor) => {
                let handshake = tokio::select! {
                    handshake = tokio::time::timeout(
                        self.header_read_timeout,
                        acceptor.accept(stream),
                    ) => handshake,
                    () = shutdown.cancelled() => return,
                };
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    // Plain HTTP on the TLS port, an untrusted client certificate, a port
                    // scan: the client's doing, and common.
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, %peer, "TLS handshake failed");
                        return;
                    }
                    Err(_elapsed) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let builder = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    &self.http2
                } else {
                    &self.http1
                };
                self.serve_io(builder, TokioIo::new(stream), app, peer, watcher)
                    .await
            }
        };
        if let Err(e) = served {
            // Timeouts, resets and malformed heads: the client's doing, not ours.
            tracing::trace!(error = %e, "connection ended");
        }
    }

    /// Serves `io` with `builder`, closing the connection if no request arrives within the
    /// header read timeout. hyper bounds neither the wait for an HTTP/2 client's preface and
    /// first request nor, on a plain connection, the wait for the first bytes that tell the
    /// protocol: without this a client could hold the connection by sending nothing. (For
    /// HTTP/1.1 hyper's own header read timeout, armed once the protocol is known, comes
    /// out the same.)
    async fn serve_io<I>(
        &self,
        builder: &auto::Builder<TokioExecutor>,
        io: I,
        app: impl App,
        peer: SocketAddr,
        watcher: Watcher,
    ) -> Result<(), BoxError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let requested = Arc::new(AtomicBool::new(false));
        let app = app.map_request({
            let requested = Arc::clone(&requested);
            move |request| {
                requested.store(true, Ordering::Relaxed);
                prepare(request, peer)
            }
        });
        let connection = watcher.watch(builder.serve_connection(io, TowerToHyperService::new(app)));
        tokio::pin!(connection);
        tokio::select! {
            served = &mut connection => return served,
            () = tokio::time::sleep(self.header_read_timeout) => {}
        }
        if requested.load(Ordering::Relaxed) {
            connection.await
        } else {
            tracing::debug!(%peer, "no request within the header read timeout; closing");
            Ok(())
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
