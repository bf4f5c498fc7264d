//! Request bodies and query strings, with errors that say exactly what is wrong; a body over
//! the limit is read on and discarded, within bounds, before its 413.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, EXPECT};
use axum::http::{HeaderMap, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::time::Instant;
use ucxl::Code;

use crate::errors::ErrorReport;
use crate::headers::Deadline;

/// Why a JSON body was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyError {
    /// Not `application/json` (or `+json`).
    #[error("expected Content-Type application/json")]
    UnsupportedMediaType {
        /// The content type sent, if any.
        provided: Option<String>,
    },
    /// Larger than the limit.
    #[error("request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body stopped arriving.
    #[error("the request body did not arrive within {timeout_ms} ms")]
    Timeout {
        /// The time allowed.
        timeout_ms: u128,
    },
    /// The body could not be read (the connection failed).
    #[error("the request body could not be read")]
    Unreadable,
    /// Malformed or mistyped JSON.
    #[error("{message}")]
    Invalid {
        /// Where and what.
        message: String,
        /// `line`, `column`, `category`, `path`, `reason`.
        details: Value,
    },
}

impl BodyError {
    /// The UCXL code.
    #[must_use]
    pub fn code(&self) -> Code {
        match self {
            Self::UnsupportedMediaType { .. } => Code::UnsupportedMediaType,
            Self::TooLarge { .. } => Code::PayloadTooLarge,
            Self::Timeout { .. } => Code::RequestTimeout,
            Self::Unreadable | Self::Invalid { .. } => Code::InvalidPayload,
        }
    }

    /// The error as a report.
    #[must_use]
    pub fn report(&self) -> ErrorReport {
        let details = match self {
            Self::UnsupportedMediaType { provided } => {
                json!({"provided": provided, "expected": "application/json"})
            }
            Self::TooLarge { limit } => json!({"limit_bytes": limit}),
            Self::Timeout { timeout_ms } => json!({"timeout_ms": timeout_ms}),
            Self::Unreadable => json!({}),
            Self::Invalid { details, .. } => details.clone(),
        };
        ErrorReport::new(self.code(), self.to_string(), details)
    }
}

/// Whether a `Content-Type` is JSON (`application/json` or `application/*+json`).
#[must_use]
pub fn is_json(content_type: &str) -> bool {
    content_type.parse::<mime::Mime>().is_ok_and(|m| {
        m.type_() == mime::APPLICATION
            && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
    })
}

/// At most this much of a too-large body is read and thrown away before the 413.
///
/// A client that writes its whole body before reading the answer (Python's `urllib`, many
/// SDKs) gets a broken pipe, not the 413, when the server closes while it is still sending:
/// closing a socket with unread data resets it. So the rest of a too-large body is read and
/// discarded first, as nginx's lingering close does (`lingering_time` 30 s,
/// `lingering_timeout` 5 s there). Ours is tighter: a lingering request holds its task and,
/// in the gateway, an in-flight slot. 8 MiB arrive in well under [`LINGER_TIME`] on any
/// link a service client uses; a body that does not end within both bounds is cut, the
/// connection closed after the 413. Nothing is kept: each chunk is dropped on arrival.
pub const LINGER_BYTES: usize = 8 << 20;

/// At most this long is spent discarding a too-large body (and never past the request's
/// deadline), so lingering cannot hold a connection or a task longer. See [`LINGER_BYTES`].
pub const LINGER_TIME: Duration = Duration::from_secs(1);

/// Reads and parses a JSON body of at most `limit` bytes, arriving by `deadline`.
///
/// A body over the limit is read on and discarded up to [`LINGER_BYTES`] within
/// [`LINGER_TIME`] before the 413, so a client still sending it receives the answer.
///
/// # Errors
/// 415 for another content type, 413 over the limit (declared or streamed), 408 when the
/// body stops arriving, 400 `INVALID_PAYLOAD` with the position for bad JSON.
pub async fn read_json<T: DeserializeOwned>(
    req: Request,
    limit: usize,
    deadline: Deadline,
) -> Result<T, BodyError> {
    let headers = req.headers();
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if !content_type.as_deref().is_some_and(is_json) {
        return Err(BodyError::UnsupportedMediaType {
            provided: content_type,
        });
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|len| *len > limit as u64) {
        if lingers(headers, declared) {
            linger(req.into_body(), deadline).await;
        }
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = req.into_body();
    let read = Limited::new(&mut body, limit).collect();
    // A client that stops sending mid-body must not hold the handler forever.
    let read = tokio::time::timeout_at(deadline.at, read)
        .await
        .map_err(|_| BodyError::Timeout {
            timeout_ms: deadline.budget.as_millis(),
        })?;
    match read {
        Ok(collected) => parse_json(&collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => {
            linger(body, deadline).await;
            Err(BodyError::TooLarge { limit })
        }
        Err(_) => Err(BodyError::Unreadable),
    }
}

/// Whether to read on after a declared length over the limit. Not for a client waiting for
/// `100 Continue`: it has sent nothing yet, and reading would invite the body. Not for a
/// body beyond [`LINGER_BYTES`]: it would be cut anyway, so both sides are spared the wait.
fn lingers(headers: &HeaderMap, declared: u64) -> bool {
    let expects_continue = headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    !expects_continue && declared <= LINGER_BYTES as u64
}

/// Reads and discards what is left of a too-large body: [`LINGER_BYTES`] at most, within
/// [`LINGER_TIME`] and the request's deadline.
async fn linger(mut body: Body, deadline: Deadline) {
    let until = deadline.at.min(Instant::now() + LINGER_TIME);
    let drain = async {
        let mut left = LINGER_BYTES;
        while let Some(Ok(frame)) = body.frame().await {
            let Some(data) = frame.data_ref() else {
                continue;
            };
            let Some(rest) = left.checked_sub(data.len()) else {
                return false;
            };
            left = rest;
        }
        true
    };
    let ended = tokio::time::timeout_at(until, drain).await.unwrap_or(false);
    if !ended {
        tracing::debug!("a too-large body did not end within the linger bounds; closing");
    }
}

/// Parses JSON, reporting where it went wrong.
///
/// # Errors
/// [`BodyError::Invalid`] with `line`, `column`, `category` and, for mistyped data, `path`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        let path = e.path().to_string();
        json_error(&e.into_inner(), &path)
    })?;
    de.end().map_err(|e| json_error(&e, "."))?;
    Ok(value)
}

fn json_error(error: &serde_json::Error, path: &str) -> BodyError {
    let category = match error.classify() {
        serde_json::error::Category::Io => "io",
        serde_json::error::Category::Syntax => "syntax",
        serde_json::error::Category::Data => "data",
        serde_json::error::Category::Eof => "eof",
    };
    // serde_json's message ends with " at line L column C"; details carry those.
    let text = error.to_string();
    let reason = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(r, _)| r)
        .to_owned();
    let message = if category == "data" && path != "." {
        format!("invalid payload at {path}: {reason}")
    } else {
        format!(
            "malformed JSON at line {}, column {}: {reason}",
            error.line(),
            error.column()
        )
    };
    BodyError::Invalid {
        message,
        details: json!({
            "line": error.line(),
            "column": error.column(),
            "category": category,
            "path": path,
            "reason": reason,
        }),
    }
}

/// Deserialises a query string; unknown, duplicate, missing or malformed parameters are a
/// 400 `BAD_REQUEST` naming the problem.
///
/// # Errors
/// The 400 report.
pub fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, ErrorReport> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(v)| v)
        .map_err(|rejection| {
            let text = rejection.body_text();
            let reason = text
                .strip_prefix("Failed to deserialize query string: ")
                .unwrap_or(&text)
                .to_owned();
            ErrorReport::new(
                Code::BadRequest,
                format!("invalid query string: {reason}"),
                json!({"query": reason}),
            )
        })
}

/// The value of a query string made of exactly one parameter, `name` (decoded as
/// `application/x-www-form-urlencoded`, as [`query`] decodes it); `None` for any other
/// query (absent, empty, another parameter, more than one), which the caller then reads
/// with [`query`] for its answer or its error.
///
/// The routes that take one `?address=` read it here on every request: this skips the
/// generic deserialiser (`serde_urlencoded` through path tracking), about 4k instructions
/// per request, and accepts exactly what it accepts.
#[must_use]
pub fn sole_param<'a>(uri: &'a Uri, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    let mut pairs = form_urlencoded::parse(uri.query()?.as_bytes());
    let (key, value) = pairs.next()?;
    (key == name && pairs.next().is_none()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sole_parameter_is_read_as_the_generic_parser_reads_it() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Q {
            address: String,
        }
        for q in [
            "/r?address=ucxl%3A%2F%2Fa%3Ab%40c%3Ad%2Fx",
            "/r?address=a+b%20c",
            "/r?address=",
            "/r?address",
            "/r?&address=x&",
            "/r?address=%FF%41",
            "/r?address=x&other=1",
            "/r?address=x&address=y",
            "/r?other=1",
            "/r?",
            "/r",
            "/r?addres=x",
        ] {
            let uri: Uri = q.parse().expect("uri");
            let generic = query::<Q>(&uri).map(|q| q.address).ok();
            let sole = sole_param(&uri, "address").map(std::borrow::Cow::into_owned);
            // Where the fast path answers, it answers what the generic parser does; where
            // it does not, the generic parser gives the answer or the error.
            if let Some(value) = &sole {
                assert_eq!(Some(value), generic.as_ref(), "{q}");
            }
        }
        let uri: Uri = "/r?address=a%2Bb+c".parse().expect("uri");
        assert_eq!(sole_param(&uri, "address").as_deref(), Some("a+b c"));
        for q in [
            "/r?address=x&address=y",
            "/r?a=1&address=x",
            "/r",
            "/r?other=1",
        ] {
            let uri: Uri = q.parse().expect("uri");
            assert_eq!(sole_param(&uri, "address"), None, "{q}");
        }
    }

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("garbage"));
    }

    #[test]
    fn json_errors_carry_position_and_path() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Body {
            content: serde_json::Value,
            n: u32,
        }
        let e = parse_json::<Body>(b"{\n  \"content\": 1,\n  \"n\": }").expect_err("syntax");
        let BodyError::Invalid { details, message } = e else {
            panic!("wrong variant")
        };
        assert_eq!(details["line"], 3);
        assert_eq!(details["category"], "syntax");
        assert!(message.contains("line 3"), "{message}");
        let e = parse_json::<Body>(br#"{"content": 1, "n": "x"}"#).expect_err("data");
        let BodyError::Invalid { details, .. } = e else {
            panic!("wrong variant")
        };
        assert_eq!(details["path"], "n");
        assert_eq!(details["category"], "data");
        let e = parse_json::<Body>(br#"{"content": 1, "n": 1} trailing"#).expect_err("trailing");
        assert!(matches!(e, BodyError::Invalid { .. }));
        let e = parse_json::<Body>(b"").expect_err("empty");
        let BodyError::Invalid { details, .. } = e else {
            panic!("wrong variant")
        };
        assert_eq!(details["category"], "eof");
    }

    #[test]
    fn only_a_declared_body_within_the_bound_and_already_on_its_way_is_read_on() {
        let plain = HeaderMap::new();
        let mut expecting = HeaderMap::new();
        expecting.insert(EXPECT, "100-Continue".parse().expect("header value"));
        let bound = LINGER_BYTES as u64;
        assert!(lingers(&plain, 2 << 20));
        assert!(lingers(&plain, bound));
        assert!(!lingers(&plain, bound + 1));
        assert!(!lingers(&expecting, 2 << 20));
    }

    #[test]
    fn reports_carry_the_right_codes() {
        assert_eq!(
            BodyError::TooLarge { limit: 1 }.report().code,
            Code::PayloadTooLarge
        );
        assert_eq!(
            BodyError::Timeout { timeout_ms: 1 }.report().code,
            Code::RequestTimeout
        );
        assert_eq!(
            BodyError::UnsupportedMediaType { provided: None }
                .report()
                .code,
            Code::UnsupportedMediaType
        );
    }

    #[test]
    fn query_errors_are_400() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Q {
            address: String,
        }
        let uri: Uri = "/x?adress=1".parse().expect("uri");
        let e = query::<Q>(&uri).expect_err("unknown field");
        assert_eq!(e.code, Code::BadRequest);
        assert!(e.message.contains("adress"), "{}", e.message);
    }
}
