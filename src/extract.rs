//! Extractors whose rejections are [`ApiError`]s, so bad input gets the same UCXL error
//! shape as everything else: request context, query strings, JSON bodies, admin auth.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;
use ucxl::{Address, EnvelopeId};

use crate::backend::Call;
use crate::error::ApiError;
use crate::middleware::RequestId;
use crate::state::AppState;

/// Header a client uses to lower the request deadline.
pub const REQUEST_TIMEOUT_HEADER: &str = "x-request-timeout-ms";
/// Header that names the id of a write.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The request context: id, deadline and idempotency key.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// What backends get.
    pub call: Call,
    /// The client's `Idempotency-Key`, validated.
    pub idempotency_key: Option<EnvelopeId>,
}

impl Ctx {
    /// The request id.
    #[must_use]
    pub fn request_id(&self) -> &str {
        &self.call.request_id
    }
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map_or_else(|| uuid::Uuid::now_v7().to_string(), |r| r.0.to_string());
        let mut budget = state.config.load().request_timeout;
        if let Some(value) = parts.headers.get(REQUEST_TIMEOUT_HEADER) {
            let ms = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|ms| *ms >= 1)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "X-Request-Timeout-Ms must be a positive integer (milliseconds)",
                        json!({"header": "X-Request-Timeout-Ms", "expected": "1..=request timeout in ms"}),
                    )
                })?;
            budget = budget.min(Duration::from_millis(ms));
        }
        let idempotency_key = match parts.headers.get(IDEMPOTENCY_KEY_HEADER) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|v| EnvelopeId::parse(v).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "Idempotency-Key must be 1 to 128 printable ASCII characters",
                            json!({
                                "header": "Idempotency-Key",
                                "expected": "1..=128 printable ASCII characters, no leading or trailing space",
                            }),
                        )
                    })?,
            ),
        };
        Ok(Self {
            call: Call {
                request_id,
                deadline: Instant::now() + budget,
            },
            idempotency_key,
        })
    }
}

/// Just the request id, for routes that read no other header (probes must not fail on a
/// malformed header they do not use).
#[derive(Debug, Clone)]
pub struct Rid(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Rid {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<RequestId>().map_or_else(
            || uuid::Uuid::now_v7().to_string(),
            |r| r.0.to_string(),
        )))
    }
}

/// A query string deserialised into `T`; unknown, missing or malformed parameters are 400.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(v)| Self(v))
            .map_err(|rejection| {
                let text = rejection.body_text();
                let reason = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_owned();
                ApiError::bad_request(
                    format!("invalid query string: {reason}"),
                    json!({"query": reason}),
                )
            })
    }
}

/// `?address=` of the envelope routes.
#[derive(Debug, Clone, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AddressQuery {
    /// A UCXL address, URL-encoded:
    /// `ucxl://AGENT:ROLE@PROJECT:TASK[/TEMPORAL][/PATH]`.
    #[param(example = "ucxl://claude:architect@bzzz:v2-migration/decisions/protocol.json")]
    pub address: String,
}

/// The validated `?address=` parameter.
#[derive(Debug, Clone)]
pub struct AddressParam(pub Address);

impl<S: Send + Sync> FromRequestParts<S> for AddressParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ApiQuery(query) = ApiQuery::<AddressQuery>::from_request_parts(parts, state).await?;
        let address = Address::parse(&query.address)?;
        address.require_concrete()?;
        Ok(Self(address))
    }
}

/// A JSON body deserialised into `T`, within `RUSTLE_MAX_BODY_BYTES`.
///
/// Wrong content type: 415. Too large: 413. Malformed or mistyped JSON: 400
/// `INVALID_PAYLOAD` with the line, column and field path of the problem.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

fn is_json(content_type: &str) -> bool {
    content_type.parse::<mime::Mime>().is_ok_and(|m| {
        m.type_() == mime::APPLICATION
            && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
    })
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let headers = req.headers();
        let content_type = headers
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if !content_type.as_deref().is_some_and(is_json) {
            return Err(ApiError::UnsupportedMediaType {
                provided: content_type,
            });
        }
        let (limit, timeout) = {
            let config = state.config.load();
            (config.max_body_bytes, config.request_timeout)
        };
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let read = axum::body::to_bytes(req.into_body(), limit);
        // A client that stops sending mid-body must not hold the handler forever.
        let read =
            tokio::time::timeout(timeout, read)
                .await
                .map_err(|_| ApiError::BodyTimeout {
                    timeout_ms: timeout.as_millis(),
                })?;
        let bytes = read.map_err(|e| {
            let too_large =
                std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                    .any(<dyn std::error::Error + 'static>::is::<http_body_util::LengthLimitError>);
            if too_large {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::InvalidPayload {
                    message: "the request body could not be read".into(),
                    details: json!({}),
                }
            }
        })?;
        parse_json(&bytes).map(Self)
    }
}

/// Parses JSON, reporting where it went wrong.
///
/// # Errors
/// `INVALID_PAYLOAD` with `line`, `column`, `category` and, for mistyped data, `path`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        let path = e.path().to_string();
        json_error(&e.into_inner(), &path)
    })?;
    de.end().map_err(|e| json_error(&e, "."))?;
    Ok(value)
}

fn json_error(error: &serde_json::Error, path: &str) -> ApiError {
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
    ApiError::InvalidPayload {
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

/// Proof that the request carried the admin bearer token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// Compares secrets in constant time (over their digests, so length does not leak).
fn same_secret(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes())
        .ct_eq(&Sha256::digest(b.as_bytes()))
        .into()
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let config = state.config.load();
        let Some(token) = &config.admin_token else {
            return Err(ApiError::AdminDisabled);
        };
        let provided = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        match provided {
            Some(p) if same_secret(p, token.expose()) => Ok(Self),
            _ => {
                tracing::warn!("admin request with a missing or wrong bearer token");
                Err(ApiError::Unauthorized)
            }
        }
    }
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
        let ApiError::InvalidPayload { details, message } = e else {
            panic!("wrong variant")
        };
        assert_eq!(details["line"], 3);
        assert_eq!(details["category"], "syntax");
        assert!(message.contains("line 3"), "{message}");
        let e = parse_json::<Body>(br#"{"content": 1, "n": "x"}"#).expect_err("data");
        let ApiError::InvalidPayload { details, .. } = e else {
            panic!("wrong variant")
        };
        assert_eq!(details["path"], "n");
        assert_eq!(details["category"], "data");
        let e = parse_json::<Body>(br#"{"content": 1, "n": 1} trailing"#).expect_err("trailing");
        assert!(matches!(e, ApiError::InvalidPayload { .. }));
        let e = parse_json::<Body>(b"").expect_err("empty");
        let ApiError::InvalidPayload { details, .. } = e else {
            panic!("wrong variant")
        };
        assert_eq!(details["category"], "eof");
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
