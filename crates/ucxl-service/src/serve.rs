//! The HTTP/1.1 server of both services, with the connection limits `axum::serve` lacks.
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

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

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

/// Serves `app` on `listener` until `shutdown` completes, then waits for the open
/// connections to finish their requests.
///
/// # Errors
/// Never at present: accept errors are logged and the loop goes on. The `Result` keeps the
/// signature of `axum::serve`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
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
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts, resets and malformed heads: the client's doing, not ours.
                tracing::trace!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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
