//! Request bodies over a raw socket to a node: a body that stops arriving is answered by the
//! deadline the client set, and a client that writes a too-large body whole before reading
//! gets the 413 (the node read and discarded the rest) instead of a broken pipe.

use super::address;
use super::harness::{NodeProc, enc};
use super::raw_http::{self, Framing};

/// The node's body limit here.
const LIMIT: usize = 1 << 20;

/// A lone node with a 1 MiB body limit and a request timeout longer than
/// [`raw_http::BOUND`], so an answer that waited for the configured timeout fails the test.
async fn node() -> NodeProc {
    NodeProc::start(
        "bodies",
        &[],
        None,
        &[
            ("BZZZ_MAX_BODY_BYTES", "1048576"),
            ("BZZZ_REQUEST_TIMEOUT_MS", "120000"),
        ],
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
    let mut request = raw_http::head(
        &put_path("stalled"),
        Framing::Length(100),
        &["x-request-timeout-ms: 500"],
    );
    request.push_str(r#"{"content""#);
    stream.write_all(request.as_bytes()).await.expect("writes");
    let answer = raw_http::read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("UCXL-408-REQUEST_TIMEOUT"), "{answer}");
    assert!(answer.contains(r#""timeout_ms":500"#), "{answer}");
}

#[tokio::test]
async fn a_client_that_writes_a_too_large_body_before_reading_gets_the_413() {
    let node = node().await;
    let addr = node.http.parse().expect("the node's address");
    for framing in [Framing::Length(2 * LIMIT), Framing::Chunked] {
        let answer =
            raw_http::put_whole_then_read(addr, &put_path("large"), framing, 2 * LIMIT).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{framing:?}: {answer}");
        assert!(
            answer.contains("UCXL-413-PAYLOAD_TOO_LARGE"),
            "{framing:?}: {answer}"
        );
    }
}

/// The content of a put is kept as the JSON text it arrived in: the node's answer, a read
/// of the version and a read after a restart carry it byte for byte (member order, number
/// spelling, escapes), and the hash is still the JCS hash of its value.
#[tokio::test]
async fn content_is_stored_and_served_as_the_text_it_arrived_in() {
    let mut node = node().await;
    let client = reqwest::Client::new();
    let a = address("verbatim");
    let text = r#"{"z":1.50,"a":["\u00e9",1e2],"m":{"y":null,"b":true}}"#;
    let body = format!(r#"{{"content":{text},"content_type":"application/json"}}"#);
    let answer = client
        .put(node.url(&put_path("verbatim")))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("put")
        .text()
        .await
        .expect("answer");
    assert!(answer.contains(&format!(r#""content":{text}"#)), "{answer}");
    let expected = ucxl::content_digest(&serde_json::from_str(text).expect("json"))
        .expect("digest")
        .0;
    assert!(answer.contains(expected.as_str()), "{answer}");
    let get = format!("/ucxi/v1/get?address={}", enc(&a));
    for when in ["before a restart", "after a restart"] {
        let read = client
            .get(node.url(&get))
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("answer");
        assert!(
            read.contains(&format!(r#""content":{text}"#)),
            "{when}: {read}"
        );
        if when.starts_with("before") {
            node.restart().await;
        }
    }
}
