//! Node misbehaviour at the wire level (SPEC §12): raw TCP servers that answer every request
//! wrongly on purpose, and a gateway in front of them. Whatever a node sends, the gateway
//! answers 502 or 504 within the request deadline, counts the endpoint's failure, keeps
//! serving, and never panics.

use std::time::{Duration, Instant};

use rustle_gateway::config::{BackendMode, EndpointUrl};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::helpers::{TestApp, assert_error, json, spawn_app_with};
use super::resilience::{cluster_config, status_of};

/// How a server answers every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A valid 200 answer.
    Fine,
    /// Accept and never answer.
    Hang,
    /// 503 with `Retry-After: 30`.
    Unavailable,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 JSON cut off half way (`Content-Length` says more, then the connection closes).
    Truncated,
    /// 200 with a text/html body.
    WrongType,
    /// A 40 MiB body announced by `Content-Length`.
    Huge,
    /// A well-formed envelope answer of 10 MB, announced by `Content-Length`.
    TenMegabytes,
    /// The same 10 MB envelope answer, chunked (no length known in advance).
    TenMegabytesChunked,
    /// Headers, then a chunked body that never ends.
    EndlessChunks,
}

/// The address every answer is about.
pub const ADDRESS: &str = "ucxl://agent:tester@bzzz:wire/notes/a";

fn success(data: &Value) -> String {
    json!({"response": {
        "code": "UCXL-200-OK", "message": "found", "data": data,
        "request_id": "r", "timestamp": "2026-11-24T10:00:00Z",
    }})
    .to_string()
}

/// A valid envelope answer about [`ADDRESS`] whose content is `content`.
fn envelope_answer(content: &Value) -> String {
    success(&json!({
        "id": "v1", "address": ADDRESS, "version": 1, "content": content,
        "content_type": "application/json", "metadata": {},
        "created_at": "2026-11-24T10:00:00.000001Z",
        "hash": format!("sha256:{}", "0".repeat(64)), "size": 1,
    }))
}

/// A server on a free port that answers every request with `fault`.
pub async fn server(fault: Fault) -> EndpointUrl {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    let small = envelope_answer(&json!({"n": 7}));
    // One 10 MB answer, built once and shared by every connection.
    let ten = std::sync::Arc::new(envelope_answer(&Value::String("x".repeat(10_000_000))));
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let small = small.clone();
            let ten = std::sync::Arc::clone(&ten);
            tokio::spawn(async move {
                // Every request of a kept-alive connection gets the same treatment.
                loop {
                    if !read_head(&mut socket).await {
                        return;
                    }
                    if !answer(&mut socket, fault, &small, &ten).await {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}").parse().expect("url")
}

/// Reads one request head (and its body, when `Content-Length` announces one); false when
/// the connection ended first.
async fn read_head(socket: &mut tokio::net::TcpStream) -> bool {
    let mut buf = vec![0u8; 8192];
    let mut seen = Vec::new();
    let end = loop {
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut have = seen.len() - end;
    while have < length {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => have += n,
        }
    }
    true
}

/// Answers one request; false when the connection is done.
async fn answer(socket: &mut tokio::net::TcpStream, fault: Fault, small: &str, ten: &str) -> bool {
    let reply = |status: &str, ctype: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let written = match fault {
        Fault::Fine => {
            socket
                .write_all(reply("200 OK", "application/json", small).as_bytes())
                .await
        }
        Fault::Hang => std::future::pending().await,
        Fault::Unavailable => {
            let r =
                "HTTP/1.1 503 Service Unavailable\r\nretry-after: 30\r\ncontent-length: 0\r\n\r\n";
            socket.write_all(r.as_bytes()).await
        }
        Fault::Garbage => {
            socket
                .write_all(reply("200 OK", "application/json", "<<<garbage>>>").as_bytes())
                .await
        }
        Fault::Truncated => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                small.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&small.as_bytes()[..small.len() / 2]).await;
            return false;
        }
        Fault::WrongType => {
            socket
                .write_all(reply("200 OK", "text/html", "<html></html>").as_bytes())
                .await
        }
        Fault::Huge => {
            let size = 40 << 20;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n"
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..40 {
                if socket.write_all(&chunk).await.is_err() {
                    return false;
                }
            }
            Ok(())
        }
        Fault::TenMegabytes => {
            socket
                .write_all(reply("200 OK", "application/json", ten).as_bytes())
                .await
        }
        Fault::TenMegabytesChunked => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            for chunk in ten.as_bytes().chunks(64 << 10) {
                let framed = [
                    format!("{:x}\r\n", chunk.len()).as_bytes(),
                    chunk,
                    b"\r\n".as_slice(),
                ]
                .concat();
                if socket.write_all(&framed).await.is_err() {
                    return false;
                }
            }
            socket.write_all(b"0\r\n\r\n").await
        }
        Fault::EndlessChunks => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            loop {
                if socket.write_all(b"1\r\n \r\n").await.is_err() {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    written.is_ok()
}

/// The request deadline of the gateways here; attempts get less, so a hanging node is
/// tried more than once within it.
const DEADLINE: Duration = Duration::from_millis(1500);

/// A gateway in real mode over the one misbehaving endpoint.
async fn gateway_over(endpoint: &EndpointUrl) -> TestApp {
    let mut config = cluster_config(&[endpoint.as_str().to_owned()], BackendMode::Real);
    config.request_timeout = DEADLINE;
    config.attempt_timeout = Duration::from_millis(500);
    spawn_app_with(config, rustle_gateway::startup::Options::default()).await
}

/// The value of `rustle_backend_attempts_total` for `endpoint` and `outcome` (0 if absent).
async fn attempts(app: &TestApp, endpoint: &EndpointUrl, outcome: &str) -> u64 {
    let text = app.get_path("/metrics").await.text().await.expect("text");
    let endpoint = format!("endpoint=\"{}\"", endpoint.as_str());
    let outcome = format!("outcome=\"{outcome}\"");
    text.lines()
        .filter(|l| l.starts_with("rustle_backend_attempts_total{"))
        .filter(|l| l.contains(&endpoint) && l.contains(&outcome))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Sends a read and a write through a gateway over a node that misbehaves with `fault`;
/// both must get `code` within the deadline, and the endpoint must have counted failures
/// with `outcome`. The gateway keeps answering its own routes afterwards.
async fn misbehaving_node_is_the_endpoints_failure(fault: Fault, code: &str, outcome: &str) {
    let endpoint = server(fault).await;
    let app = gateway_over(&endpoint).await;
    let status = code[5..8].parse::<u16>().expect("status");

    let started = Instant::now();
    let (got, body) = json(app.get(ADDRESS).await).await;
    let took = started.elapsed();
    assert_error(got, &body, code);
    // The deadline plus room for a loaded machine; a hang would take the test's timeout.
    assert!(
        took < DEADLINE + Duration::from_secs(2),
        "{fault:?}: answered after {took:?}"
    );

    let (got, body) = json(app.put(ADDRESS, json!({"content": {"n": 1}})).await).await;
    assert_eq!(got, status, "{fault:?} on a write: {body}");
    assert_error(got, &body, code);

    let s = status_of(&app, endpoint.as_str()).await;
    assert!(
        s["breaker"]["consecutive_failures"].as_u64() >= Some(1),
        "{fault:?}: the failure is the endpoint's: {s}"
    );
    assert!(s["last_error"].is_string(), "{fault:?}: {s}");
    assert!(
        attempts(&app, &endpoint, outcome).await >= 1,
        "{fault:?}: an attempt counted as {outcome}"
    );
    // Still serving.
    assert_eq!(app.get_path("/health").await.status(), 200);
    assert_eq!(app.get_path("/v1/status").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_json_is_502() {
    misbehaving_node_is_the_endpoints_failure(
        Fault::Truncated,
        "UCXL-502-BAD_GATEWAY",
        "bad_answer",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_answer_is_502() {
    misbehaving_node_is_the_endpoints_failure(
        Fault::TenMegabytes,
        "UCXL-502-BAD_GATEWAY",
        "bad_answer",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_chunked_answer_is_502() {
    misbehaving_node_is_the_endpoints_failure(
        Fault::TenMegabytesChunked,
        "UCXL-502-BAD_GATEWAY",
        "bad_answer",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_content_type_is_502() {
    misbehaving_node_is_the_endpoints_failure(
        Fault::WrongType,
        "UCXL-502-BAD_GATEWAY",
        "bad_answer",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_that_never_ends_is_504() {
    misbehaving_node_is_the_endpoints_failure(
        Fault::EndlessChunks,
        "UCXL-504-GATEWAY_TIMEOUT",
        "timeout",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_accepts_and_never_answers_is_504() {
    misbehaving_node_is_the_endpoints_failure(Fault::Hang, "UCXL-504-GATEWAY_TIMEOUT", "timeout")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_answer_within_the_limit_is_believed() {
    // The control: the same server code, answering well, is served.
    let endpoint = server(Fault::Fine).await;
    let app = gateway_over(&endpoint).await;
    let (got, body) = json(app.get(ADDRESS).await).await;
    assert_eq!(got, 200, "{body}");
    assert_eq!(body["response"]["data"]["content"], json!({"n": 7}));
}
