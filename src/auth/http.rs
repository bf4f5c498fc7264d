//! Authentication and authorization in front of the routes: the [`authenticate`] layer
//! (who is calling, and their rate) and the extractors each route states its operation
//! with ([`Permitted`], [`Admin`]). Both run before any body is read.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ucxl::Address;

use super::{Kind, Op, Principal, Unauthenticated};
use crate::audit::Slot;
use crate::error::ApiError;
use crate::extract::{AddressQuery, ApiQuery};
use crate::state::AppState;

/// The authenticated caller of this request.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Principal>);

/// The layer: authenticates the request (401), takes it from the caller's rate (429) and
/// hands the principal to the routes.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = state.auth.authenticate(
        request.headers().get(AUTHORIZATION),
        state.config.load().auth,
    );
    let principal = match principal {
        Ok(p) => p,
        Err(why) => {
            let mut response = ApiError::Unauthenticated(why).into_response();
            if request.uri().path() == "/mcp" {
                super::metadata::point_to_metadata(&state, request.headers(), &mut response);
            }
            return response;
        }
    };
    if let Some(slot) = request.extensions().get::<Slot>() {
        slot.principal(&principal);
    }
    let peer = request
        .extensions()
        .get::<ucxl_service::serve::PeerAddr>()
        .map(|p| p.0.ip());
    // For the access log.
    let who = ucxl_service::observe::Principal(Arc::clone(&principal) as _);
    if let Err(retry_after) = state.auth.admit(&principal, peer) {
        metrics::counter!("rustle_rate_limited_total").increment(1);
        let mut response = ApiError::TooManyRequests { retry_after }.into_response();
        response.extensions_mut().insert(who);
        return response;
    }
    request.extensions_mut().insert(Caller(principal));
    let mut response = next.run(request).await;
    response.extensions_mut().insert(who);
    response
}

fn caller(parts: &Parts) -> Result<Arc<Principal>, ApiError> {
    parts
        .extensions
        .get::<Caller>()
        .map(|c| Arc::clone(&c.0))
        // Routes that read the caller sit behind `authenticate`: a missing caller is a
        // wiring bug, and refusing is the safe answer to it.
        .ok_or_else(|| ApiError::internal(std::io::Error::other("no authenticated caller")))
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        caller(parts).map(Self)
    }
}

/// An operation a route performs on its address.
pub trait Operation {
    /// The operation.
    const OP: Op;
}

/// Fetching and listing versions.
#[derive(Debug)]
pub struct ToRead;
impl Operation for ToRead {
    const OP: Op = Op::Read;
}

/// Storing a version.
#[derive(Debug)]
pub struct ToWrite;
impl Operation for ToWrite {
    const OP: Op = Op::Write;
}

/// Deleting an address.
#[derive(Debug)]
pub struct ToDelete;
impl Operation for ToDelete {
    const OP: Op = Op::Delete;
}

/// The `?address=` parameter, valid, and the caller's permission to do `O` there
/// (403 naming the operation and the address as sent, and nothing else); writes and
/// deletes also need an audit log that takes records (503). A literal `any` component is
/// an exact key here, as in BZZZ: only search patterns have wildcards.
#[derive(Debug)]
pub struct Permitted<O> {
    /// The address.
    pub address: Address,
    _op: PhantomData<O>,
}

impl<O: Operation> FromRequestParts<AppState> for Permitted<O> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let raw = match ucxl_service::body::sole_param(&parts.uri, "address") {
            Some(raw) => raw.into_owned(),
            // Anything but the one parameter: the generic parser answers or refuses it.
            None => {
                ApiQuery::<AddressQuery>::from_request_parts(parts, state)
                    .await?
                    .0
                    .address
            }
        };
        let caller = caller(parts)?;
        let address = permit(state, &caller, parts.extensions.get::<Slot>(), O::OP, &raw)?;
        Ok(Self {
            address,
            _op: PhantomData,
        })
    }
}

/// `raw` parsed, and `caller`'s permission to do `op` there: what [`Permitted`] checks,
/// for callers that are not a REST route (the MCP tools). The operation and address go to
/// the audit `slot`; writes and deletes also need an audit log that takes records.
///
/// # Errors
/// An invalid address (400 naming the component), a forbidden one (403 naming the
/// operation), or an audit log that cannot record a write (503).
pub fn permit(
    state: &AppState,
    caller: &Principal,
    slot: Option<&Slot>,
    op: Op,
    raw: &str,
) -> Result<Address, ApiError> {
    let address = Address::parse(raw)?;
    if let Some(slot) = slot {
        slot.operation(op, raw);
    }
    if !caller.allows(op, &address) {
        return Err(ApiError::Forbidden {
            operation: op,
            target: raw.to_owned(),
        });
    }
    crate::audit::writable(state, op)?;
    Ok(address)
}

/// Proof that the caller may use the admin API: the admin token, or a principal granted
/// `admin`.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = caller(parts)?;
        let path = parts.uri.path().to_owned();
        if let Some(slot) = parts.extensions.get::<Slot>() {
            slot.operation(Op::Admin, &path);
        }
        if principal.may(Op::Admin) {
            return Ok(Self);
        }
        if principal.kind() != Kind::Anonymous {
            return Err(ApiError::Forbidden {
                operation: Op::Admin,
                target: path,
            });
        }
        // Anonymous: authentication is off and no admin token came.
        if state.config.load().admin_token.is_none() && !state.auth.policy_has_admins() {
            return Err(ApiError::AdminDisabled);
        }
        tracing::warn!("admin request with a missing or wrong bearer token");
        Err(ApiError::Unauthenticated(
            if parts.headers.contains_key(AUTHORIZATION) {
                Unauthenticated::Invalid
            } else {
                Unauthenticated::Missing
            },
        ))
    }
}
