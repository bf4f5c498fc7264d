//! `/v1/envelopes`: store, fetch, delete and list the versions of envelopes by address.

use std::sync::Arc;

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use ucxl::{Code, Envelope, EnvelopeId, History, NewVersion};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::backend::{BackendKind, Deleted};
use crate::error::ApiError;
use crate::extract::{AddressParam, AddressQuery, ApiJson, Ctx};
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
    /// Media type of `content` (default `application/json`).
    #[schema(max_length = 255, example = "application/json")]
    pub content_type: Option<String>,
    /// Free-form metadata object.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// Headers of the write routes.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documentation only: `Ctx` reads these headers
pub struct WriteHeaders {
    /// The envelope id: retries with the same key are no-ops that return the first result
    /// (1..=128 printable ASCII characters). A `UUIDv7` is chosen when absent.
    #[param(rename = "Idempotency-Key", example = "7f1c2a52-client-retry-key")]
    idempotency_key: Option<String>,
    /// Lowers the request deadline (milliseconds).
    #[param(rename = "X-Request-Timeout-Ms", minimum = 1, example = 2000)]
    request_timeout_ms: Option<u64>,
}

/// Headers of the read routes.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documentation only: `Ctx` reads these headers
pub struct ReadHeaders {
    /// Lowers the request deadline (milliseconds).
    #[param(rename = "X-Request-Timeout-Ms", minimum = 1, example = 2000)]
    request_timeout_ms: Option<u64>,
}

fn content_type(given: Option<String>) -> Result<String, ApiError> {
    let Some(given) = given else {
        return Ok(ucxl::DEFAULT_CONTENT_TYPE.to_owned());
    };
    if given.len() <= MAX_CONTENT_TYPE && given.parse::<mime::Mime>().is_ok() {
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

/// Store a new version at an address.
///
/// The version number is the envelope's position in the address's history. Sending the
/// same `Idempotency-Key` again returns the stored envelope with 200 and changes nothing.
#[utoipa::path(
    put,
    path = "/v1/envelopes",
    tag = "envelopes",
    params(AddressQuery, WriteHeaders),
    request_body(content = PutEnvelope, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored as a new version (`UCXL-201-CREATED`)", body = inline(ucxl::Success<Envelope>)),
        (status = 200, description = "An envelope with this id already existed at the address: nothing changed (`UCXL-200-OK`)", body = inline(ucxl::Success<Envelope>)),
        (status = 202, description = "The cluster is unreachable: the write is journaled durably and will be replayed (`UCXL-202-ACCEPTED`, hybrid mode)", body = inline(ucxl::Success<Envelope>)),
        (status = 400, description = "Invalid address (`INVALID_ADDRESS`), temporal segment (`TEMPORAL_INVALID`), body (`INVALID_PAYLOAD`, with line, column and field path), header or query (`BAD_REQUEST`); or a hash mismatch", body = ucxl::Failure),
        (status = 409, description = "The Idempotency-Key names a delete at this address", body = ucxl::Failure),
        (status = 413, description = "Body larger than RUSTLE_MAX_BODY_BYTES", body = ucxl::Failure),
        (status = 415, description = "Content-Type is not application/json", body = ucxl::Failure),
        (status = 507, description = "The local store is full of data it must keep", body = ucxl::Failure),
    )
)]
async fn put_envelope(
    State(state): State<AppState>,
    ctx: Ctx,
    AddressParam(address): AddressParam,
    ApiJson(body): ApiJson<PutEnvelope>,
) -> Result<Reply<Envelope>, Failed> {
    address.require_latest()?;
    let new = NewVersion {
        id: ctx
            .idempotency_key
            .clone()
            .unwrap_or_else(EnvelopeId::generate),
        content: Arc::new(body.content),
        content_type: content_type(body.content_type)?,
        metadata: body.metadata.unwrap_or_default(),
        created_at: None,
        hash: None,
        size: None,
    };
    let backend = Arc::clone(&state.active.load().backend);
    let served = backend
        .put(&ctx.call, &address, new)
        .await
        .map_err(|e| Failed::backend(e, backend.as_ref()))?;
    let written = served.value;
    let (code, message) = match (written.created, served.via.backend) {
        (true, BackendKind::Fallback) => (
            Code::Accepted,
            "accepted into the durable journal; it reaches the cluster when a node is back",
        ),
        (true, _) => (Code::Created, "stored a new version"),
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
    params(AddressQuery, ReadHeaders),
    responses(
        (status = 200, description = "The selected version (`UCXL-200-OK`)", body = inline(ucxl::Success<Envelope>)),
        (status = 400, description = "Invalid address or temporal segment", body = ucxl::Failure),
        (status = 404, description = "Nothing stored, deleted, or no such version", body = ucxl::Failure),
    )
)]
async fn get_envelope(
    State(state): State<AppState>,
    ctx: Ctx,
    AddressParam(address): AddressParam,
) -> Result<Reply<Envelope>, Failed> {
    let backend = Arc::clone(&state.active.load().backend);
    let served = backend
        .get(&ctx.call, &address)
        .await
        .map_err(|e| Failed::backend(e, backend.as_ref()))?;
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
    params(AddressQuery, WriteHeaders),
    responses(
        (status = 200, description = "Deleted (`UCXL-200-OK`)", body = inline(ucxl::Success<Deleted>)),
        (status = 202, description = "The cluster is unreachable: the delete is journaled durably (hybrid mode)", body = inline(ucxl::Success<Deleted>)),
        (status = 400, description = "Invalid address, temporal segment or header", body = ucxl::Failure),
        (status = 404, description = "Nothing to delete", body = ucxl::Failure),
        (status = 409, description = "The Idempotency-Key names a version at this address", body = ucxl::Failure),
    )
)]
async fn delete_envelope(
    State(state): State<AppState>,
    ctx: Ctx,
    AddressParam(address): AddressParam,
) -> Result<Reply<Deleted>, Failed> {
    address.require_latest()?;
    let id = ctx
        .idempotency_key
        .clone()
        .unwrap_or_else(EnvelopeId::generate);
    let backend = Arc::clone(&state.active.load().backend);
    let served = backend
        .delete(&ctx.call, &address, id)
        .await
        .map_err(|e| Failed::backend(e, backend.as_ref()))?;
    let (code, message) = if served.via.backend == BackendKind::Fallback {
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
        (status = 200, description = "The current history (`UCXL-200-OK`)", body = inline(ucxl::Success<History>)),
        (status = 400, description = "Invalid address", body = ucxl::Failure),
        (status = 404, description = "Nothing stored, or deleted", body = ucxl::Failure),
    )
)]
async fn history(
    State(state): State<AppState>,
    ctx: Ctx,
    AddressParam(address): AddressParam,
) -> Result<Reply<History>, Failed> {
    let backend = Arc::clone(&state.active.load().backend);
    let served = backend
        .history(&ctx.call, &address)
        .await
        .map_err(|e| Failed::backend(e, backend.as_ref()))?;
    let message = format!("{} versions", served.value.versions.len());
    Ok(Reply::new(Code::Ok, message, served.value, ctx.request_id()).via(served.via))
}
