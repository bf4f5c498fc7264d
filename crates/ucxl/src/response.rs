//! The UCXL/UCXI response format (SPEC §5): codes `UCXL-<status>-<NAME>`, the success
//! envelope `{"response": {...}}` and the error envelope `{"error": {...}}`.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::envelope::rfc3339;

macro_rules! codes {
    ($($variant:ident = $status:literal, $name:literal, $doc:literal;)*) => {
        /// A UCXL response code; its HTTP status is the middle number.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $(#[doc = $doc] $variant,)*
        }

        impl Code {
            /// Every code, in status order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The HTTP status this code travels with.
            #[must_use]
            pub fn status(self) -> u16 {
                match self { $(Self::$variant => $status,)* }
            }

            /// The full code text, e.g. `UCXL-404-NOT_FOUND`.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => concat!("UCXL-", $status, "-", $name),)* }
            }

            /// The default human message of this code.
            #[must_use]
            pub fn default_message(self) -> &'static str {
                match self { $(Self::$variant => $doc,)* }
            }
        }
    };
}

codes! {
    Ok = 200, "OK", "OK";
    Created = 201, "CREATED", "Created";
    Accepted = 202, "ACCEPTED", "Accepted";
    BadRequest = 400, "BAD_REQUEST", "Bad request";
    InvalidAddress = 400, "INVALID_ADDRESS", "Invalid UCXL address";
    InvalidPayload = 400, "INVALID_PAYLOAD", "Invalid payload";
    TemporalInvalid = 400, "TEMPORAL_INVALID", "Invalid temporal segment";
    Unauthorized = 401, "UNAUTHORIZED", "Unauthorized";
    Forbidden = 403, "FORBIDDEN", "Forbidden";
    NotFound = 404, "NOT_FOUND", "Not found";
    MethodNotAllowed = 405, "METHOD_NOT_ALLOWED", "Method not allowed";
    RequestTimeout = 408, "REQUEST_TIMEOUT", "Request timeout";
    Conflict = 409, "CONFLICT", "Conflict";
    Gone = 410, "GONE", "Gone";
    PayloadTooLarge = 413, "PAYLOAD_TOO_LARGE", "Payload too large";
    UnsupportedMediaType = 415, "UNSUPPORTED_MEDIA_TYPE", "Unsupported media type";
    TooManyRequests = 429, "TOO_MANY_REQUESTS", "Too many requests";
    InternalError = 500, "INTERNAL_ERROR", "Internal error";
    BadGateway = 502, "BAD_GATEWAY", "Bad gateway";
    ServiceUnavailable = 503, "SERVICE_UNAVAILABLE", "Service unavailable";
    GatewayTimeout = 504, "GATEWAY_TIMEOUT", "Gateway timeout";
    InsufficientStorage = 507, "INSUFFICIENT_STORAGE", "Insufficient storage";
}

/// A code string that is not one of the known codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown UCXL code {0:?}")]
pub struct UnknownCode(pub String);

impl Code {
    /// Parses a code, accepting the seed system's `UCXL-200-SUCCESS` as `UCXL-200-OK`.
    ///
    /// # Errors
    /// [`UnknownCode`] for anything else.
    pub fn parse(text: &str) -> Result<Self, UnknownCode> {
        if text == "UCXL-200-SUCCESS" {
            return Ok(Self::Ok);
        }
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| UnknownCode(crate::error::excerpt(text)))
    }

    /// The most specific code for an HTTP status (used for errors raised outside handlers).
    #[must_use]
    pub fn for_status(status: u16) -> Self {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.status() == status)
            .unwrap_or(match status {
                400..=499 => Self::BadRequest,
                _ => Self::InternalError,
            })
    }

    /// True for 2xx codes.
    #[must_use]
    pub fn is_success(self) -> bool {
        (200..300).contains(&self.status())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Code {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "UCXL-<HTTP status>-<NAME>; the HTTP status equals the middle number",
            ))
            .enum_values(Some(Self::ALL.iter().map(|c| c.as_str())))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Code {}

/// A success answer: `{"response": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Success<T> {
    /// The answer.
    pub response: SuccessBody<T>,
}

/// The body of a success answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SuccessBody<T> {
    /// A 2xx code.
    pub code: Code,
    /// What happened, for humans.
    pub message: String,
    /// The payload.
    pub data: T,
    /// The request id (`X-Request-Id`).
    pub request_id: String,
    /// When the answer was made.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub timestamp: DateTime<Utc>,
}

impl<T> Success<T> {
    /// A success answer made now.
    pub fn new(
        code: Code,
        message: impl Into<String>,
        data: T,
        request_id: impl Into<String>,
    ) -> Self {
        Self {
            response: SuccessBody {
                code,
                message: message.into(),
                data,
                request_id: request_id.into(),
                timestamp: Utc::now(),
            },
        }
    }
}

/// An error answer: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"error": {
    "code": "UCXL-400-INVALID_ADDRESS",
    "message": "invalid role: whitespace ' ' is not allowed",
    "details": {"field": "role", "provided": "arch itect", "expected": "[A-Za-z0-9_-]{1,64} or any", "reason": "whitespace ' ' is not allowed"},
    "source": "rustle-gateway",
    "path": "/v1/envelopes",
    "request_id": "0192f6c0-7c3a-7b7e-9a0e-2f5d1c9b8a11",
    "timestamp": "2026-11-24T10:00:00.123456Z"
}})))]
pub struct Failure {
    /// The error.
    pub error: FailureBody,
}

/// The body of an error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailureBody {
    /// A 4xx or 5xx code.
    pub code: Code,
    /// What went wrong, for humans.
    pub message: String,
    /// Structured details (an object; empty when there are none).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: Value,
    /// Which service answered (`rustle-gateway`, `bzzz-node`).
    pub source: String,
    /// The request path.
    pub path: String,
    /// The request id (`X-Request-Id`).
    pub request_id: String,
    /// When the answer was made.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub timestamp: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_the_middle_number() {
        for code in Code::ALL {
            let middle: u16 = code.as_str()[5..8].parse().expect("three digits");
            assert_eq!(middle, code.status(), "{code}");
            assert!(code.as_str().starts_with("UCXL-"));
            assert_eq!(Code::parse(code.as_str()), Ok(*code));
        }
    }

    #[test]
    fn seed_success_alias_is_accepted() {
        assert_eq!(Code::parse("UCXL-200-SUCCESS"), Ok(Code::Ok));
        assert!(Code::parse("UCXL-299-NOPE").is_err());
        let code: Code = serde_json::from_str("\"UCXL-200-SUCCESS\"").expect("alias parses");
        assert_eq!(code, Code::Ok);
        assert_eq!(
            serde_json::to_string(&code).expect("json"),
            "\"UCXL-200-OK\""
        );
    }

    #[test]
    fn codes_for_statuses() {
        assert_eq!(Code::for_status(404), Code::NotFound);
        assert_eq!(Code::for_status(410), Code::Gone);
        assert_eq!(Code::Gone.as_str(), "UCXL-410-GONE");
        assert_eq!(Code::for_status(400), Code::BadRequest);
        assert_eq!(Code::for_status(418), Code::BadRequest);
        assert_eq!(Code::for_status(599), Code::InternalError);
        assert!(Code::Created.is_success());
        assert!(!Code::NotFound.is_success());
    }

    #[test]
    fn success_shape() {
        let body = Success::new(Code::Ok, "fine", serde_json::json!({"x": 1}), "rid");
        let json = serde_json::to_value(&body).expect("json");
        assert_eq!(json["response"]["code"], "UCXL-200-OK");
        assert_eq!(json["response"]["data"]["x"], 1);
        assert_eq!(json["response"]["request_id"], "rid");
        assert!(json["response"]["timestamp"].is_string());
    }
}
