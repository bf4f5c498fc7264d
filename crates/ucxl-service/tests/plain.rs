//! Plain connections over real sockets: HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on
//! one port, the first-request and header read timeouts of both, the `Host` an HTTP/2
//! request is given from its `:authority`, and graceful shutdown.
//!
//! Every server listens on port 0 and its socket is bound before the server task starts,
//! so clients connect at once. Time limits here only bound failures.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use ucxl_service::serve::{Limits, Listener, serve};

/// How long a step that should succeed may take before the test fails; shorter than the
/// default header read timeout (60 s), so a server that waited for it fails the test.
const BOUND: Duration = Duration::from_secs(10);

/// The client's HTTP/2 connection preface: the magic string and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    async fn start(limits: Limits, app: Router) -> Self {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let addr = tcp.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(Listener::plain(tcp), app, limits, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts the graceful shutdown; `stopped` then waits for it.
    fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    async fn stopped(self) {
        within(self.task, "server stops")
            .await
            .expect("server task")
            .expect("served");
    }
}

/// `/` answers "hello"; `/host` answers the request's `Host` header.
fn app() -> Router {
    Router::new().route("/", get(|| async { "hello" })).route(
        "/host",
        get(|headers: HeaderMap| async move {
            headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("none")
                .to_owned()
        }),
    )
}

fn short(ms: u64) -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(ms),
    }
}

async fn within<F: Future>(future: F, what: &str) -> F::Output {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}"))
}

/// An HTTP/1.1 client, or one speaking HTTP/2 from the first byte.
fn client(h2c: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder();
    if h2c {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    }
    .build()
    .expect("client")
}

/// GET `url`: its version and body.
async fn get_text(client: &reqwest::Client, url: &str) -> (reqwest::Version, String) {
    let response = within(client.get(url).send(), "request")
        .await
        .expect("answered");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let version = response.version();
    (version, response.text().await.expect("body"))
}

/// Reads until the server closes the connection; panics when it is still open after
/// [`BOUND`].
async fn closed(stream: &mut TcpStream) {
    let mut received = Vec::new();
    // A reset counts as closed too.
    let _ = within(stream.read_to_end(&mut received), "connection closed").await;
}

#[tokio::test]
async fn http1_and_h2c_are_served_on_one_port() {
    let server = Server::start(Limits::default(), app()).await;
    for (h2c, version) in [
        (false, reqwest::Version::HTTP_11),
        (true, reqwest::Version::HTTP_2),
    ] {
        let answer = get_text(&client(h2c), &server.url("/")).await;
        assert_eq!(answer, (version, "hello".to_owned()));
    }
}

#[tokio::test]
async fn an_h2c_request_gets_its_authority_as_host() {
    let server = Server::start(Limits::default(), app()).await;
    let authority = server.addr.to_string();
    for h2c in [false, true] {
        let (_, host) = get_text(&client(h2c), &server.url("/host")).await;
        assert_eq!(host, authority, "h2c: {h2c}");
    }
}

#[tokio::test]
async fn a_connection_without_a_request_is_closed_at_the_header_read_timeout() {
    let server = Server::start(short(200), app()).await;
    // Nothing; the first bytes of the HTTP/2 preface (the protocol is not known yet); the
    // whole preface; an HTTP/1.1 head that never ends.
    for sent in [
        &b""[..],
        b"PRI * HTTP/2",
        H2_PREFACE,
        b"GET / HTTP/1.1\r\nhost: x\r\n",
    ] {
        let mut stream = TcpStream::connect(server.addr).await.expect("connected");
        stream.write_all(sent).await.expect("sent");
        // The server's SETTINGS may come first; then the close, within `BOUND`.
        closed(&mut stream).await;
    }
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed_at_the_header_read_timeout() {
    let server = Server::start(short(200), app()).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connected");
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("sent");
    let mut answer = vec![0u8; 1024];
    let n = within(stream.read(&mut answer), "answer")
        .await
        .expect("read");
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{answer:?}");
    closed(&mut stream).await;
}

#[tokio::test]
async fn a_first_request_slower_than_the_header_read_timeout_is_answered() {
    // The answer takes longer than the header read timeout.
    let slow = Router::new().route(
        "/",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            "hello"
        }),
    );
    let server = Server::start(short(100), slow).await;
    for (h2c, version) in [
        (false, reqwest::Version::HTTP_11),
        (true, reqwest::Version::HTTP_2),
    ] {
        let answer = get_text(&client(h2c), &server.url("/")).await;
        assert_eq!(answer, (version, "hello".to_owned()));
    }
}

/// A request in flight when shutdown starts is answered, then the server stops (an idle
/// HTTP/2 connection is sent a GOAWAY and closes).
async fn shutdown_finishes_request_in_flight(h2c: bool, version: reqwest::Version) {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let app = Router::new().route(
        "/",
        get({
            let (entered, release) = (entered.clone(), release.clone());
            || async move {
                entered.notify_one();
                release.notified().await;
                "hello"
            }
        }),
    );
    let mut server = Server::start(Limits::default(), app).await;
    // Kept until the end: its connection stays in the pool, idle, after the answer.
    let client = client(h2c);
    let url = server.url("/");
    let request = tokio::spawn({
        let client = client.clone();
        async move { get_text(&client, &url).await }
    });
    within(entered.notified(), "request reaches the handler").await;
    server.begin_shutdown();
    release.notify_one();
    assert_eq!(
        within(request, "answer").await.expect("request task"),
        (version, "hello".to_owned())
    );
    server.stopped().await;
    drop(client);
}

#[tokio::test]
async fn shutdown_finishes_http1_requests_in_flight() {
    shutdown_finishes_request_in_flight(false, reqwest::Version::HTTP_11).await;
}

#[tokio::test]
async fn shutdown_finishes_h2c_requests_in_flight() {
    shutdown_finishes_request_in_flight(true, reqwest::Version::HTTP_2).await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_connections_that_sent_nothing_or_part_of_the_preface() {
    // The default header read timeout (60 s) outlasts the test's bound.
    let mut server = Server::start(Limits::default(), app()).await;
    let _silent = TcpStream::connect(server.addr).await.expect("connected");
    let mut partial = TcpStream::connect(server.addr).await.expect("connected");
    partial.write_all(b"PRI * HTTP/2").await.expect("sent");
    // Accepted in order: once this is answered, both connections have their tasks.
    get_text(&client(false), &server.url("/")).await;
    server.begin_shutdown();
    server.stopped().await;
}
