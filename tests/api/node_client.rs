//! The node client against real servers that misbehave on purpose: refuse, hang, 503 with
//! Retry-After, garbage, wrong content type, oversized and truncated answers.

use std::time::Duration;

use rustle_gateway::backend::node_client::{Answer, AttemptError, AttemptSpec, NodeClient};
use rustle_gateway::config::EndpointUrl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy)]
enum Fault {
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
    /// A 40 MiB body.
    Huge,
    /// Headers, then a chunked body that never ends.
    EndlessChunks,
}

/// A server on a free port that answers every request with `fault`.
async fn server(fault: Fault) -> EndpointUrl {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let ok = r#"{"response":{"code":"UCXL-200-OK","message":"m","data":{"n":7},"request_id":"r","timestamp":"2026-11-24T10:00:00Z"}}"#;
                let reply = |status: &str, ctype: &str, body: &str| {
                    format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                };
                match fault {
                    Fault::Fine => {
                        let _ = socket
                            .write_all(reply("200 OK", "application/json", ok).as_bytes())
                            .await;
                    }
                    Fault::Hang => std::future::pending::<()>().await,
                    Fault::Unavailable => {
                        let r = "HTTP/1.1 503 Service Unavailable\r\nretry-after: 30\r\ncontent-length: 0\r\n\r\n";
                        let _ = socket.write_all(r.as_bytes()).await;
                    }
                    Fault::Garbage => {
                        let _ = socket
                            .write_all(
                                reply("200 OK", "application/json", "<<<garbage>>>").as_bytes(),
                            )
                            .await;
                    }
                    Fault::Truncated => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            ok.len()
                        );
                        let _ = socket.write_all(head.as_bytes()).await;
                        let _ = socket.write_all(&ok.as_bytes()[..ok.len() / 2]).await;
                    }
                    Fault::WrongType => {
                        let _ = socket
                            .write_all(reply("200 OK", "text/html", "<html></html>").as_bytes())
                            .await;
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
                                return;
                            }
                        }
                    }
                    Fault::EndlessChunks => {
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                        let _ = socket.write_all(head.as_bytes()).await;
                        loop {
                            if socket.write_all(b"1\r\n \r\n").await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}").parse().expect("url")
}

#[derive(Debug, serde::Deserialize, PartialEq)]
struct Data {
    n: u32,
}

async fn attempt(endpoint: &EndpointUrl, timeout: Duration) -> Result<Answer<Data>, AttemptError> {
    let client = NodeClient::new(Duration::from_millis(250)).expect("client");
    let spec = AttemptSpec {
        endpoint,
        request_id: "test",
        timeout,
    };
    client
        .call::<Data>(
            spec,
            reqwest::Method::GET,
            "/ucxi/v1/get?address=x",
            &[],
            None,
        )
        .await
}

#[tokio::test]
async fn a_valid_answer_is_believed() {
    let endpoint = server(Fault::Fine).await;
    let answer = attempt(&endpoint, Duration::from_secs(2))
        .await
        .expect("valid");
    assert!(matches!(
        answer,
        Answer::Ok {
            data: Data { n: 7 },
            ..
        }
    ));
}

#[tokio::test]
async fn refused_connections_are_retryable_connect_errors() {
    let refused = super::faults::refused();
    let endpoint: EndpointUrl = refused.url.parse().expect("url");
    let e = attempt(&endpoint, Duration::from_secs(2))
        .await
        .expect_err("refused");
    assert!(matches!(e, AttemptError::Connect(_)), "{e}");
    assert!(e.retryable());
}

#[tokio::test]
async fn a_hanging_node_times_out() {
    let endpoint = server(Fault::Hang).await;
    let started = std::time::Instant::now();
    let e = attempt(&endpoint, Duration::from_millis(200))
        .await
        .expect_err("hangs");
    assert_eq!(e, AttemptError::Timeout(200));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the attempt timeout"
    );
}

#[tokio::test]
async fn unavailable_carries_a_capped_retry_after() {
    let endpoint = server(Fault::Unavailable).await;
    let e = attempt(&endpoint, Duration::from_secs(2))
        .await
        .expect_err("503");
    assert_eq!(
        e,
        AttemptError::Unavailable {
            status: 503,
            retry_after: Some(Duration::from_secs(5)),
        }
    );
    assert!(e.retryable());
}

#[tokio::test]
async fn garbage_truncated_mistyped_and_oversized_answers_are_bad_answers() {
    for fault in [
        Fault::Garbage,
        Fault::Truncated,
        Fault::WrongType,
        Fault::Huge,
    ] {
        let endpoint = server(fault).await;
        let e = attempt(&endpoint, Duration::from_secs(5))
            .await
            .expect_err("bad");
        assert!(matches!(e, AttemptError::BadAnswer(_)), "{fault:?}: {e}");
    }
}

#[tokio::test]
async fn a_body_that_never_ends_is_cut_by_the_timeout() {
    let endpoint = server(Fault::EndlessChunks).await;
    let started = std::time::Instant::now();
    let e = attempt(&endpoint, Duration::from_millis(300))
        .await
        .expect_err("endless");
    assert!(
        matches!(e, AttemptError::Timeout(_) | AttemptError::BadAnswer(_)),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}
