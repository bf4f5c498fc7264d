//! Request bodies over a raw socket to a node: a body that stops arriving is answered by the
//! deadline the client set.

use super::address;
use super::harness::{NodeProc, enc};
use super::raw_http;

/// A lone node with a request timeout longer than [`raw_http::BOUND`], so an answer that
/// waited for the configured timeout fails the test.
async fn node() -> NodeProc {
    NodeProc::start(
        "bodies",
        &[],
        None,
        &[("BZZZ_REQUEST_TIMEOUT_MS", "120000")],
    )
    .await
}

fn put_path(name: &str) -> String {
    format!("/ucxi/v1/put?address={}", enc(&address(name)))
}

#[tokio::test]
async fn a_stalled_body_is_answered_by_the_deadline_the_client_set() {
    use tokio::io::AsyncWriteExt;
    let node = node().await;
    let mut stream = tokio::net::TcpStream::connect(&node.http)
        .await
        .expect("connects");
    let mut request = raw_http::head(&put_path("stalled"), 100, &["x-request-timeout-ms: 500"]);
    request.push_str(r#"{"content""#);
    stream.write_all(request.as_bytes()).await.expect("writes");
    let answer = raw_http::read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("UCXL-408-REQUEST_TIMEOUT"), "{answer}");
    assert!(answer.contains(r#""timeout_ms":500"#), "{answer}");
}
