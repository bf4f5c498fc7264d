//! Request bodies over real sockets: a body that stops arriving is answered by the request's
//! deadline (`X-Request-Timeout-Ms` included), and a too-large body is read on and
//! discarded within bounds, so a client that writes it whole before reading gets the 413
//! instead of a broken pipe, while one that sends without end is cut off.
//!
//! Every server listens on port 0 with its socket bound before the server task starts.
//! Time limits only bound failures ([`raw_http::BOUND`]); the configured request timeout
//! is longer than that, so an answer that waited for it fails the test.

#[path = "support/raw_http.rs"]
mod raw_http;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::routing::put;
use raw_http::{Framing, chunked, filler, head, put_whole_then_read, read_answer, wait_for_close};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use ucxl_service::body::{LINGER_BYTES, read_json};
use ucxl_service::headers::Deadline;
use ucxl_service::serve::{Limits, Listener, serve};
use ucxl_service::{ErrorReport, MetricNames, Source, with_layers};

/// The largest body the test service takes.
const LIMIT: usize = 1 << 20;

/// The configured request timeout: far beyond [`raw_http::BOUND`].
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

const PATH: &str = "/doc";

/// A service whose one route reads a JSON body as both services do.
fn app() -> Router {
    let routes = Router::new().route(
        PATH,
        put(|req: Request| async move {
            let deadline = Deadline::of(req.headers(), req.extensions(), REQUEST_TIMEOUT)?;
            let value: Value = read_json(req, LIMIT, deadline)
                .await
                .map_err(|e| e.report())?;
            Ok::<_, ErrorReport>(axum::Json(value))
        }),
    );
    with_layers(
        routes,
        Source("test"),
        MetricNames {
            requests_total: "test_requests_total",
            request_duration_seconds: "test_request_duration_seconds",
            requests_abandoned_total: "test_requests_abandoned_total",
        },
    )
}

struct Server {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Server {
    async fn start() -> Self {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let addr = tcp.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        // The header read timeout outlasts the test's bound: a connection the server keeps
        // open stays open.
        let limits = Limits {
            header_read_timeout: REQUEST_TIMEOUT,
        };
        tokio::spawn(serve(Listener::plain(tcp), app(), limits, async {
            let _ = stopped.await;
        }));
        Self { addr, _stop: stop }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.expect("connects")
    }
}

fn assert_too_large(answer: &str) {
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("UCXL-413-PAYLOAD_TOO_LARGE"), "{answer}");
}

#[tokio::test]
async fn a_stalled_body_is_answered_by_the_deadline_the_client_set() {
    let server = Server::start().await;
    let mut stream = server.connect().await;
    let mut request = head(PATH, Framing::Length(100), &["x-request-timeout-ms: 500"]);
    request.push_str(r#"{"content""#);
    stream.write_all(request.as_bytes()).await.expect("writes");
    // Nothing more is sent: the answer comes at the client's 500 ms, not the configured
    // timeout (which outlasts the bound of `read_answer`).
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("UCXL-408-REQUEST_TIMEOUT"), "{answer}");
    assert!(answer.contains(r#""timeout_ms":500"#), "{answer}");
}

#[tokio::test]
async fn a_client_that_writes_a_too_large_body_before_reading_gets_the_413() {
    let server = Server::start().await;
    for framing in [Framing::Length(2 * LIMIT), Framing::Chunked] {
        let answer = put_whole_then_read(server.addr, PATH, framing, 2 * LIMIT).await;
        assert_too_large(&answer);
    }
}

#[tokio::test]
async fn a_too_large_body_that_stalls_is_cut_after_the_linger_time() {
    let server = Server::start().await;
    let sent = filler(LIMIT + LIMIT / 2);
    for framing in [Framing::Length(2 * LIMIT), Framing::Chunked] {
        let mut stream = server.connect().await;
        let mut request = head(PATH, framing, &[]).into_bytes();
        match framing {
            Framing::Length(_) => request.extend_from_slice(&sent),
            Framing::Chunked => request.extend_from_slice(&chunked(&sent, false)),
        }
        stream.write_all(&request).await.expect("writes");
        // The rest never comes: the 413 arrives once the linger time is over, long before
        // the request deadline, and the connection closes.
        assert_too_large(&read_answer(&mut stream).await);
        wait_for_close(&mut stream).await;
    }
}

#[tokio::test]
async fn a_body_beyond_the_linger_bytes_is_cut_even_when_it_arrives_at_once() {
    let server = Server::start().await;
    let stream = server.connect().await;
    let (mut reader, mut writer) = stream.into_split();
    let mut request = head(PATH, Framing::Chunked, &[]).into_bytes();
    request.extend_from_slice(&chunked(&filler(LIMIT + LINGER_BYTES + LIMIT), true));
    // A whole, well-formed body, sent as fast as the server reads: read to its end, it
    // would leave the connection open for the next request. The server stops reading at
    // the bound instead, so the writer may meet a reset. The writer is kept, not dropped:
    // dropping it would end the client's side of the connection.
    let written = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    wait_for_close(&mut reader).await;
    drop(written.await);
}

#[tokio::test]
async fn a_client_that_never_stops_sending_is_cut_off() {
    let server = Server::start().await;
    for framing in [Framing::Length(usize::MAX >> 1), Framing::Chunked] {
        let mut stream = server.connect().await;
        stream
            .write_all(head(PATH, framing, &[]).as_bytes())
            .await
            .expect("writes");
        let chunk = match framing {
            Framing::Length(_) => filler(64 << 10),
            Framing::Chunked => chunked(&filler(64 << 10), false),
        };
        let sending = async { while stream.write_all(&chunk).await.is_ok() {} };
        tokio::time::timeout(raw_http::BOUND, sending)
            .await
            .expect("the server cuts the connection");
    }
}

#[tokio::test]
async fn a_client_waiting_for_100_continue_gets_the_413_instead() {
    let server = Server::start().await;
    let mut stream = server.connect().await;
    let request = head(PATH, Framing::Length(2 * LIMIT), &["expect: 100-continue"]);
    stream.write_all(request.as_bytes()).await.expect("writes");
    assert_too_large(&read_answer(&mut stream).await);
}
