//! Extractors whose rejections are [`ApiError`]s, so bad input gets the same UCXL error
//! shape as everything else: request context, query strings, JSON bodies, admin auth.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;
use ucxl::{Address, EnvelopeId};

use crate::backend::Call;
use crate::error::ApiError;
use crate::state::AppState;
use ucxl_service::Rid;

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
        let Ok(Rid(request_id)) = Rid::from_request_parts(parts, state).await;
        let report = |r: ucxl_service::ErrorReport| ApiError::BadRequest {
            message: r.message,
            details: r.details,
        };
        let budget = ucxl_service::headers::request_budget(
            &parts.headers,
            state.config.load().request_timeout,
        )
        .map_err(report)?;
        let idempotency_key =
            ucxl_service::headers::idempotency_key(&parts.headers).map_err(report)?;
        Ok(Self {
            call: Call {
                request_id,
                deadline: Instant::now() + budget,
            },
            idempotency_key,
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

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (limit, timeout) = {
            let config = state.config.load();
            (config.max_body_bytes, config.request_timeout)
        };
        Ok(Self(ucxl_service::read_json(req, limit, timeout).await?))
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
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
