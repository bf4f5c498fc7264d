//! The API error type: one enum, one code per variant, one place that turns it into a
//! UCXL error answer. 5xx answers are opaque; their causes go to the log.
//!
//! Handlers and extractors return [`ApiError`]; its `IntoResponse` only records the error
//! in the response's extensions. The [`ucxl_service::observe::frame`] layer, which knows
//! the request id and path, writes the body, so every error of every route (unknown route,
//! wrong method, rejected extractor, panic) has the same shape.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use ucxl::{AddressError, Code};
use ucxl_service::{BodyError, ErrorReport};

use crate::backend::BackendError;
use crate::upstream::cluster::{ClusterFailure, FailureKind};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An address, pattern or temporal segment that failed validation.
    #[error("{0}")]
    Address(#[from] AddressError),
    /// A missing or malformed query parameter or header.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// Structured details.
        details: Value,
    },
    /// A body that could not be read or parsed (wrong type, too large, too slow, bad JSON).
    #[error(transparent)]
    Body(#[from] BodyError),
    /// A body that is not the JSON the route takes.
    #[error("{message}")]
    InvalidPayload {
        /// What is wrong.
        message: String,
        /// Structured details (parse position, field path).
        details: Value,
    },
    /// The admin API is disabled.
    #[error("the admin API is disabled: set RUSTLE_ADMIN_TOKEN to enable it")]
    AdminDisabled,
    /// Missing, malformed or invalid credentials.
    #[error("{}", .0.message())]
    Unauthenticated(crate::auth::Unauthenticated),
    /// The caller may not do this operation on this address (or pattern, or route).
    #[error("not allowed to {operation} {target}")]
    Forbidden {
        /// The operation.
        operation: crate::auth::Op,
        /// The address, pattern or admin route, as the caller sent it.
        target: String,
    },
    /// The caller's request rate is spent.
    #[error("request rate exceeded: retry after {retry_after} s")]
    TooManyRequests {
        /// Seconds until a request is allowed again (`Retry-After`).
        retry_after: u32,
    },
    /// Nothing at this address (or route).
    #[error("{message}")]
    NotFound {
        /// What was not found.
        message: String,
        /// Structured details.
        details: Value,
    },
    /// A request that conflicts with the current state.
    #[error("{message}")]
    Conflict {
        /// What conflicts.
        message: String,
        /// Structured details.
        details: Value,
    },
    /// What was asked for is no longer there to give (a watch cursor that cannot be
    /// continued).
    #[error("{message}")]
    Gone {
        /// What is gone.
        message: String,
        /// Why (`reason`).
        details: Value,
    },
    /// The local store is full of data it must not evict.
    #[error("the local store is full ({limit} versions); raise RUSTLE_CACHE_MAX_ENTRIES")]
    InsufficientStorage {
        /// The configured limit.
        limit: usize,
    },
    /// The disk of the local store (`RUSTLE_DATA_DIR`) is full or failing: nothing of the
    /// write was kept.
    #[error(
        "the data directory's disk is full or failing: the write was not stored; free space in RUSTLE_DATA_DIR and retry"
    )]
    DiskFull,
    /// No backend can serve the request.
    #[error("{message}")]
    Unavailable {
        /// What is unavailable.
        message: String,
        /// Per-endpoint details.
        details: Value,
        /// Seconds the client should wait, sent as `Retry-After`.
        retry_after: Option<u32>,
    },
    /// The request deadline passed.
    #[error("{message}")]
    Timeout {
        /// What timed out.
        message: String,
        /// Per-endpoint details.
        details: Value,
    },
    /// A node answered with something unusable.
    #[error("{message}")]
    BadGateway {
        /// What was wrong with the answer.
        message: String,
        /// Which endpoint.
        details: Value,
    },
    /// A node's definite answer (4xx), passed on with its code, message and details.
    #[error("{message}")]
    Node {
        /// The node's code.
        code: Code,
        /// The node's message.
        message: String,
        /// The node's details.
        details: Value,
    },
    /// A bug or an environment failure: logged in full, answered opaquely.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A 400 for a query parameter or header.
    pub fn bad_request(message: impl Into<String>, details: Value) -> Self {
        Self::BadRequest {
            message: message.into(),
            details,
        }
    }

    /// A 404 with details.
    pub fn not_found(message: impl Into<String>, details: Value) -> Self {
        Self::NotFound {
            message: message.into(),
            details,
        }
    }

    /// A 500 for any error value.
    pub fn internal(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(error))
    }

    /// The UCXL code (and so the HTTP status).
    #[must_use]
    pub fn code(&self) -> Code {
        match self {
            Self::Address(e) => e.code(),
            Self::BadRequest { .. } => Code::BadRequest,
            Self::InvalidPayload { .. } => Code::InvalidPayload,
            Self::Body(e) => e.code(),
            Self::AdminDisabled | Self::Forbidden { .. } => Code::Forbidden,
            Self::Unauthenticated(_) => Code::Unauthorized,
            Self::TooManyRequests { .. } => Code::TooManyRequests,
            Self::NotFound { .. } => Code::NotFound,
            Self::Conflict { .. } => Code::Conflict,
            Self::Gone { .. } => Code::Gone,
            Self::InsufficientStorage { .. } | Self::DiskFull => Code::InsufficientStorage,
            Self::Unavailable { .. } => Code::ServiceUnavailable,
            Self::Timeout { .. } => Code::GatewayTimeout,
            Self::BadGateway { .. } => Code::BadGateway,
            Self::Node { code, .. } => *code,
            Self::Internal(_) => Code::InternalError,
        }
    }

    /// The details object sent to the client.
    fn details(&self) -> Value {
        match self {
            Self::Address(e) => e.details(),
            Self::BadRequest { details, .. }
            | Self::InvalidPayload { details, .. }
            | Self::NotFound { details, .. }
            | Self::Conflict { details, .. }
            | Self::Gone { details, .. }
            | Self::Unavailable { details, .. }
            | Self::Timeout { details, .. }
            | Self::BadGateway { details, .. }
            | Self::Node { details, .. } => details.clone(),
            Self::Body(e) => e.report().details,
            Self::InsufficientStorage { limit } => json!({"max_entries": limit}),
            Self::DiskFull => json!({"storage": "disk"}),
            Self::Forbidden { operation, target } => {
                json!({"operation": operation, "address": ucxl::error::excerpt(target)})
            }
            Self::TooManyRequests { retry_after } => json!({"retry_after_seconds": retry_after}),
            Self::AdminDisabled | Self::Unauthenticated(_) | Self::Internal(_) => json!({}),
        }
    }
}

impl ApiError {
    /// The answer when the cluster could not serve: 504 when the deadline passed, 502 when
    /// a node's answer was unusable, else 503; the details name every endpoint's error.
    fn from_cluster(failure: &ClusterFailure) -> Self {
        let details = failure.details();
        match failure.kind {
            FailureKind::Deadline => Self::Timeout {
                message: format!(
                    "the request deadline passed after {} attempts",
                    failure.attempts
                ),
                details,
            },
            FailureKind::BadAnswer => Self::BadGateway {
                message: "a BZZZ node answered with something that is not a valid UCXI answer"
                    .into(),
                details,
            },
            FailureKind::NoneAvailable => Self::Unavailable {
                message: "no BZZZ endpoint is available".into(),
                details,
                retry_after: Some(1),
            },
            FailureKind::Exhausted => Self::Unavailable {
                message: format!(
                    "no BZZZ endpoint could serve the request ({} attempts)",
                    failure.attempts
                ),
                details,
                retry_after: Some(1),
            },
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::NotFound { address } => Self::not_found(
                format!("nothing stored at {address}"),
                json!({"address": address}),
            ),
            BackendError::Write(err) => match err {
                ucxl::WriteError::HashMismatch { .. }
                | ucxl::WriteError::SizeMismatch { .. }
                | ucxl::WriteError::Digest(_) => Self::InvalidPayload {
                    message: err.to_string(),
                    details: json!({}),
                },
                ucxl::WriteError::IdIsTombstone(_)
                | ucxl::WriteError::IdIsVersion(_)
                | ucxl::WriteError::IdOfFreedVersion(_) => Self::Conflict {
                    message: err.to_string(),
                    details: json!({"header": "Idempotency-Key"}),
                },
                ucxl::WriteError::NotFound => {
                    Self::not_found("nothing to delete at this address", json!({}))
                }
            },
            BackendError::StoreFull { limit } => Self::InsufficientStorage { limit },
            BackendError::Storage { unwritable, cause } => {
                tracing::error!(error = %cause, "the local store's disk refused a write");
                if unwritable {
                    Self::DiskFull
                } else {
                    Self::Unavailable {
                        message: "the local store cannot take the write now: nothing was stored"
                            .into(),
                        details: json!({"storage": "disk"}),
                        retry_after: Some(1),
                    }
                }
            }
            BackendError::Timeout => Self::Timeout {
                message: "the request deadline passed".into(),
                details: json!({}),
            },
            BackendError::Internal(cause) => Self::internal(std::io::Error::other(cause)),
            BackendError::Refused(r) => Self::Node {
                code: r.code,
                message: r.message,
                details: r.details,
            },
            BackendError::Cluster(failure) => Self::from_cluster(&failure),
            BackendError::NotCached { address, cause } => Self::Unavailable {
                message: format!(
                    "the cluster cannot answer and the local cache does not hold {address}"
                ),
                details: json!({
                    "address": address,
                    "cluster": cause.as_ref().map(ClusterFailure::details),
                }),
                retry_after: Some(1),
            },
            BackendError::Journal(cause) => {
                tracing::error!(error = %cause, "the journal refused a fallback write");
                Self::Unavailable {
                    message:
                        "the cluster is unreachable and the durable journal cannot take the write"
                            .into(),
                    details: json!({}),
                    retry_after: Some(1),
                }
            }
        }
    }
}

impl ApiError {
    /// What the client is told: code, message and details (a 5xx's cause only to the log).
    #[must_use]
    pub fn report(&self) -> ErrorReport {
        match self {
            // Never leak a dependency's error text; the log has it.
            Self::Internal(source) => ErrorReport::internal(&format_args!("{source}: {source:?}")),
            other => ErrorReport::new(other.code(), other.to_string(), other.details()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.report().into_response();
        match &self {
            Self::Unauthenticated(why) => {
                // RFC 6750 §3: a challenge naming the error where one is defined.
                let challenge = match why.rfc6750_error() {
                    Some("invalid_request") => r#"Bearer realm="rustle", error="invalid_request""#,
                    Some(_) => r#"Bearer realm="rustle", error="invalid_token""#,
                    None => r#"Bearer realm="rustle""#,
                };
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            Self::Forbidden { .. } => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        r#"Bearer realm="rustle", error="insufficient_scope""#,
                    ),
                );
            }
            Self::TooManyRequests { retry_after: secs }
            | Self::Unavailable {
                retry_after: Some(secs),
                ..
            } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_are_opaque() {
        let e = ApiError::internal(std::io::Error::other("disk on fire at /secret/path"));
        let response = e.into_response();
        assert_eq!(response.status(), 500);
        let report = response.extensions().get::<ErrorReport>().expect("report");
        assert!(!report.message.contains("secret"));
        assert_eq!(report.details, json!({}));
    }

    #[test]
    fn each_error_has_its_code_and_status() {
        let errors = [
            (ApiError::bad_request("x", json!({})), Code::BadRequest),
            (
                ApiError::Body(BodyError::TooLarge { limit: 1 }),
                Code::PayloadTooLarge,
            ),
            (
                ApiError::Body(BodyError::UnsupportedMediaType { provided: None }),
                Code::UnsupportedMediaType,
            ),
            (ApiError::AdminDisabled, Code::Forbidden),
            (
                ApiError::Unauthenticated(crate::auth::Unauthenticated::Missing),
                Code::Unauthorized,
            ),
            (
                ApiError::Forbidden {
                    operation: crate::auth::Op::Write,
                    target: "ucxl://a:b@c:d".into(),
                },
                Code::Forbidden,
            ),
            (
                ApiError::TooManyRequests { retry_after: 2 },
                Code::TooManyRequests,
            ),
            (ApiError::not_found("x", json!({})), Code::NotFound),
            (
                ApiError::InsufficientStorage { limit: 1 },
                Code::InsufficientStorage,
            ),
            (
                ApiError::from(BackendError::Storage {
                    unwritable: true,
                    cause: "no space".into(),
                }),
                Code::InsufficientStorage,
            ),
            (
                ApiError::from(BackendError::Storage {
                    unwritable: false,
                    cause: "the writer has stopped".into(),
                }),
                Code::ServiceUnavailable,
            ),
            (
                ApiError::from(BackendError::Cluster(ClusterFailure {
                    kind: FailureKind::Deadline,
                    attempts: 1,
                    endpoints: Vec::new(),
                })),
                Code::GatewayTimeout,
            ),
            (
                ApiError::from(BackendError::Cluster(ClusterFailure {
                    kind: FailureKind::BadAnswer,
                    attempts: 1,
                    endpoints: Vec::new(),
                })),
                Code::BadGateway,
            ),
            (
                ApiError::from(BackendError::Cluster(ClusterFailure {
                    kind: FailureKind::NoneAvailable,
                    attempts: 0,
                    endpoints: Vec::new(),
                })),
                Code::ServiceUnavailable,
            ),
        ];
        for (e, expected) in errors {
            assert_eq!(e.code(), expected, "{e:?}");
            let response = e.into_response();
            assert_eq!(response.status().as_u16(), expected.status());
        }
    }

    #[test]
    fn unauthorized_asks_for_a_bearer_token_with_the_rfc_6750_error() {
        use crate::auth::Unauthenticated;
        let challenge = |why| {
            ApiError::Unauthenticated(why).into_response().headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .expect("ascii")
                .to_owned()
        };
        assert_eq!(
            challenge(Unauthenticated::Missing),
            r#"Bearer realm="rustle""#
        );
        assert!(challenge(Unauthenticated::Malformed).ends_with(r#"error="invalid_request""#));
        assert!(challenge(Unauthenticated::Invalid).ends_with(r#"error="invalid_token""#));
        let limited = ApiError::TooManyRequests { retry_after: 3 }.into_response();
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()[header::RETRY_AFTER], "3");
    }
}
