//! A node's change feed, read as a stream: `GET /status` for where the feed stands and
//! `GET /ucxi/v1/watch` for its entries (newline-delimited JSON: changes and heartbeats).
//!
//! Its own client beside the request/response transport: a watch answer never ends and
//! has no deadline, where every other exchange is bounded in time and read whole.

use std::fmt::Write as _;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::header::{ACCEPT, AUTHORIZATION};
use axum::http::{HeaderValue, Request, StatusCode, Uri};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;
use ucxl::Change;

use super::transport::{ClientError, ClientSettings, Connector};
use crate::config::EndpointUrl;

/// Longest line a feed may send: a change without content is a few hundred bytes.
const MAX_LINE: usize = 64 * 1024;
/// Largest `/status` answer read.
const MAX_STATUS: usize = 1024 * 1024;

/// Where a node's feed stands (its `/status`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FeedPosition {
    /// The feed id (32 hex characters).
    pub id: String,
    /// The last number committed.
    pub current_seq: u64,
    /// The oldest number retained.
    pub oldest_seq: u64,
}

/// One line of a feed.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedLine {
    /// A numbered change.
    Change {
        /// Its number in the node's feed.
        seq: u64,
        /// When the node committed it, when it says.
        committed_at: Option<DateTime<Utc>>,
        /// What changed.
        change: Box<Change>,
    },
    /// The stream has passed every number up to `seq` (sent when caught up and when idle).
    Heartbeat {
        /// The last number passed.
        seq: u64,
    },
}

/// Why a feed cannot be read (now).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// No connection or no answer.
    #[error("cannot reach the feed: {0}")]
    Connect(String),
    /// 410: the feed cannot continue the position asked for.
    #[error("the feed cannot continue from there ({reason})")]
    Gone {
        /// `compacted`, `ahead` or `feed_changed`.
        reason: String,
        /// The node's feed id.
        feed: Option<String>,
        /// Its oldest retained number.
        oldest_seq: Option<u64>,
        /// Its last number.
        current_seq: Option<u64>,
    },
    /// Another status, or a body that is not what a feed sends.
    #[error("unusable feed answer: {0}")]
    Bad(String),
}

/// The client of node feeds.
#[derive(Debug, Clone)]
pub struct FeedClient {
    http: Client<Connector, Empty<Bytes>>,
    authorization: Option<HeaderValue>,
    connect_timeout: Duration,
}

/// A body as a stream of byte chunks.
type Chunks = std::pin::Pin<Box<dyn futures_util::Stream<Item = std::io::Result<Bytes>> + Send>>;

/// An open feed: its lines, in order.
pub struct FeedStream {
    lines: FramedRead<StreamReader<Chunks, Bytes>, LinesCodec>,
}

impl std::fmt::Debug for FeedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedStream").finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Op<'a> {
    #[serde(borrow)]
    op: &'a str,
    seq: u64,
}

#[derive(Deserialize)]
struct ChangeLine {
    seq: u64,
    #[serde(default, with = "ucxl::envelope::rfc3339::option")]
    committed_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    change: Change,
}

/// Parses one feed line.
///
/// # Errors
/// A line that is neither a heartbeat nor a change.
pub fn parse_line(line: &str) -> Result<FeedLine, FeedError> {
    let bad = |e: &serde_json::Error| FeedError::Bad(format!("feed line: {e}"));
    let head: Op<'_> = serde_json::from_str(line).map_err(|e| bad(&e))?;
    if head.op == "heartbeat" {
        return Ok(FeedLine::Heartbeat { seq: head.seq });
    }
    let change: ChangeLine = serde_json::from_str(line).map_err(|e| bad(&e))?;
    Ok(FeedLine::Change {
        seq: change.seq,
        committed_at: change.committed_at,
        change: Box::new(change.change),
    })
}

impl FeedStream {
    /// The next line; `None` when the node ended the stream.
    ///
    /// # Errors
    /// A broken connection, an overlong line or one that does not parse.
    pub async fn next(&mut self) -> Option<Result<FeedLine, FeedError>> {
        let line = match self.lines.next().await? {
            Ok(line) => line,
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                return Some(Err(FeedError::Bad(format!(
                    "a feed line longer than {MAX_LINE} bytes"
                ))));
            }
            Err(LinesCodecError::Io(e)) => return Some(Err(FeedError::Connect(e.to_string()))),
        };
        Some(parse_line(&line))
    }
}

impl FeedClient {
    /// A client with `settings` (TLS, token, connect timeout).
    ///
    /// # Errors
    /// When the TLS configuration cannot be built.
    pub fn new(settings: &ClientSettings) -> Result<Self, ClientError> {
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(ucxl_service::serve::DEFAULT_HEADER_READ_TIMEOUT / 2)
            .pool_timer(TokioTimer::new())
            .build(settings.connector()?);
        Ok(Self {
            http,
            authorization: settings.authorization()?,
            connect_timeout: settings.connect_timeout,
        })
    }

    fn request(
        &self,
        endpoint: &EndpointUrl,
        path: &str,
    ) -> Result<Request<Empty<Bytes>>, FeedError> {
        let uri = Uri::try_from(format!("{}{path}", endpoint.as_str()))
            .map_err(|e| FeedError::Connect(e.to_string()))?;
        let mut builder = Request::get(uri);
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        // The gateway's own work: a new trace for each request (not exported), so the node's
        // log lines of it have one.
        builder
            .header(
                &ucxl_service::trace_context::TRACEPARENT,
                ucxl_service::TraceContext::unsampled().traceparent(),
            )
            .header(ACCEPT, HeaderValue::from_static("application/x-ndjson"))
            .body(Empty::new())
            .map_err(|e| FeedError::Connect(e.to_string()))
    }

    /// Where `endpoint`'s feed stands, answered within `timeout`.
    ///
    /// # Errors
    /// No answer, or one without a feed.
    pub async fn position(
        &self,
        endpoint: &EndpointUrl,
        timeout: Duration,
    ) -> Result<FeedPosition, FeedError> {
        #[derive(Deserialize)]
        struct Status {
            response: Data,
        }
        #[derive(Deserialize)]
        struct Data {
            data: WithFeed,
        }
        #[derive(Deserialize)]
        struct WithFeed {
            feed: FeedPosition,
        }
        let request = self.request(endpoint, "/status")?;
        let work = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| FeedError::Connect(short(&e)))?;
            if response.status() != StatusCode::OK {
                return Err(FeedError::Bad(format!(
                    "/status answered {}",
                    response.status()
                )));
            }
            let body = Limited::new(response.into_body(), MAX_STATUS)
                .collect()
                .await
                .map_err(|e| FeedError::Connect(short(&*e)))?
                .to_bytes();
            let status: Status = serde_json::from_slice(&body)
                .map_err(|e| FeedError::Bad(format!("/status without a feed: {e}")))?;
            Ok(status.response.data.feed)
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| Err(FeedError::Connect(format!("no answer within {timeout:?}"))))
    }

    /// Opens `endpoint`'s feed after `since` (of feed `feed`), every address, without
    /// content, with a heartbeat line after `heartbeat` of silence (the node's default when
    /// `None`). The connection (not the stream) must be made within the connect timeout and
    /// the answer's head within `timeout`.
    ///
    /// # Errors
    /// No connection, a 410 (the feed cannot continue: what the node says), another status.
    pub async fn open(
        &self,
        endpoint: &EndpointUrl,
        since: Option<u64>,
        feed: Option<&str>,
        heartbeat: Option<Duration>,
        timeout: Duration,
    ) -> Result<FeedStream, FeedError> {
        let mut path =
            String::from("/ucxi/v1/watch?pattern=ucxl%3A%2F%2Fany%3Aany%40any%3Aany%2F**");
        if let Some(since) = since {
            let _ = write!(path, "&since={since}");
        }
        if let Some(feed) = feed {
            path.push_str("&feed=");
            path.push_str(feed);
        }
        if let Some(heartbeat) = heartbeat {
            let _ = write!(
                path,
                "&heartbeat_ms={}",
                heartbeat.as_millis().clamp(10, 3_600_000)
            );
        }
        let request = self.request(endpoint, &path)?;
        let response = tokio::time::timeout(
            timeout.max(self.connect_timeout),
            self.http.request(request),
        )
        .await
        .map_err(|_| FeedError::Connect(format!("no answer within {timeout:?}")))?
        .map_err(|e| FeedError::Connect(short(&e)))?;
        let status = response.status();
        if status == StatusCode::GONE {
            return Err(gone(response).await);
        }
        if status != StatusCode::OK {
            return Err(FeedError::Bad(format!("watch answered {status}")));
        }
        let body = BodyStream::new(response.into_body()).filter_map(|frame| async move {
            match frame {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(std::io::Error::other(e))),
            }
        });
        let body: std::pin::Pin<
            Box<dyn futures_util::Stream<Item = std::io::Result<Bytes>> + Send>,
        > = Box::pin(body);
        Ok(FeedStream {
            lines: FramedRead::new(
                StreamReader::new(body),
                LinesCodec::new_with_max_length(MAX_LINE),
            ),
        })
    }
}

/// What a 410 says.
async fn gone(response: hyper::Response<hyper::body::Incoming>) -> FeedError {
    #[derive(Deserialize)]
    struct Failure {
        error: Body,
    }
    #[derive(Deserialize)]
    struct Body {
        details: Details,
    }
    #[derive(Deserialize)]
    struct Details {
        reason: String,
        feed: Option<String>,
        oldest_seq: Option<u64>,
        current_seq: Option<u64>,
    }
    let body = Limited::new(response.into_body(), MAX_STATUS)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    match serde_json::from_slice::<Failure>(&body) {
        Ok(f) => FeedError::Gone {
            reason: f.error.details.reason,
            feed: f.error.details.feed,
            oldest_seq: f.error.details.oldest_seq,
            current_seq: f.error.details.current_seq,
        },
        Err(e) => FeedError::Bad(format!("a 410 without the feed's position: {e}")),
    }
}

fn short(e: &(dyn std::error::Error + 'static)) -> String {
    ucxl::error::excerpt(&ucxl::error::Chain(e).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_changes_and_heartbeats() {
        assert_eq!(
            parse_line(r#"{"op":"heartbeat","seq":7,"at":"2026-11-30T10:00:00Z"}"#),
            Ok(FeedLine::Heartbeat { seq: 7 })
        );
        let put = parse_line(
            r#"{"seq":8,"committed_at":"2026-11-30T10:00:01Z","op":"put","address":"ucxl://a:b@c:d/x","id":"k1","version":2,"created_at":"2026-11-30T10:00:00Z","hash":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2,"content_type":"application/json"}"#,
        );
        match put {
            Ok(FeedLine::Change {
                seq: 8,
                committed_at: Some(_),
                change,
            }) if matches!(*change, Change::Put { version: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        let delete = parse_line(
            r#"{"seq":9,"op":"delete","address":"ucxl://a:b@c:d/x","id":"d1","deleted_at":"2026-11-30T10:00:02Z"}"#,
        );
        match delete {
            Ok(FeedLine::Change {
                seq: 9,
                committed_at: None,
                change,
            }) if matches!(*change, Change::Delete { .. }) => {}
            other => panic!("{other:?}"),
        }
        for bad in [
            "",
            "{}",
            r#"{"op":"put","seq":1}"#,
            r#"{"op":"heartbeat"}"#,
            "[1]",
        ] {
            assert!(matches!(parse_line(bad), Err(FeedError::Bad(_))), "{bad}");
        }
    }
}
