//! A BZZZ endpoint that misbehaves on purpose: in front of a real node it forwards
//! (`Healthy`), or it answers 503 (with or without `Retry-After`), garbage, a 404 refusal,
//! hangs, or closes connections; or it forwards everything but batches, which it answers
//! with a result missing or about another address, or not at all (an older node without
//! the route). The mode can change while a test runs, and every request is counted (API
//! calls, batches and health checks apart).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forward to the node behind.
    Healthy = 0,
    /// 503 without `Retry-After`.
    Unavailable = 1,
    /// 503 with `Retry-After: 5`.
    RetryAfter = 2,
    /// 200 with a body that is not JSON.
    Garbage = 3,
    /// A valid UCXL 404 refusal.
    NotFound = 4,
    /// Never answers.
    Hang = 5,
    /// A valid envelope, of another address than the one asked.
    OtherAddress = 6,
    /// 507 with `Retry-After: 1`, as a node whose disk is full answers a write.
    Full = 7,
    /// Forwards all but batches, which it answers with one result fewer than items sent.
    ShortBatch = 8,
    /// Forwards all but batches, which it answers with the first result about another
    /// address.
    BatchOtherAddress = 9,
    /// An older node: forwards all but batches, whose route it does not know (404).
    NoBatchRoute = 10,
}

impl Mode {
    fn from_u8(n: u8) -> Self {
        match n {
            1 => Self::Unavailable,
            2 => Self::RetryAfter,
            3 => Self::Garbage,
            4 => Self::NotFound,
            5 => Self::Hang,
            6 => Self::OtherAddress,
            7 => Self::Full,
            8 => Self::ShortBatch,
            9 => Self::BatchOtherAddress,
            10 => Self::NoBatchRoute,
            _ => Self::Healthy,
        }
    }
}

#[derive(Debug)]
struct Inner {
    mode: AtomicU8,
    api_hits: AtomicUsize,
    batch_hits: AtomicUsize,
    health_hits: AtomicUsize,
    target: Option<String>,
    client: reqwest::Client,
}

/// A running fault endpoint.
#[derive(Debug, Clone)]
pub struct FaultNode {
    pub url: String,
    inner: Arc<Inner>,
}

impl FaultNode {
    /// A fault endpoint in `mode`, forwarding to `target` (a node's base URL) when healthy.
    pub async fn start(mode: Mode, target: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let inner = Arc::new(Inner {
            mode: AtomicU8::new(mode as u8),
            api_hits: AtomicUsize::new(0),
            batch_hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            target,
            client: reqwest::Client::new(),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, inner }
    }

    pub fn set(&self, mode: Mode) {
        self.inner.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Requests other than `/health`.
    pub fn api_hits(&self) -> usize {
        self.inner.api_hits.load(Ordering::SeqCst)
    }

    /// Of those, batches (`POST /ucxi/v1/batch`).
    pub fn batch_hits(&self) -> usize {
        self.inner.batch_hits.load(Ordering::SeqCst)
    }
}

/// A port bound but not listening: connections to it are refused, and no other socket can
/// take the port while this lives (a released port could be reused by another test).
#[derive(Debug)]
pub struct Refused {
    pub url: String,
    _socket: tokio::net::TcpSocket,
}

pub fn refused() -> Refused {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("binds");
    let url = format!("http://{}", socket.local_addr().expect("addr"));
    Refused {
        url,
        _socket: socket,
    }
}

async fn handle(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let path = request.uri().path();
    let health = path == "/health";
    let batch = path == ucxl::batch::ROUTE;
    // The gateway's change-feed reader (`/status`, then the watch stream) is not traffic
    // of the requests under test.
    let feed = path == "/status" || path == "/ucxi/v1/watch";
    if health {
        inner.health_hits.fetch_add(1, Ordering::SeqCst);
    } else if !feed {
        inner.api_hits.fetch_add(1, Ordering::SeqCst);
    }
    if batch {
        inner.batch_hits.fetch_add(1, Ordering::SeqCst);
    }
    match Mode::from_u8(inner.mode.load(Ordering::SeqCst)) {
        Mode::Healthy => forward(&inner, request).await,
        mode @ (Mode::ShortBatch | Mode::BatchOtherAddress | Mode::NoBatchRoute) => {
            if batch {
                lie_about_batch(mode, request).await
            } else {
                forward(&inner, request).await
            }
        }
        Mode::Unavailable => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::RetryAfter => (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "5")]).into_response(),
        Mode::Garbage => (
            StatusCode::OK,
            [("content-type", "application/json")],
            "<<<garbage>>>",
        )
            .into_response(),
        Mode::NotFound => (
            StatusCode::NOT_FOUND,
            [("content-type", "application/json")],
            r#"{"error":{"code":"UCXL-404-NOT_FOUND","message":"the node has nothing here","details":{"node":"fault"},"source":"bzzz-node","path":"/","request_id":"r","timestamp":"2026-11-24T10:00:00Z"}}"#,
        )
            .into_response(),
        Mode::Hang => std::future::pending().await,
        Mode::Full => (
            StatusCode::INSUFFICIENT_STORAGE,
            [("content-type", "application/json"), ("retry-after", "1")],
            r#"{"error":{"code":"UCXL-507-INSUFFICIENT_STORAGE","message":"this node cannot store writes now: its storage is full or unwritable; nothing was stored","details":{},"source":"bzzz-node","path":"/","request_id":"r","timestamp":"2026-11-24T10:00:00Z"}}"#,
        )
            .into_response(),
        Mode::OtherAddress => (
            StatusCode::OK,
            [("content-type", "application/json")],
            r#"{"response":{"code":"UCXL-200-OK","message":"found","data":{"id":"x1","address":"ucxl://someone:else@other:task/elsewhere","version":1,"content":1,"content_type":"application/json","metadata":{},"created_at":"2026-11-24T10:00:00Z","hash":"sha256:6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b","size":1},"request_id":"r","timestamp":"2026-11-24T10:00:00Z"}}"#,
        )
            .into_response(),
    }
}

/// A batch answered as `mode` says, without storing anything.
async fn lie_about_batch(mode: Mode, request: Request) -> Response {
    use ucxl::batch::{Batch, Item, ItemResult, Results};
    if mode == Mode::NoBatchRoute {
        return (
            StatusCode::NOT_FOUND,
            [("content-type", "application/json")],
            r#"{"error":{"code":"UCXL-404-NOT_FOUND","message":"no route for POST /ucxi/v1/batch","details":{"method":"POST","path":"/ucxi/v1/batch"},"source":"bzzz-node","path":"/ucxi/v1/batch","request_id":"r","timestamp":"2026-11-24T10:00:00Z"}}"#,
        )
            .into_response();
    }
    let Ok(bytes) = axum::body::to_bytes(request.into_body(), usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Ok(batch) = serde_json::from_slice::<Batch>(&bytes) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut results: Vec<ItemResult> = batch
        .items
        .into_iter()
        .map(|item| match item {
            Item::Put {
                address, version, ..
            } => ItemResult::put(address, true, version.id, 1),
            Item::Delete {
                address,
                id,
                deleted_at,
            } => ItemResult::deleted(address, id, deleted_at),
        })
        .collect();
    if mode == Mode::ShortBatch {
        results.pop();
    } else if let Some(first) = results.first_mut() {
        first.address =
            ucxl::Address::parse("ucxl://someone:else@other:task/elsewhere").expect("an address");
    }
    let answer = ucxl::Success::new(ucxl::Code::Ok, "stored", Results { results }, "r");
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        serde_json::to_vec(&answer).unwrap_or_default(),
    )
        .into_response()
}

async fn forward(inner: &Inner, request: Request) -> Response {
    let Some(target) = &inner.target else {
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            r#"{"response":{"code":"UCXL-200-OK","message":"ok","data":{},"request_id":"r","timestamp":"2026-11-24T10:00:00Z"}}"#,
        )
            .into_response();
    };
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if name != "host" {
            headers.insert(name.clone(), value.clone());
        }
    }
    let sent = inner
        .client
        .request(parts.method, format!("{target}{path}"))
        .headers(headers)
        .body(bytes)
        .send()
        .await;
    let Ok(answer) = sent else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    // Streamed, so a node's watch stream passes as it comes.
    let mut response = Response::new(Body::from_stream(answer.bytes_stream()));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name != "transfer-encoding" && name != "content-length" {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response
}
