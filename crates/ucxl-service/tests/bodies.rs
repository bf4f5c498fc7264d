//! Request bodies over real sockets: a body that stops arriving is answered by the request's
//! deadline (`X-Request-Timeout-Ms` included).
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
use raw_http::{head, read_answer};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use ucxl_service::headers::Deadline;
use ucxl_service::read_json;
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

#[tokio::test]
async fn a_stalled_body_is_answered_by_the_deadline_the_client_set() {
    let server = Server::start().await;
    let mut stream = server.connect().await;
    let mut request = head(PATH, 100, &["x-request-timeout-ms: 500"]);
    request.push_str(r#"{"content""#);
    stream.write_all(request.as_bytes()).await.expect("writes");
    // Nothing more is sent: the answer comes at the client's 500 ms, not the configured
    // timeout (which outlasts the bound of `read_answer`).
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("UCXL-408-REQUEST_TIMEOUT"), "{answer}");
    assert!(answer.contains(r#""timeout_ms":500"#), "{answer}");
}
