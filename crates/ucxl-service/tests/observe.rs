//! The request frame over real sockets: every log line of a request carries its trace and
//! span ids (JSON and text), the access line says how the request went (and who asked,
//! and how it was served, where the routes say so), a `traceparent` joins the caller's
//! trace and a bad one starts a new trace, and a request whose client goes away is counted
//! and logged as abandoned, not as any status.
//!
//! Each test captures the log of its own (current-thread) runtime with a thread-local
//! subscriber; the metrics recorder is the process's, with names of this test's own.

#[path = "support/raw_http.rs"]
#[allow(dead_code)]
mod raw_http;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use ucxl_service::observe::{Principal, Served};
use ucxl_service::serve::{Limits, Listener, serve};
use ucxl_service::{MetricNames, Source, with_layers};

const NAMES: MetricNames = MetricNames {
    requests_total: "obs_requests_total",
    request_duration_seconds: "obs_request_duration_seconds",
    requests_abandoned_total: "obs_requests_abandoned_total",
};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("the only recorder of this binary");
            handle
        })
        .clone()
}

/// What the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }

    fn json_lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Logs as the services' JSON format does, into the returned buffer, for this thread.
fn capture_json() -> (Captured, tracing::subscriber::DefaultGuard) {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    (out, tracing::subscriber::set_default(subscriber))
}

/// What the slow route tells the test: that it started, and that it was dropped.
type SlowSignals = Arc<Mutex<Option<(oneshot::Sender<()>, oneshot::Sender<()>)>>>;

/// The routes: `/hello` logs inside the request and says who asked and how it was served;
/// `/slow` tells the test it started, then never answers, and tells the test when it is
/// dropped.
fn app(slow: SlowSignals) -> Router {
    let routes = Router::new()
        .route(
            "/hello",
            get(|| async {
                tracing::info!("inside the handler");
                let mut response = "hi".into_response();
                response.extensions_mut().insert(Served {
                    backend: "real",
                    attempts: 2,
                });
                response
                    .extensions_mut()
                    .insert(Principal(Arc::new("alice".to_owned())));
                response
            }),
        )
        .route(
            "/slow",
            get(move || {
                let signals = slow.lock().expect("lock").take();
                async move {
                    struct Dropped(Option<oneshot::Sender<()>>);
                    impl Drop for Dropped {
                        fn drop(&mut self) {
                            if let Some(tx) = self.0.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    let (started, dropped) = signals.expect("one slow request");
                    let _dropped = Dropped(Some(dropped));
                    let _ = started.send(());
                    std::future::pending::<Response>().await
                }
            }),
        );
    with_layers(routes, Source("test"), NAMES)
}

async fn start(slow: SlowSignals) -> (SocketAddr, oneshot::Sender<()>) {
    recorder();
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let addr = tcp.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(
        Listener::plain(tcp),
        app(slow),
        Limits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop)
}

async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("answered")
}

fn access_lines<'a>(lines: &'a [Value], request_id: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["target"] == "access" && l["fields"]["request_id"] == request_id)
        .collect()
}

#[tokio::test]
async fn a_request_in_the_callers_trace_logs_its_ids_on_every_line() {
    let (logs, _guard) = capture_json();
    let (addr, _stop) = start(SlowSignals::default()).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let response = get_with(
        addr,
        "/hello",
        &[
            ("traceparent", &traceparent),
            ("x-request-id", "req-trace-1"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    let lines = logs.json_lines();
    let inside = lines
        .iter()
        .find(|l| l["fields"]["message"] == "inside the handler")
        .expect("the handler's line");
    assert_eq!(inside["span"]["trace_id"], CLIENT_TRACE, "{inside}");
    assert_eq!(inside["span"]["request_id"], "req-trace-1", "{inside}");
    let span_id = inside["span"]["span_id"].as_str().expect("a span id");
    assert_eq!(span_id.len(), 16);
    assert_ne!(span_id, CLIENT_SPAN, "the request has a span of its own");
    let access = access_lines(&lines, "req-trace-1");
    assert_eq!(access.len(), 1, "one access line: {lines:?}");
    let f = &access[0]["fields"];
    assert_eq!(access[0]["level"], "INFO");
    assert_eq!(f["message"], "answered");
    assert_eq!(f["method"], "GET");
    assert_eq!(f["route"], "/hello");
    assert_eq!(f["status"], 200);
    assert!(f["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{f}");
    assert_eq!(f["attempts"], 2);
    assert_eq!(f["backend"], "real");
    assert_eq!(f["principal"], "alice");
    assert_eq!(f["trace_id"], CLIENT_TRACE);
    assert_eq!(f["span_id"], span_id);
    assert_eq!(f["parent_span_id"], CLIENT_SPAN);
}

#[tokio::test]
async fn without_a_valid_traceparent_a_request_starts_a_new_trace() {
    let (logs, _guard) = capture_json();
    let (addr, _stop) = start(SlowSignals::default()).await;
    for (request_id, traceparent) in [
        ("req-new-1", None),
        (
            "req-new-2",
            Some(format!(
                "00-{}-{CLIENT_SPAN}-01",
                CLIENT_TRACE.to_uppercase()
            )),
        ),
        (
            "req-new-3",
            Some(format!("00-{}-{CLIENT_SPAN}-01", "0".repeat(32))),
        ),
        ("req-new-4", Some("garbage".to_owned())),
    ] {
        let mut headers = vec![("x-request-id", request_id)];
        if let Some(t) = &traceparent {
            headers.push(("traceparent", t));
        }
        let response = get_with(addr, "/hello", &headers).await;
        assert_eq!(response.status(), 200, "never an error: {traceparent:?}");
        let lines = logs.json_lines();
        let access = access_lines(&lines, request_id);
        let f = &access[0]["fields"];
        let trace = f["trace_id"].as_str().expect("a trace id");
        assert_eq!(trace.len(), 32, "{f}");
        assert!(
            trace
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_ne!(trace, CLIENT_TRACE);
        assert!(
            f.get("parent_span_id").is_none(),
            "a new trace has no parent: {f}"
        );
    }
}

#[tokio::test]
async fn the_text_format_carries_the_ids_too() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (addr, _stop) = start(SlowSignals::default()).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    get_with(addr, "/hello", &[("traceparent", &traceparent)]).await;
    let text = out.text();
    let inside = text
        .lines()
        .find(|l| l.contains("inside the handler"))
        .expect("the handler's line");
    assert!(
        inside.contains(&format!("trace_id={CLIENT_TRACE}")),
        "{inside}"
    );
    assert!(inside.contains("span_id="), "{inside}");
    let access = text
        .lines()
        .find(|l| l.contains("access") && l.contains("answered"))
        .expect("the access line");
    assert!(
        access.contains(&format!("trace_id={CLIENT_TRACE}")),
        "{access}"
    );
    assert!(
        access.contains("route=\"/hello\"") || access.contains("route=/hello"),
        "{access}"
    );
}

#[tokio::test]
async fn a_request_its_client_abandons_is_counted_and_logged_not_answered() {
    let (logs, _guard) = capture_json();
    let (started_tx, started) = oneshot::channel();
    let (dropped_tx, dropped) = oneshot::channel();
    let slow: SlowSignals = Arc::new(Mutex::new(Some((started_tx, dropped_tx))));
    let (addr, _stop) = start(slow).await;
    let mut client = TcpStream::connect(addr).await.expect("connects");
    client
        .write_all(b"GET /slow HTTP/1.1\r\nhost: test\r\nx-request-id: req-gone-1\r\n\r\n")
        .await
        .expect("sent");
    tokio::time::timeout(raw_http::BOUND, started)
        .await
        .expect("the handler starts")
        .expect("signal");
    drop(client);
    tokio::time::timeout(raw_http::BOUND, dropped)
        .await
        .expect("the server drops the request when its client leaves")
        .expect("signal");
    // The frame's guard drops with the request's future, before this task runs again.
    let lines = logs.json_lines();
    let access = access_lines(&lines, "req-gone-1");
    assert_eq!(access.len(), 1, "{lines:?}");
    let f = &access[0]["fields"];
    assert_eq!(f["message"], "abandoned");
    assert_eq!(f["route"], "/slow");
    assert_eq!(f["method"], "GET");
    assert!(f["duration_ms"].as_f64().is_some(), "{f}");
    assert!(f.get("status").is_none(), "{f}");
    assert_eq!(f["trace_id"].as_str().map(str::len), Some(32));
    let metrics = recorder().render();
    assert!(
        metrics.contains("obs_requests_abandoned_total{route=\"/slow\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("obs_requests_total{route=\"/slow\""),
        "an abandoned request has no status: {metrics}"
    );
}
