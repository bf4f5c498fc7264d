//! `/v1/envelopes`: store, fetch, delete and list the versions of envelopes by address.

use std::sync::Arc;

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use ucxl::{Code, Envelope, EnvelopeId, History, NewVersion};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::http::{Permitted, ToDelete, ToRead, ToWrite};
use crate::backend::cached::{self, Consistency};
use crate::backend::{BackendKind, CacheRead, Deleted, Via};
use crate::error::ApiError;
use crate::extract::{AddressQuery, ApiJson, Ctx, ReadHeaders, WriteAddressQuery, WriteHeaders};
use crate::openapi::schemas::{DeleteResponse, EnvelopeResponse, ErrorResponse, HistoryResponse};
use ucxl_service::Reply;

use crate::reply::{Failed, ServedBy};
use crate::state::AppState;

/// Longest accepted `content_type`.
const MAX_CONTENT_TYPE: usize = 255;

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(put_envelope, get_envelope, delete_envelope))
        .routes(routes!(history))
}

/// The body of `PUT /v1/envelopes`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "content": {"decision": "use libp2p", "alternatives": ["grpc", "nats"]},
    "content_type": "application/json",
    "metadata": {"author": "claude", "reason": "chose libp2p"}
}))]
pub struct PutEnvelope {
    /// Any JSON value (required; `null` is a value).
    #[schema(value_type = Value)]
    pub content: Value,
    /// Media type of `content` (default `application/json`): `type/subtype` with optional
    /// `; name=value` parameters (RFC 9110 §8.3.1).
    #[schema(
        default = json!(ucxl::DEFAULT_CONTENT_TYPE),
        max_length = 255,
        pattern = r#"^[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*;[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+=(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+|"(?:[\t !#-\[\]-~]|\\[\t -~])*"))*$"#,
        example = "application/json"
    )]
    pub content_type: Option<String>,
    /// Free-form metadata object (default `{}`).
    #[schema(value_type = Option<Object>, default = json!({}))]
    pub metadata: Option<Map<String, Value>>,
}

/// Headers of `GET /v1/envelopes`, for the documentation (the handler and `Ctx` read them).
#[derive(Debug)]
pub struct GetHeaders;

impl utoipa::IntoParams for GetHeaders {
    fn into_params(
        parameter_in: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        let mut params = ReadHeaders::into_params(parameter_in);
        params.push(crate::extract::header_parameter(
            "X-Rustle-Consistency",
            "`node` (the default): read a node. `cached`: answer from the gateway's cache \
             while every node's change feed has been heard from within \
             `RUSTLE_CACHE_MAX_LAG_MS` (the cache drops a copy as soon as a feed reports a \
             change at its address), else read a node; `X-Rustle-Cache: hit|miss` and \
             `X-Rustle-Feed-Lag-Ms` say which, and how far behind the nodes the cache could be.",
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::Type::String)
                .enum_values(Some(["node", "cached"]))
                .default(Some(json!("node"))),
            json!("cached"),
        ));
        params
    }
}

fn content_type(given: Option<String>) -> Result<String, ApiError> {
    let Some(given) = given else {
        return Ok(ucxl::DEFAULT_CONTENT_TYPE.to_owned());
    };
    if given.len() <= MAX_CONTENT_TYPE && is_media_type(&given) {
        Ok(given)
    } else {
        Err(ApiError::InvalidPayload {
            message: format!(
                "content_type {:?} is not a media type",
                ucxl::error::excerpt(&given)
            ),
            details: json!({"path": "content_type", "expected": "type/subtype, at most 255 characters"}),
        })
    }
}

/// A `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `token`: one or more `tchar`s; returns what follows.
fn token(s: &[u8]) -> Option<&[u8]> {
    let n = s.iter().take_while(|b| is_tchar(**b)).count();
    (n > 0).then(|| &s[n..])
}

/// `quoted-string` (without obsolete text); returns what follows.
fn quoted(s: &[u8]) -> Option<&[u8]> {
    let mut rest = s.strip_prefix(b"\"")?;
    loop {
        match rest {
            [b'"', after @ ..] => return Some(after),
            [b'\\', c, after @ ..] if *c == b'\t' || (b' '..=b'~').contains(c) => rest = after,
            [c, after @ ..]
                if *c == b'\t'
                    || *c == b' '
                    || *c == 0x21
                    || (0x23..=0x7e).contains(c) && *c != b'\\' =>
            {
                rest = after;
            }
            _ => return None,
        }
    }
}

/// A media type as RFC 9110 §8.3.1 writes it: `type/subtype *( OWS ";" OWS name=value )`,
/// the value a token or a quoted string. The `OpenAPI` document states the same grammar as a
/// regex, so what the schema admits is exactly what is accepted.
fn is_media_type(text: &str) -> bool {
    let ows = |s: &[u8]| -> usize { s.iter().take_while(|b| **b == b' ' || **b == b'\t').count() };
    let Some(rest) = token(text.as_bytes()) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(b"/") else {
        return false;
    };
    let Some(mut rest) = token(rest) else {
        return false;
    };
    while !rest.is_empty() {
        let Some(after) = rest[ows(rest)..].strip_prefix(b";") else {
            return false;
        };
        let after = &after[ows(after)..];
        let Some(after) = token(after).and_then(|r| r.strip_prefix(b"=")) else {
            return false;
        };
        let Some(after) = token(after).or_else(|| quoted(after)) else {
            return false;
        };
        rest = after;
    }
    true
}

/// Store a new version at an address.
///
/// The version number is the envelope's position in the address's history. Sending the
/// same `Idempotency-Key` again returns the stored envelope with 200 and changes nothing.
#[utoipa::path(
    put,
    path = "/v1/envelopes",
    tag = "envelopes",
    params(WriteAddressQuery, WriteHeaders),
    request_body(content = PutEnvelope, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored as a new version (`UCXL-201-CREATED`)", body = EnvelopeResponse),
        (status = 200, description = "An envelope with this id (`Idempotency-Key`) already existed at the address: nothing changed; the data is the envelope stored first (`UCXL-200-OK`)", body = EnvelopeResponse),
        (status = 202, description = "The cluster is unreachable: the write is journaled durably and will be replayed (`UCXL-202-ACCEPTED`, hybrid mode)", body = EnvelopeResponse),
        (status = 400, description = "Invalid address (`INVALID_ADDRESS`), temporal segment other than the latest (`TEMPORAL_INVALID`), body (`INVALID_PAYLOAD`, with line, column and field path; also a `content_type` that is not a media type), header or query (`BAD_REQUEST`); or a node's refusal of the version, passed on", body = ErrorResponse),
        (status = 409, description = "The `Idempotency-Key` names a delete, or a version freed by one, at this address (`UCXL-409-CONFLICT`, `details.header`)", body = ErrorResponse),
        (status = 413, description = "The body is larger than `RUSTLE_MAX_BODY_BYTES`, or than a node takes (`UCXL-413-PAYLOAD_TOO_LARGE`, `details.limit_bytes`)", body = ErrorResponse),
        (status = 502, description = "A BZZZ node answered with something that is not a valid UCXI answer (`UCXL-502-BAD_GATEWAY`, `details.endpoints`)", body = ErrorResponse),
        (status = 503, description = "Load shedding; no BZZZ node could take the write and the journal cannot either; the local store cannot take it now; or the audit log cannot take records (`UCXL-503-SERVICE_UNAVAILABLE`; `Retry-After` says when to retry)", body = ErrorResponse),
        (status = 507, description = "The local store is full of versions it must keep (`details.max_entries`), or its disk refused the write (`details.storage`) (`UCXL-507-INSUFFICIENT_STORAGE`)", body = ErrorResponse),
    )
)]
async fn put_envelope(
    State(state): State<AppState>,
    ctx: Ctx,
    Permitted { address, .. }: Permitted<ToWrite>,
    ApiJson(body): ApiJson<PutEnvelope>,
) -> Result<Reply<Envelope>, Failed> {
    store(&state, &ctx, &address, body).await
}

/// Stores `body` at `address` for the caller of `ctx` (who may write there): what
/// `PUT /v1/envelopes` and the `ucxl_store` tool do.
///
/// # Errors
/// A temporal segment other than the latest, an invalid `content_type`, or the backend's
/// failure.
pub async fn store(
    state: &AppState,
    ctx: &Ctx,
    address: &ucxl::Address,
    body: PutEnvelope,
) -> Result<Reply<Envelope>, Failed> {
    address.require_latest()?;
    let new = NewVersion {
        id: ctx
            .idempotency_key
            .clone()
            .unwrap_or_else(EnvelopeId::generate),
        content: body.content.into(),
        content_type: content_type(body.content_type)?,
        metadata: body.metadata.unwrap_or_default(),
        created_at: None,
        hash: None,
        size: None,
        written_by: ctx.caller.written_by(),
    };
    ctx.audit.envelope(&new.id);
    let backend = Arc::clone(&state.active.load().backend);
    let served = ctx.served(backend.put(&ctx.call, address, new).await)?;
    let written = served.value;
    if served.via.backend != BackendKind::Real && (written.created || served.via.journaled) {
        // Served by the gateway itself: its watchers hear of it from the gateway's feed.
        state
            .watch
            .local_change(ucxl::Change::written(&written.envelope));
    }
    let (code, message) = match (written.created, served.via.journaled) {
        (true, true) => (
            Code::Accepted,
            "accepted into the durable journal; it reaches the cluster when a node is back",
        ),
        (true, false) => (Code::Created, "stored a new version"),
        (false, _) => (
            Code::Ok,
            "an envelope with this id already exists; nothing changed",
        ),
    };
    Ok(Reply::new(code, message, written.envelope, ctx.request_id()).via(served.via))
}

/// Fetch the version an address selects.
///
/// The temporal segment picks the version: `*^` (latest, the default), `*~` (first),
/// `*~N` (version N), `~~N` (N back from the latest), `^^N` (N forward from the first).
#[utoipa::path(
    get,
    path = "/v1/envelopes",
    tag = "envelopes",
    params(AddressQuery, GetHeaders),
    responses(
        (status = 200, description = "The selected version (`UCXL-200-OK`); with `X-Rustle-Consistency: cached`, `X-Rustle-Cache: hit|miss` says where from", body = EnvelopeResponse),
        (status = 400, description = "Invalid address (`INVALID_ADDRESS`) or temporal segment (`TEMPORAL_INVALID`), naming the component (`details.field`); a malformed header (`BAD_REQUEST`)", body = ErrorResponse),
        (status = 404, description = "Nothing stored, deleted, or no such version (`UCXL-404-NOT_FOUND`)", body = ErrorResponse),
        (status = 502, description = "A BZZZ node answered with something that is not a valid UCXI answer (`UCXL-502-BAD_GATEWAY`, `details.endpoints`)", body = ErrorResponse),
    )
)]
async fn get_envelope(
    State(state): State<AppState>,
    ctx: Ctx,
    // after the caller's permission and the address, as the header was checked before
    Permitted { address, .. }: Permitted<ToRead>,
    Asked(consistency): Asked,
) -> Result<Reply<Envelope>, Failed> {
    if consistency == Consistency::Cached {
        return fetch_cached(&state, &ctx, &address).await;
    }
    fetch(&state, &ctx, &address).await
}

/// The consistency a read asks for (`X-Rustle-Consistency`), read where it stands: the
/// header map is not copied for one header.
struct Asked(Consistency);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Asked {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("x-rustle-consistency") else {
            return Ok(Self(Consistency::Node));
        };
        value
            .to_str()
            .ok()
            .and_then(Consistency::parse)
            .map(Self)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "X-Rustle-Consistency must be node or cached",
                    json!({"field": "X-Rustle-Consistency", "expected": ["node", "cached"]}),
                )
            })
    }
}

/// A read that asked for the cache: from it while it is current, else from a node (the
/// answer says which, and how far behind the nodes the cache could be).
async fn fetch_cached(
    state: &AppState,
    ctx: &Ctx,
    address: &ucxl::Address,
) -> Result<Reply<Envelope>, Failed> {
    let lag = cached::lag(state);
    let max_lag = state.config.load().cache_max_lag;
    let outcome = if let Some(outcome) = cached::read(state, address, lag, max_lag) {
        outcome
    } else {
        {
            let backend = Arc::clone(&state.active.load().backend);
            let miss = Some(CacheRead::new(false, lag));
            match backend.get(&ctx.call, address).await {
                Ok(served) => Ok(crate::backend::Served {
                    via: Via {
                        cache: miss,
                        ..served.via
                    },
                    ..served
                }),
                Err(not_served) => Err(crate::backend::NotServed {
                    via: Via {
                        cache: miss,
                        ..not_served.via
                    },
                    ..not_served
                }),
            }
        }
    };
    let served = ctx.served(outcome)?;
    Ok(Reply::new(Code::Ok, "found", served.value, ctx.request_id()).via(served.via))
}

/// The version `address` selects, for the caller of `ctx` (who may read there): what
/// `GET /v1/envelopes` and the `ucxl_fetch` tool do.
///
/// # Errors
/// The backend's failure (404 when nothing is stored).
pub async fn fetch(
    state: &AppState,
    ctx: &Ctx,
    address: &ucxl::Address,
) -> Result<Reply<Envelope>, Failed> {
    let backend = Arc::clone(&state.active.load().backend);
    let served = ctx.served(backend.get(&ctx.call, address).await)?;
    Ok(Reply::new(Code::Ok, "found", served.value, ctx.request_id()).via(served.via))
}

/// Delete an address (write a tombstone).
///
/// Reads after a delete answer 404; a later put starts a new history at version 1.
/// Sending the same `Idempotency-Key` again is a no-op.
#[utoipa::path(
    delete,
    path = "/v1/envelopes",
    tag = "envelopes",
    params(WriteAddressQuery, WriteHeaders),
    responses(
        (status = 200, description = "Deleted (`UCXL-200-OK`); a retry with the same `Idempotency-Key` answers the same", body = DeleteResponse),
        (status = 202, description = "The cluster is unreachable: the delete is journaled durably and will be replayed (`UCXL-202-ACCEPTED`, hybrid mode)", body = DeleteResponse),
        (status = 400, description = "Invalid address (`INVALID_ADDRESS`), temporal segment other than the latest (`TEMPORAL_INVALID`), or header (`BAD_REQUEST`)", body = ErrorResponse),
        (status = 404, description = "Nothing to delete (`UCXL-404-NOT_FOUND`)", body = ErrorResponse),
        (status = 409, description = "The `Idempotency-Key` names a version at this address (`UCXL-409-CONFLICT`, `details.header`)", body = ErrorResponse),
        (status = 502, description = "A BZZZ node answered with something that is not a valid UCXI answer (`UCXL-502-BAD_GATEWAY`, `details.endpoints`)", body = ErrorResponse),
        (status = 503, description = "Load shedding; no BZZZ node could take the delete and the journal cannot either; the local store cannot take it now; or the audit log cannot take records (`UCXL-503-SERVICE_UNAVAILABLE`; `Retry-After` says when to retry)", body = ErrorResponse),
        (status = 507, description = "The local store is full of versions it must keep, or its disk refused the tombstone (`UCXL-507-INSUFFICIENT_STORAGE`)", body = ErrorResponse),
    )
)]
async fn delete_envelope(
    State(state): State<AppState>,
    ctx: Ctx,
    Permitted { address, .. }: Permitted<ToDelete>,
) -> Result<Reply<Deleted>, Failed> {
    remove(&state, &ctx, &address).await
}

/// Deletes `address` for the caller of `ctx` (who may delete there): what
/// `DELETE /v1/envelopes` and the `ucxl_delete` tool do.
///
/// # Errors
/// A temporal segment other than the latest, or the backend's failure.
pub async fn remove(
    state: &AppState,
    ctx: &Ctx,
    address: &ucxl::Address,
) -> Result<Reply<Deleted>, Failed> {
    address.require_latest()?;
    let id = ctx
        .idempotency_key
        .clone()
        .unwrap_or_else(EnvelopeId::generate);
    ctx.audit.envelope(&id);
    let backend = Arc::clone(&state.active.load().backend);
    let served = ctx.served(backend.delete(&ctx.call, address, id).await)?;
    if served.via.backend != BackendKind::Real {
        // A delete repeated with the same id is the same change: delivered once.
        state.watch.local_change(ucxl::Change::Delete {
            address: served.value.address.clone(),
            id: served.value.id.clone(),
            deleted_at: served.value.deleted_at,
        });
    }
    let (code, message) = if served.via.journaled {
        (Code::Accepted, "delete accepted into the durable journal")
    } else {
        (Code::Ok, "deleted")
    };
    Ok(Reply::new(code, message, served.value, ctx.request_id()).via(served.via))
}

/// List the versions of an address (without content), oldest first.
#[utoipa::path(
    get,
    path = "/v1/envelopes/history",
    tag = "envelopes",
    params(AddressQuery, ReadHeaders),
    responses(
        (status = 200, description = "The current history (`UCXL-200-OK`)", body = HistoryResponse),
        (status = 400, description = "Invalid address (`INVALID_ADDRESS`, naming the component in `details.field`) or header (`BAD_REQUEST`)", body = ErrorResponse),
        (status = 404, description = "Nothing stored, or deleted (`UCXL-404-NOT_FOUND`)", body = ErrorResponse),
        (status = 502, description = "A BZZZ node answered with something that is not a valid UCXI answer (`UCXL-502-BAD_GATEWAY`, `details.endpoints`)", body = ErrorResponse),
    )
)]
async fn history(
    State(state): State<AppState>,
    ctx: Ctx,
    Permitted { address, .. }: Permitted<ToRead>,
) -> Result<Reply<History>, Failed> {
    versions(&state, &ctx, &address).await
}

/// The versions of `address`, for the caller of `ctx` (who may read there): what
/// `GET /v1/envelopes/history` and the `ucxl_history` tool do.
///
/// # Errors
/// The backend's failure (404 when nothing is stored).
pub async fn versions(
    state: &AppState,
    ctx: &Ctx,
    address: &ucxl::Address,
) -> Result<Reply<History>, Failed> {
    let backend = Arc::clone(&state.active.load().backend);
    let served = ctx.served(backend.history(&ctx.call, address).await)?;
    let message = format!("{} versions", served.value.versions.len());
    Ok(Reply::new(Code::Ok, message, served.value, ctx.request_id()).via(served.via))
}

#[cfg(test)]
mod tests {
    use super::is_media_type;

    #[test]
    fn media_types_follow_rfc_9110() {
        for good in [
            "application/json",
            "text/plain; charset=utf-8",
            "text/plain;charset=\"utf-8\"",
            "application/vnd.x+json",
            "a/b ; q=\"x\\\"y\" ;\tz=1",
        ] {
            assert!(is_media_type(good), "{good}");
        }
        for bad in [
            "",
            "not a type",
            "text",
            "text/",
            "/plain",
            "text/plain;",
            "text/plain; charset",
            "text/plain; charset=",
            "text/plain; charset=\"open",
            "text/plain ",
            "tëxt/plain",
            "text/plain; a=b c",
        ] {
            assert!(!is_media_type(bad), "{bad:?}");
        }
    }
}
