//! Extractors whose rejections are [`ApiError`]s, so bad input gets the same UCXL error
//! shape as everything else: request context, query strings, JSON bodies. (The address
//! parameter comes with the caller's permission: `auth::http::Permitted`.)

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use ucxl::EnvelopeId;
use ucxl_service::headers::Deadline;

use std::sync::Arc;

use crate::audit::Slot;
use crate::auth::Principal;
use crate::auth::http::Caller;
use crate::backend::{Call, Outcome, Served};
use crate::error::ApiError;
use crate::reply::Failed;
use crate::state::AppState;
use ucxl_service::Rid;

/// The request context: id, deadline, idempotency key, the caller and the audit facts.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// What backends get.
    pub call: Call,
    /// The client's `Idempotency-Key`, validated.
    pub idempotency_key: Option<EnvelopeId>,
    /// Who is calling.
    pub caller: Arc<Principal>,
    /// What the audit log will say of this request.
    pub audit: Slot,
}

impl Ctx {
    /// The request id.
    #[must_use]
    pub fn request_id(&self) -> &str {
        &self.call.request_id
    }

    /// A backend's result, with the backend that served (or failed) noted for the audit
    /// log and a failure turned into its error answer.
    ///
    /// # Errors
    /// The backend's failure as an answer (with the `X-Rustle-*` headers of who failed).
    pub fn served<T>(&self, outcome: Outcome<T>) -> Result<Served<T>, Failed> {
        match outcome {
            Ok(served) => {
                self.audit.backend(served.via.backend);
                Ok(served)
            }
            Err(not_served) => {
                self.audit.backend(not_served.via.backend);
                Err(Failed::backend(not_served))
            }
        }
    }
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Ok(Rid(request_id)) = Rid::from_request_parts(parts, state).await;
        let report = |r: ucxl_service::ErrorReport| ApiError::BadRequest {
            message: r.message,
            details: r.details,
        };
        let deadline = Deadline::of(
            &parts.headers,
            &parts.extensions,
            state.config.load().request_timeout,
        )
        .map_err(report)?;
        let idempotency_key =
            ucxl_service::headers::idempotency_key(&parts.headers).map_err(report)?;
        let Caller(caller) = Caller::from_request_parts(parts, state).await?;
        let audit = parts.extensions.get::<Slot>().cloned().unwrap_or_default();
        let trace = parts
            .extensions
            .get::<ucxl_service::TraceContext>()
            .cloned()
            .unwrap_or_else(ucxl_service::TraceContext::root);
        Ok(Self {
            call: Call {
                request_id,
                deadline: deadline.at,
                trace,
            },
            idempotency_key,
            caller,
            audit,
        })
    }
}

/// A query string deserialised into `T`; unknown, missing or malformed parameters are 400.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        ucxl_service::query(&parts.uri)
            .map(Self)
            .map_err(|report| ApiError::BadRequest {
                message: report.message,
                details: report.details,
            })
    }
}

/// One agent, role, project or task of an address: `[A-Za-z0-9_-]{1,64}`. `any` is one of
/// them, a literal (an exact key, as in BZZZ); `*` is not (it belongs to patterns).
macro_rules! component {
    () => {
        r"[A-Za-z0-9_-]{1,64}"
    };
}
/// A temporal segment's N: a decimal integer 0..=4294967295 (leading zeros allowed).
macro_rules! number {
    () => {
        r"0*(?:[0-9]{1,9}|[1-3][0-9]{9}|4[01][0-9]{8}|42[0-8][0-9]{7}|429[0-3][0-9]{6}|4294[0-8][0-9]{5}|42949[0-5][0-9]{4}|429496[0-6][0-9]{3}|4294967[01][0-9]{2}|42949672[0-8][0-9]|429496729[0-5])"
    };
}
/// One path segment: `[A-Za-z0-9_.-]+`, but not `.` or `..`.
macro_rules! segment {
    () => {
        r"(?:[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.\.[A-Za-z0-9_.-]+)"
    };
}
/// `ucxl://AGENT:ROLE@PROJECT:TASK`, the scheme in any case.
macro_rules! authority {
    () => {
        concat!(
            r"^[uU][cC][xX][lL]://",
            component!(),
            ":",
            component!(),
            "@",
            component!(),
            ":",
            component!()
        )
    };
}

/// The grammar of an address as an ECMA-262 regex (with the 1024-byte limit as `maxLength`),
/// so the `OpenAPI` document says exactly which addresses are accepted (SPEC §2). It needs
/// no lookaround, so the tests run it with the `regex` crate against the parser.
pub const ADDRESS_PATTERN: &str = concat!(
    authority!(),
    r"(?:/+(?:\*\^|\*~(?:",
    number!(),
    r")?|~~",
    number!(),
    r"|\^\^",
    number!(),
    r"))?(?:/+",
    segment!(),
    r")*/*$"
);
/// The same for writes and deletes: no temporal segment but `*^` (the latest).
pub const WRITE_ADDRESS_PATTERN: &str =
    concat!(authority!(), r"(?:/+\*\^)?(?:/+", segment!(), r")*/*$");

/// The `address` query parameter with `pattern`.
fn address_parameter(pattern: &str, description: &str) -> utoipa::openapi::path::Parameter {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    let schema = utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .pattern(Some(pattern))
        .min_length(Some(1))
        .max_length(Some(ucxl::address::MAX_ADDRESS_BYTES))
        .description(Some(description))
        .build();
    ParameterBuilder::new()
        .name("address")
        .parameter_in(ParameterIn::Query)
        .required(utoipa::openapi::Required::True)
        .description(Some(description))
        .schema(Some(schema))
        .example(Some(serde_json::json!(
            "ucxl://claude:architect@bzzz:v2-migration/decisions/protocol.json"
        )))
        .build()
}

/// `?address=` of the envelope routes.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressQuery {
    /// The address, as sent.
    pub address: String,
}

impl utoipa::IntoParams for AddressQuery {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        vec![address_parameter(
            ADDRESS_PATTERN,
            "A UCXL address, URL-encoded: `ucxl://AGENT:ROLE@PROJECT:TASK[/TEMPORAL][/PATH]`.",
        )]
    }
}

/// `?address=` of the write routes, for the documentation ([`AddressQuery`] reads it):
/// writes and deletes address the latest version.
#[derive(Debug)]
pub struct WriteAddressQuery;

impl utoipa::IntoParams for WriteAddressQuery {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        vec![address_parameter(
            WRITE_ADDRESS_PATTERN,
            "A UCXL address, URL-encoded: `ucxl://AGENT:ROLE@PROJECT:TASK[/PATH]`. Writes and \
             deletes address the latest version: no temporal segment (or `*^`).",
        )]
    }
}

/// An optional request header, described in the parameter and in its schema (where
/// generators read it).
///
/// The headers are documented by hand, not with `IntoParams`' `schema_with`: that drops the
/// field's description and example.
pub(crate) fn header_parameter(
    name: &str,
    description: &str,
    schema: utoipa::openapi::ObjectBuilder,
    example: serde_json::Value,
) -> utoipa::openapi::path::Parameter {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(utoipa::openapi::Required::False)
        .description(Some(description))
        .schema(Some(schema.description(Some(description))))
        .example(Some(example))
        .build()
}

/// `X-Request-Timeout-Ms`, which `Ctx` reads: any positive integer (one above the
/// configured deadline lowers nothing, however large).
fn timeout_parameter() -> utoipa::openapi::path::Parameter {
    header_parameter(
        "X-Request-Timeout-Ms",
        "Lowers the request deadline (milliseconds): any positive integer; above \
         `RUSTLE_REQUEST_TIMEOUT_MS` (the deadline when it is absent) it lowers nothing. \
         Everything the request waits for is answered by then: a body still arriving \
         with 408, a backend that has not answered with 504.",
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::Integer)
            .minimum(Some(1)),
        serde_json::json!(2000),
    )
}

/// `Idempotency-Key`, which `Ctx` reads: 1..=128 printable ASCII characters, none at
/// either end a space.
fn idempotency_key_parameter() -> utoipa::openapi::path::Parameter {
    header_parameter(
        "Idempotency-Key",
        "The id of the version or tombstone written: a retry with the same key is a no-op \
         that answers what the first request did (a store: 200 with the envelope stored \
         first). 1..=128 printable ASCII characters, no space at either end; a UUIDv7 is \
         chosen when absent.",
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .min_length(Some(1))
            .max_length(Some(128))
            .pattern(Some(r"^[!-~](?:[ -~]{0,126}[!-~])?$")),
        serde_json::json!("7f1c2a52-client-retry-key"),
    )
}

/// The headers of the read routes, for the documentation (`Ctx` reads them).
#[derive(Debug)]
pub struct ReadHeaders;

impl utoipa::IntoParams for ReadHeaders {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        vec![timeout_parameter()]
    }
}

/// The headers of the write routes, for the documentation (`Ctx` reads them).
#[derive(Debug)]
pub struct WriteHeaders;

impl utoipa::IntoParams for WriteHeaders {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        vec![idempotency_key_parameter(), timeout_parameter()]
    }
}

/// A JSON body deserialised into `T`, within `RUSTLE_MAX_BODY_BYTES` and the request's
/// deadline.
///
/// Wrong content type: 415. Too large: 413 (after discarding the rest of the body, within
/// bounds). Not arrived by the deadline: 408. Malformed or mistyped JSON: 400
/// `INVALID_PAYLOAD` with the line, column and field path of the problem.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (limit, timeout) = {
            let config = state.config.load();
            (config.max_body_bytes, config.request_timeout)
        };
        // The request's deadline, as `Ctx` has it: a body that stops arriving is answered
        // by then, not at the configured timeout.
        let deadline = Deadline::of(req.headers(), req.extensions(), timeout).map_err(|r| {
            ApiError::BadRequest {
                message: r.message,
                details: r.details,
            }
        })?;
        Ok(Self(ucxl_service::read_json(req, limit, deadline).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::{ADDRESS_PATTERN, WRITE_ADDRESS_PATTERN};
    use proptest::prelude::*;
    use std::sync::LazyLock;
    use ucxl::Address;
    use ucxl::address::MAX_ADDRESS_BYTES;

    /// What the `OpenAPI` schema admits: the pattern within `minLength`/`maxLength` (the
    /// input is ASCII whenever the pattern matches, so bytes are characters).
    fn admits(pattern: &regex::Regex, input: &str) -> bool {
        (1..=MAX_ADDRESS_BYTES).contains(&input.len()) && pattern.is_match(input)
    }

    /// The two documented patterns, compiled once.
    static PATTERNS: LazyLock<(regex::Regex, regex::Regex)> = LazyLock::new(|| {
        let compile = |p| regex::Regex::new(p).expect("the documented pattern compiles");
        (compile(ADDRESS_PATTERN), compile(WRITE_ADDRESS_PATTERN))
    });

    /// Checks both documented patterns against the parser (and, for writes, `require_latest`).
    fn agree(input: &str) -> Result<(), String> {
        let (read, write) = &*PATTERNS;
        let parsed = Address::parse(input);
        let readable = parsed.is_ok();
        let writable = parsed.is_ok_and(|a| a.require_latest().is_ok());
        if admits(read, input) != readable {
            return Err(format!("ADDRESS_PATTERN admits {input:?}: {}", !readable));
        }
        if admits(write, input) != writable {
            return Err(format!(
                "WRITE_ADDRESS_PATTERN admits {input:?}: {}",
                !writable
            ));
        }
        Ok(())
    }

    #[test]
    fn the_documented_patterns_agree_with_the_parser_on_chosen_cases() {
        let long_path = format!("ucxl://a:b@c:d/{}", "x".repeat(MAX_ADDRESS_BYTES - 15));
        let too_long = format!("{long_path}y");
        let cases = [
            "ucxl://any:any@BZZZ:RUSTLE-testing/shared/ctx",
            "ucxl://claude:any@p:t/x",
            "ucxl://any:r@p:any",
            "ucxl://ANY:Any@p:t/x",
            "ucxl://anyone:r@p:t/x",
            "ucxl://*:r@p:t/x",
            "ucxl://a:*@p:t/x",
            "ucxl://a:r@*:t",
            "ucxl://a:r@p:*",
            "UCXL://a:r@p:t/x",
            "ucxl://a:r@p:t",
            "ucxl://a:r@p:t/",
            "ucxl://a:r@p:t//x///y/",
            "ucxl://a:r@p:t/*^",
            "ucxl://a:r@p:t/*^/x",
            "ucxl://a:r@p:t/*~/x",
            "ucxl://a:r@p:t/*~0/x",
            "ucxl://a:r@p:t/*~4294967295/x",
            "ucxl://a:r@p:t/*~4294967296/x",
            "ucxl://a:r@p:t/*~0004294967295",
            "ucxl://a:r@p:t/~~0",
            "ucxl://a:r@p:t/^^12/x",
            "ucxl://a:r@p:t/~~/x",
            "ucxl://a:r@p:t/*/x",
            "ucxl://a:r@p:t/x/*^",
            "ucxl://a:r@p:t/./x",
            "ucxl://a:r@p:t/../x",
            "ucxl://a:r@p:t/.../.x/..x/x..",
            "ucxl://a:r@p:t/x?q=1",
            "ucxl://a:r@p:t/x#f",
            "ucxl://a:r@p:t/x%20y",
            "ucxl://a b:r@p:t",
            "ucxl://a:r@p:t:u",
            "ucxl://a@p:t",
            "ucxl://a:r@p",
            "ucxl://:r@p:t",
            "http://a:r@p:t",
            "",
            &format!("ucxl://{}:r@p:t", "a".repeat(64)),
            &format!("ucxl://{}:r@p:t", "a".repeat(65)),
            &long_path,
            &too_long,
        ];
        for case in cases {
            assert_eq!(agree(case), Ok(()));
        }
    }

    /// Near-valid address text: well-formed pieces and the usual mistakes, mixed.
    fn near_address() -> impl Strategy<Value = String> {
        let scheme = prop_oneof![
            4 => Just("ucxl://".to_owned()),
            1 => Just("UcXl://".to_owned()),
            1 => Just("ucxl:/".to_owned()),
            1 => Just("http://".to_owned()),
        ];
        let component = prop_oneof![
            4 => "[A-Za-z0-9_-]{1,8}",
            2 => Just("any".to_owned()),
            1 => Just("ANY".to_owned()),
            1 => Just("*".to_owned()),
            1 => Just(String::new()),
            1 => Just("a".repeat(64)),
            1 => Just("a".repeat(65)),
            1 => "[a-z.:@ %*~^?#/]{1,3}",
        ];
        let temporal = prop_oneof![
            4 => Just(String::new()),
            1 => Just("/*^".to_owned()),
            1 => Just("/*~".to_owned()),
            1 => r"/(\*~|~~|\^\^)[0-9]{1,11}",
            1 => "/[*~^]{1,3}[0-9a-z]{0,2}",
        ];
        let segment = prop_oneof![
            4 => "[A-Za-z0-9_.-]{1,6}",
            1 => Just(".".to_owned()),
            1 => Just("..".to_owned()),
            1 => Just(String::new()),
            1 => "[A-Za-z0-9_.*?#% ~^-]{1,4}",
            1 => "[a-z]{200,400}",
        ];
        (
            scheme,
            [
                component.clone(),
                component.clone(),
                component.clone(),
                component,
            ],
            prop_oneof![
                6 => Just((':', '@', ':')),
                1 => Just(('@', ':', ':')),
                1 => Just((':', ':', '@')),
            ],
            temporal,
            proptest::collection::vec(segment, 0..6),
        )
            .prop_map(|(scheme, [a, r, p, t], (s1, s2, s3), temporal, path)| {
                let mut text = format!("{scheme}{a}{s1}{r}{s2}{p}{s3}{t}{temporal}");
                for segment in path {
                    text.push('/');
                    text.push_str(&segment);
                }
                text
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        #[test]
        fn the_documented_patterns_admit_exactly_what_the_parser_accepts(text in near_address()) {
            prop_assert_eq!(agree(&text), Ok(()));
        }
    }
}
