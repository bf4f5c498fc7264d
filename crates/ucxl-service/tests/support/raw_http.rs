//! A raw HTTP/1.1 client for what ordinary clients hide: a body that stalls half way, one
//! written whole before the answer is read (as Python's `urllib` does), one that never
//! ends. Shared by the tests of `ucxl-service`, the gateway and the node.
//!
//! Time limits here only bound failures: a step that should happen fails the test when it
//! has not happened within [`BOUND`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a step that should happen may take before the test fails.
pub const BOUND: Duration = Duration::from_secs(30);

/// Size of the chunks of a chunked body.
const CHUNK: usize = 64 << 10;

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` declares the length.
    Length(usize),
    /// `Transfer-Encoding: chunked`: no length up front.
    Chunked,
}

/// The head of a `PUT` of a JSON body to `path`, with `extra` header lines (`name: value`).
#[must_use]
pub fn head(path: &str, framing: Framing, extra: &[&str]) -> String {
    let framing = match framing {
        Framing::Length(len) => format!("content-length: {len}"),
        Framing::Chunked => "transfer-encoding: chunked".to_owned(),
    };
    let mut head = format!(
        "PUT {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n{framing}\r\n"
    );
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// `len` bytes of a JSON document that never ends (`{"content": "xxx…`): refused for its
/// size before anything parses it.
#[must_use]
pub fn filler(len: usize) -> Vec<u8> {
    let mut body = br#"{"content": ""#.to_vec();
    body.resize(len.max(body.len()), b'x');
    body
}

/// `body` in chunked encoding, with the last chunk when `last`.
#[must_use]
pub fn chunked(body: &[u8], last: bool) -> Vec<u8> {
    let mut wire = Vec::with_capacity(body.len() + body.len() / CHUNK * 8 + 16);
    for chunk in body.chunks(CHUNK) {
        wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    if last {
        wire.extend_from_slice(b"0\r\n\r\n");
    }
    wire
}

/// A `PUT` with a `len`-byte body framed by `framing`, written whole before anything is
/// read; then the answer. Panics when writing fails (a broken pipe: the server closed
/// while the client was sending) or no whole answer arrives.
///
/// Then asks `GET /` on the same connection and panics unless that is answered too: only a
/// server that read the body to its end can go on with the connection, so this holds
/// however much of the body the socket buffers would have absorbed.
pub async fn put_whole_then_read(
    addr: SocketAddr,
    path: &str,
    framing: Framing,
    len: usize,
) -> String {
    let body = filler(len);
    let mut request = head(path, framing, &[]).into_bytes();
    match framing {
        Framing::Length(_) => request.extend_from_slice(&body),
        Framing::Chunked => request.extend_from_slice(&chunked(&body, true)),
    }
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    tokio::time::timeout(BOUND, stream.write_all(&request))
        .await
        .expect("the server takes the whole body")
        .expect("the whole body is written (no broken pipe)");
    let answer = read_answer(&mut stream).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("the connection is still open");
    let next = read_answer(&mut stream).await;
    assert!(next.starts_with("HTTP/1.1 "), "{next}");
    answer
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

/// Reads until the server closes the connection (end of file or a reset); panics when it
/// is still open after [`BOUND`].
pub async fn wait_for_close(stream: &mut (impl AsyncRead + Unpin)) {
    let closed = async {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stream.read(&mut buf).await
            && n > 0
        {}
    };
    tokio::time::timeout(BOUND, closed)
        .await
        .expect("the server closes the connection");
}
