//! What the gateway tells operators of each request: one access line (with the backend
//! that served it, its attempts and principal, and its trace ids), the client's trace
//! carried to the nodes with a span per attempt, requests whose client left counted and
//! logged, the process metrics, and the per-endpoint series made with the endpoint.
//!
//! Log lines are captured with the gateway's own JSON subscriber for the test's thread: the
//! test's current-thread runtime also runs the gateway it spawns.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use rustle_gateway::config::{BackendMode, LogFormat, Sources};
use rustle_gateway::startup::Options;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::helpers::{enc, project, spawn_app, spawn_app_with};
use super::resilience::cluster_config;

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";
const BOUND: Duration = Duration::from_secs(30);

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
    /// The access lines of `request_id`.
    fn access(&self, request_id: &str) -> Vec<Value> {
        String::from_utf8_lossy(&self.0.lock().expect("lock"))
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["target"] == "access" && l["fields"]["request_id"] == request_id)
            .map(|l| l["fields"].clone())
            .collect()
    }
}

/// The gateway's JSON log of this thread, at `info`.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let out = Captured::default();
    let writer = out.clone();
    let (subscriber, _) =
        rustle_gateway::telemetry::subscriber(LogFormat::Json, "info", move || writer.clone());
    (out, tracing::subscriber::set_default(subscriber))
}

fn address(name: &str) -> String {
    format!("ucxl://a:r@{}:t/{name}", project())
}

#[tokio::test]
async fn each_request_logs_one_access_line_with_what_served_it_and_its_trace() {
    let (logs, _guard) = capture();
    let app = spawn_app().await;
    let response = app
        .request(
            reqwest::Method::PUT,
            &format!("/v1/envelopes?address={}", enc(&address("logged"))),
        )
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("x-request-id", "access-put-1")
        .json(&json!({"content": 1}))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 201);
    let lines = logs.access("access-put-1");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let f = &lines[0];
    assert_eq!(f["message"], "answered");
    assert_eq!(f["method"], "PUT");
    assert_eq!(f["route"], "/v1/envelopes", "the template, not the URI");
    assert_eq!(f["status"], 201);
    assert_eq!(f["backend"], "mock");
    assert_eq!(f["attempts"], 1);
    assert_eq!(f["principal"], "anonymous");
    assert_eq!(f["trace_id"], CLIENT_TRACE);
    assert_eq!(f["parent_span_id"], CLIENT_SPAN);
    assert!(f["duration_ms"].as_f64().is_some(), "{f}");
    // A route no backend serves says nothing of one.
    let health = app
        .request(reqwest::Method::GET, "/health")
        .header("x-request-id", "access-health-1")
        .send()
        .await
        .expect("answered");
    assert_eq!(health.status(), 200);
    let lines = logs.access("access-health-1");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["route"], "/health");
    assert!(lines[0].get("backend").is_none(), "{}", lines[0]);
    assert!(lines[0].get("principal").is_none(), "{}", lines[0]);
    assert_eq!(lines[0]["trace_id"].as_str().map(str::len), Some(32));
}

/// What a node saw of each read: its `traceparent` and `tracestate`.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

/// A node that answers health checks, refuses the first read with 503 and every later one
/// with a UCXL 404, recording the trace headers of each.
async fn recording_node() -> (String, Seen) {
    async fn handle(State(seen): State<Seen>, request: Request) -> Response {
        let ok = |data: Value| {
            axum::Json(json!({"response": {
                "code": "UCXL-200-OK", "message": "ok", "data": data,
                "request_id": "r", "timestamp": "2026-11-24T10:00:00Z"
            }}))
            .into_response()
        };
        if request.uri().path() == "/health" {
            return ok(json!({"status": "ok"}));
        }
        if request.uri().path() != "/ucxi/v1/get" {
            // The change feed's requests: no feed here.
            return axum::http::StatusCode::NOT_FOUND.into_response();
        }
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let first = {
            let mut seen = seen.lock().expect("lock");
            seen.push((header("traceparent"), header("tracestate")));
            seen.len() == 1
        };
        if first {
            return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {
                "code": "UCXL-404-NOT_FOUND", "message": "nothing here", "details": {},
                "source": "bzzz-node", "path": "/ucxi/v1/get", "request_id": "r",
                "timestamp": "2026-11-24T10:00:00Z"
            }})),
        )
            .into_response()
    }
    let seen = Seen::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&seen));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

#[tokio::test]
async fn each_attempt_carries_the_clients_trace_as_a_span_of_its_own() {
    let (logs, _guard) = capture();
    let (node, seen) = recording_node().await;
    let app = spawn_app_with(
        cluster_config(std::slice::from_ref(&node), BackendMode::Real),
        Options::default(),
    )
    .await;
    let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let response = app
        .request(
            reqwest::Method::GET,
            &format!("/v1/envelopes?address={}", enc(&address("traced"))),
        )
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", state)
        .header("x-request-id", "traced-get-1")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-rustle-attempts"], "2");
    let first = seen.lock().expect("lock").clone();
    assert_eq!(first.len(), 2, "a 503, then the retry: {first:?}");
    let mut parents = Vec::new();
    for (traceparent, tracestate) in &first {
        let traceparent = traceparent.as_deref().expect("a traceparent");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], CLIENT_TRACE, "the client's trace");
        assert_eq!(parts[3], "01", "sampled, as the client said");
        assert_ne!(
            parts[2], CLIENT_SPAN,
            "the gateway's own span is the parent"
        );
        parents.push(parts[2].to_owned());
        assert_eq!(tracestate.as_deref(), Some(state), "tracestate unchanged");
    }
    assert_ne!(parents[0], parents[1], "a span per attempt");
    let lines = logs.access("traced-get-1");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let f = &lines[0];
    assert_eq!(f["status"], 404);
    assert_eq!(f["backend"], "real");
    assert_eq!(f["attempts"], 2);
    assert_eq!(f["trace_id"], CLIENT_TRACE);
    assert!(
        !parents.contains(&f["span_id"].as_str().unwrap_or_default().to_owned()),
        "the request's span is the attempts' parent, not one of them"
    );
    // Without a traceparent the request starts a trace, and its attempt carries it.
    let response = app
        .request(
            reqwest::Method::GET,
            &format!("/v1/envelopes?address={}", enc(&address("untraced"))),
        )
        .header("x-request-id", "traced-get-2")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 404);
    let started = logs.access("traced-get-2");
    let trace = started[0]["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_owned();
    assert_ne!(trace, CLIENT_TRACE);
    let sent = seen
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("one more");
    let traceparent = sent.0.expect("a traceparent");
    assert!(
        traceparent.starts_with(&format!("00-{trace}-")),
        "{traceparent} carries {trace}"
    );
    assert_eq!(sent.1, None, "no tracestate to pass on");
}

/// A node that never answers, telling the test when a request reached it and when the
/// gateway gave that request up.
async fn hanging_node() -> (String, Arc<Notify>, Arc<Notify>) {
    struct Signals {
        arrived: Arc<Notify>,
        gone: Arc<Notify>,
    }
    struct Gone(Arc<Notify>);
    impl Drop for Gone {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }
    async fn handle(State(signals): State<Arc<Signals>>, request: Request) -> Response {
        if request.uri().path() == "/health" {
            return axum::Json(json!({"response": {
                "code": "UCXL-200-OK", "message": "ok", "data": {"status": "ok"},
                "request_id": "r", "timestamp": "2026-11-24T10:00:00Z"
            }}))
            .into_response();
        }
        let _gone = Gone(Arc::clone(&signals.gone));
        signals.arrived.notify_one();
        std::future::pending().await
    }
    let arrived = Arc::new(Notify::new());
    let gone = Arc::new(Notify::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(Arc::new(Signals {
            arrived: Arc::clone(&arrived),
            gone: Arc::clone(&gone),
        }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, arrived, gone)
}

/// The value of the series `series` (exactly as rendered, labels included), 0 if absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_request_whose_client_leaves_is_counted_and_logged_as_abandoned() {
    let (logs, _guard) = capture();
    let (node, arrived, gone) = hanging_node().await;
    let mut config = cluster_config(std::slice::from_ref(&node), BackendMode::Real);
    config.attempt_timeout = Duration::from_secs(60);
    config.request_timeout = Duration::from_secs(60);
    let app = spawn_app_with(config, Options::default()).await;
    let series = r#"rustle_requests_abandoned_total{route="/v1/envelopes"}"#;
    let before = sample(
        &app.get_path("/metrics").await.text().await.expect("text"),
        series,
    );
    let mut client = TcpStream::connect(app.addr).await.expect("connects");
    let head = format!(
        "GET /v1/envelopes?address={} HTTP/1.1\r\nhost: test\r\nx-request-id: gone-1\r\n\r\n",
        enc(&address("abandoned"))
    );
    client.write_all(head.as_bytes()).await.expect("sent");
    tokio::time::timeout(BOUND, arrived.notified())
        .await
        .expect("the request reaches the node");
    drop(client);
    // The gateway drops the request, and with it its attempt: the node sees that last.
    tokio::time::timeout(BOUND, gone.notified())
        .await
        .expect("the gateway gives the request up when its client leaves");
    let lines = logs.access("gone-1");
    assert_eq!(lines.len(), 1, "one line, and no answered one: {lines:?}");
    assert_eq!(lines[0]["message"], "abandoned");
    assert_eq!(lines[0]["route"], "/v1/envelopes");
    assert!(lines[0].get("status").is_none(), "{}", lines[0]);
    let after = sample(
        &app.get_path("/metrics").await.text().await.expect("text"),
        series,
    );
    assert!(after >= before + 1.0, "{before} -> {after}");
}

#[tokio::test]
async fn metrics_include_the_process_metrics() {
    let app = spawn_app().await;
    let text = app.get_path("/metrics").await.text().await.expect("text");
    for (name, least) in [
        ("process_resident_memory_bytes", 1.0),
        ("process_virtual_memory_bytes", 1.0),
        ("process_open_fds", 1.0),
        ("process_max_fds", 1.0),
        ("process_start_time_seconds", 1.0),
        ("process_threads", 1.0),
        ("process_cpu_seconds_total", 0.0),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} is described: {text}"
        );
        let value = sample(&text, name);
        assert!(value >= least, "{name} = {value}");
    }
    assert!(
        sample(&text, "process_resident_memory_bytes") > 1e6,
        "RSS of a real process"
    );
}

#[tokio::test]
async fn an_endpoints_attempt_and_retry_series_exist_from_its_start_reloads_included() {
    let a = super::faults::refused();
    let b = super::faults::refused();
    let token = "series-token";
    let env: HashMap<String, String> = [
        ("RUSTLE_BACKEND_MODE", "real"),
        ("RUSTLE_BZZZ_ENDPOINTS", a.url.as_str()),
        ("RUSTLE_HEALTH_INTERVAL_MS", "3600000"),
        ("RUSTLE_ADMIN_TOKEN", token),
        ("RUSTLE_LISTEN_ADDR", "127.0.0.1:0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = Sources {
        env: env.clone(),
        ..Default::default()
    }
    .resolve()
    .expect("valid");
    let app = spawn_app_with(config, Options::default()).await;
    app.env.lock().expect("env").extend(env);
    let has = |text: &str, name: &str, endpoint: &str, label: &str, value: &str| {
        text.contains(&format!(
            "{name}{{endpoint=\"{endpoint}\",{label}=\"{value}\"}} "
        ))
    };
    let text = app.get_path("/metrics").await.text().await.expect("text");
    for outcome in [
        "ok",
        "connect_error",
        "timeout",
        "unavailable",
        "bad_answer",
    ] {
        assert!(
            has(
                &text,
                "rustle_backend_attempts_total",
                &a.url,
                "outcome",
                outcome
            ),
            "{outcome}: {text}"
        );
    }
    assert!(
        has(&text, "rustle_retries_total", &a.url, "reason", "timeout"),
        "{text}"
    );
    assert!(!text.contains(&b.url), "{text}");
    app.env.lock().expect("env").insert(
        "RUSTLE_BZZZ_ENDPOINTS".into(),
        format!("{},{}", a.url, b.url),
    );
    let (status, body) = app.reload(token).await;
    assert_eq!(status, 200, "{body}");
    let text = app.get_path("/metrics").await.text().await.expect("text");
    assert!(
        has(
            &text,
            "rustle_backend_attempts_total",
            &b.url,
            "outcome",
            "ok"
        ),
        "{text}"
    );
    // The handles count: a refused connection is a connect error of the endpoint tried.
    let (status, _) = super::helpers::json(app.get(&address("counted")).await).await;
    assert!(status >= 500, "{status}");
    let text = app.get_path("/metrics").await.text().await.expect("text");
    let errors = sample(
        &text,
        &format!(
            "rustle_backend_attempts_total{{endpoint=\"{}\",outcome=\"connect_error\"}}",
            a.url
        ),
    ) + sample(
        &text,
        &format!(
            "rustle_backend_attempts_total{{endpoint=\"{}\",outcome=\"connect_error\"}}",
            b.url
        ),
    );
    assert!(errors >= 1.0, "{text}");
}
