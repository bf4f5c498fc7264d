//! Request bodies and query strings, with errors that say exactly what is wrong.

use axum::extract::{Query, Request};
use axum::http::Uri;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
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

/// Reads and parses a JSON body of at most `limit` bytes, arriving by `deadline`.
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
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let read = axum::body::to_bytes(req.into_body(), limit);
    // A client that stops sending mid-body must not hold the handler forever.
    let read = tokio::time::timeout_at(deadline.at, read)
        .await
        .map_err(|_| BodyError::Timeout {
            timeout_ms: deadline.budget.as_millis(),
        })?;
    let bytes = read.map_err(|e| {
        let too_large = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .any(<dyn std::error::Error + 'static>::is::<http_body_util::LengthLimitError>);
        if too_large {
            BodyError::TooLarge { limit }
        } else {
            BodyError::Unreadable
        }
    })?;
    parse_json(&bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

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
