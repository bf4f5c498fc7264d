//! The `X-Rustle-*` headers that say how a request was served, on top of the UCXL success
//! reply of `ucxl-service` and on the error answers of backend calls.

use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use ucxl_service::Reply;

use crate::backend::{NotServed, Via};
use crate::error::ApiError;

/// `X-Rustle-Backend`: `real`, `fallback` or `mock`.
pub static X_RUSTLE_BACKEND: HeaderName = HeaderName::from_static("x-rustle-backend");
/// `X-Rustle-Endpoint`: the node that answered.
pub static X_RUSTLE_ENDPOINT: HeaderName = HeaderName::from_static("x-rustle-endpoint");
/// `X-Rustle-Attempts`: attempts made.
pub static X_RUSTLE_ATTEMPTS: HeaderName = HeaderName::from_static("x-rustle-attempts");
/// `X-Rustle-Stale: true` when a fallback read may be out of date.
pub static X_RUSTLE_STALE: HeaderName = HeaderName::from_static("x-rustle-stale");

/// The `X-Rustle-*` headers of `via`.
fn headers(via: Via) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
    let endpoint = via.endpoint.and_then(|e| HeaderValue::from_str(&e).ok());
    [
        Some((
            X_RUSTLE_BACKEND.clone(),
            HeaderValue::from_static(via.backend.as_str()),
        )),
        Some((X_RUSTLE_ATTEMPTS.clone(), HeaderValue::from(via.attempts))),
        endpoint.map(|e| (X_RUSTLE_ENDPOINT.clone(), e)),
        via.stale
            .then(|| (X_RUSTLE_STALE.clone(), HeaderValue::from_static("true"))),
    ]
    .into_iter()
    .flatten()
}

/// Adds the `X-Rustle-*` headers of a backend answer.
pub trait ServedBy {
    /// The reply with the headers of `via`.
    #[must_use]
    fn via(self, via: Via) -> Self;
}

impl<T> ServedBy for Reply<T> {
    fn via(self, via: Via) -> Self {
        headers(via).fold(self, |reply, (name, value)| reply.header(name, value))
    }
}

/// An error answer of an envelope or search call: the UCXL error, with the `X-Rustle-*`
/// headers of the backend that failed when one did (a node's refusal names the node).
#[derive(Debug)]
pub struct Failed {
    error: ApiError,
    via: Option<Via>,
}

impl Failed {
    /// The error answer of a backend call that did not serve.
    #[must_use]
    pub fn backend(not_served: NotServed) -> Self {
        Self {
            error: not_served.error.into(),
            via: Some(not_served.via),
        }
    }
}

impl Failed {
    /// The error.
    #[must_use]
    pub fn error(&self) -> &ApiError {
        &self.error
    }

    /// How the failed request was served, when a backend was asked.
    #[must_use]
    pub fn via(&self) -> Option<&Via> {
        self.via.as_ref()
    }
}

impl From<ApiError> for Failed {
    fn from(error: ApiError) -> Self {
        Self { error, via: None }
    }
}

impl From<ucxl::AddressError> for Failed {
    fn from(error: ucxl::AddressError) -> Self {
        ApiError::from(error).into()
    }
}

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        if let Some(via) = self.via {
            response.headers_mut().extend(headers(via));
        }
        response
    }
}
