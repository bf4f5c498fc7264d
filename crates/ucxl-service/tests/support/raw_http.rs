//! A raw HTTP/1.1 client for what ordinary clients hide: a body that stalls half way.
//! Shared by the tests of `ucxl-service`, the gateway and the node.
//!
//! Time limits here only bound failures: a step that should happen fails the test when it
//! has not happened within [`BOUND`].

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a step that should happen may take before the test fails.
pub const BOUND: Duration = Duration::from_secs(30);

/// The head of a `PUT` of a `len`-byte JSON body to `path`, with `extra` header lines
/// (`name: value`).
#[must_use]
pub fn head(path: &str, len: usize, extra: &[&str]) -> String {
    let mut head = format!(
        "PUT {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n"
    );
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// One answer: its head and as much body as its `Content-Length` says, as text. Panics
/// when it has not arrived within [`BOUND`] or the connection fails first.
pub async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let read = async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            if let Some(len) = answer_len(&answer)
                && answer.len() >= len
            {
                return String::from_utf8_lossy(&answer).into_owned();
            }
            let n = stream.read(&mut buf).await.expect("the answer is readable");
            assert!(
                n > 0,
                "the connection closed before a whole answer: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(BOUND, read)
        .await
        .expect("an answer arrives")
}

/// The length of a whole answer (head and body), once its head has arrived.
fn answer_len(answer: &[u8]) -> Option<usize> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let body = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    Some(end + body)
}
