//! Answer compression: gzip, br or zstd, the one the client's `Accept-Encoding` prefers,
//! for answers of at least `RUSTLE_COMPRESSION_MIN_BYTES` (tower-http's
//! `CompressionLayer`; `Vary: Accept-Encoding` on every answer that could be compressed).
//!
//! Never for event streams (`GET /v1/watch`, the MCP transport's SSE answers): a compressor
//! holds bytes back until it has enough to work on, which would delay events and keep-alive
//! comments. Never for answers already encoded (`Content-Encoding`), partial ones
//! (`Content-Range`), images or gRPC (tower-http leaves those alone).
//!
//! It runs outside the request frame ([`crate::edge`]): the frame writes the UCXL body of an
//! error answer in place of what a handler left, so it must run before the body is
//! compressed. The frame's latency histogram ends at the answer's head; compressing happens
//! while the body is sent. A request without `Accept-Encoding` does not go through it.
//!
//! Request bodies are not decompressed: envelopes are small (`RUSTLE_MAX_BODY_BYTES`), no
//! common client compresses what it sends unasked, and a `Content-Encoding` body is read as
//! it is (JSON parsing refuses it with a 400).

use axum::http::{HeaderValue, Request, header};
use tower_http::compression::predicate::{And, NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{CompressionLayer, CompressionLevel};

/// One level for all three encoders. Their defaults differ widely in cost: brotli's is its
/// best (11), which took 277 ms for the 87 KB `OpenAPI` document here, where level 4 took
/// 2 ms and came out smaller than gzip's default (11.8 KB against 12.3 KB). gzip 4 is 5%
/// larger than gzip 6 in 60% of its time; zstd 4 is next to its default, 3.
const LEVEL: CompressionLevel = CompressionLevel::Precise(4);

/// What makes an answer worth compressing: its size, and a type that is not an event
/// stream, an image or gRPC.
pub type Worth = And<And<And<SizeAbove, NotForContentType>, NotForContentType>, NotForContentType>;

/// Whether an answer of `min_bytes` or more is worth compressing.
#[must_use]
pub fn worth(min_bytes: u64) -> Worth {
    SizeAbove::new(min_bytes)
        .and(NotForContentType::SSE)
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::GRPC)
}

/// The compression layer for answers of at least `min_bytes`; none when 0. Requests go
/// through [`allow_identity`] first.
#[must_use]
pub fn layer(min_bytes: u64) -> Option<CompressionLayer<Worth>> {
    (min_bytes > 0).then(|| {
        CompressionLayer::new()
            .gzip(true)
            .br(true)
            .zstd(true)
            .no_deflate()
            .quality(LEVEL)
            .compress_when(worth(min_bytes))
    })
}

/// Drops the items of `Accept-Encoding` that refuse an unencoded answer (`identity;q=0`,
/// `*;q=0`). tower-http answers a client that refuses it, and accepts none of the
/// encodings it may use, with 406, but only after the handler ran: a write done, then
/// refused, with the body of its success. Answering unencoded instead is what RFC 9110
/// §12.5.3 expects when no acceptable coding is available. Dropping a `*;q=0` changes no
/// other choice: without a wildcard only the encodings listed count.
#[must_use]
pub fn allow_identity<B>(mut request: Request<B>) -> Request<B> {
    let values = request.headers().get_all(header::ACCEPT_ENCODING);
    // A refusal has a q-value, so an `=`: most values (`gzip, deflate, br, zstd`) have none.
    if !values
        .iter()
        .any(|v| v.as_bytes().contains(&b'=') && items(v).any(refuses_identity))
    {
        return request;
    }
    let kept = values
        .iter()
        .flat_map(items)
        .filter(|item| !refuses_identity(item))
        .collect::<Vec<_>>()
        .join(", ");
    let kept = HeaderValue::from_str(&kept)
        .ok()
        .filter(|_| !kept.is_empty());
    let headers = request.headers_mut();
    headers.remove(header::ACCEPT_ENCODING);
    if let Some(kept) = kept {
        headers.insert(header::ACCEPT_ENCODING, kept);
    }
    request
}

/// The items of one `Accept-Encoding` value (none when it is not text).
fn items(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// Whether an `Accept-Encoding` item is `identity` or `*` with a q-value of 0.
fn refuses_identity(item: &str) -> bool {
    let mut parts = item.split(';');
    let coding = parts.next().unwrap_or_default().trim();
    if !(coding == "*" || coding.eq_ignore_ascii_case("identity")) {
        return false;
    }
    parts.any(|param| {
        let param = param.trim();
        param
            .strip_prefix("q=")
            .or_else(|| param.strip_prefix("Q="))
            .map(str::trim)
            .is_some_and(|q| q.starts_with('0') && q.bytes().all(|b| b == b'0' || b == b'.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept_encoding(values: &[&str]) -> Vec<String> {
        let mut request = Request::new(());
        for v in values {
            request.headers_mut().append(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(v).expect("value"),
            );
        }
        allow_identity(request)
            .headers()
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .map(|v| v.to_str().expect("text").to_owned())
            .collect()
    }

    #[test]
    fn refusals_of_identity_are_dropped_and_nothing_else() {
        for (sent, kept) in [
            (vec!["gzip, br"], vec!["gzip, br"]),
            (
                vec!["gzip;q=0.5, identity;q=0.1"],
                vec!["gzip;q=0.5, identity;q=0.1"],
            ),
            (vec!["deflate, identity;q=0"], vec!["deflate"]),
            (vec!["gzip;q=0, *;q=0"], vec!["gzip;q=0"]),
            (vec!["br, IDENTITY ; Q=0.000"], vec!["br"]),
            (vec!["*;q=0"], vec![]),
            (vec!["identity;q=0", "zstd"], vec!["zstd"]),
            (vec!["*;q=0.01"], vec!["*;q=0.01"]),
            // Not a q-value (four decimals): tower-http ignores the item.
            (vec!["identity;q=0.0001"], vec!["identity;q=0.0001"]),
        ] {
            assert_eq!(accept_encoding(&sent), kept, "{sent:?}");
        }
    }

    #[test]
    fn a_request_without_accept_encoding_is_left_alone() {
        assert!(accept_encoding(&[]).is_empty());
    }
}
