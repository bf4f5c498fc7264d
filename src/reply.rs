//! The `X-Rustle-*` headers that say how a request was served, on top of the UCXL success
//! reply of `ucxl-service` and on the error answers of backend calls.

use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use ucxl_service::Reply;

use crate::backend::{CacheRead, NotServed, Via};
use crate::error::ApiError;

/// `X-Rustle-Backend`: `real`, `fallback` or `mock`.
pub static X_RUSTLE_BACKEND: HeaderName = HeaderName::from_static("x-rustle-backend");
/// `X-Rustle-Endpoint`: the node that answered.
pub static X_RUSTLE_ENDPOINT: HeaderName = HeaderName::from_static("x-rustle-endpoint");
/// `X-Rustle-Attempts`: attempts made.
pub static X_RUSTLE_ATTEMPTS: HeaderName = HeaderName::from_static("x-rustle-attempts");
/// `X-Rustle-Stale: true` when a fallback read may be out of date.
pub static X_RUSTLE_STALE: HeaderName = HeaderName::from_static("x-rustle-stale");

/// `X-Rustle-Cache: hit|miss` on reads that asked for the cache.
pub static X_RUSTLE_CACHE: HeaderName = HeaderName::from_static("x-rustle-cache");
/// `X-Rustle-Feed-Lag-Ms`: how far behind the nodes' feeds the cache could be.
pub static X_RUSTLE_FEED_LAG_MS: HeaderName = HeaderName::from_static("x-rustle-feed-lag-ms");

/// The `X-Rustle-*` headers of `via`.
fn headers(via: Via) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
    let endpoint = via.endpoint.and_then(|e| HeaderValue::from_str(&e).ok());
    let cache = via.cache.map(|c| {
        (
            X_RUSTLE_CACHE.clone(),
            HeaderValue::from_static(if c.hit { "hit" } else { "miss" }),
        )
    });
    let lag = via
        .cache
        .and_then(CacheRead::lag_ms)
        .map(|l| (X_RUSTLE_FEED_LAG_MS.clone(), HeaderValue::from(l)));
    [
        Some((
            X_RUSTLE_BACKEND.clone(),
            HeaderValue::from_static(via.backend.as_str()),
        )),
        Some((X_RUSTLE_ATTEMPTS.clone(), HeaderValue::from(via.attempts))),
        endpoint.map(|e| (X_RUSTLE_ENDPOINT.clone(), e)),
        via.stale
            .then(|| (X_RUSTLE_STALE.clone(), HeaderValue::from_static("true"))),
        cache,
        lag,
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

/// How `via` served, for the access log.
fn served(via: &Via) -> ucxl_service::observe::Served {
    ucxl_service::observe::Served {
        backend: via.backend.as_str(),
        attempts: via.attempts,
    }
}

impl<T> ServedBy for Reply<T> {
    fn via(self, via: Via) -> Self {
        let reply = self.served(served(&via));
        headers(via).fold(reply, |reply, (name, value)| reply.header(name, value))
    }
}

/// An error answer of an envelope or search call: the UCXL error, with the `X-Rustle-*`
/// headers of the backend that failed when one did (a node's refusal names the node).
#[derive(Debug)]
pub struct Failed {
    error: ApiError,
    /// Boxed: errors are the cold path, and `Result<_, Failed>` stays small.
    via: Option<Box<Via>>,
}

impl Failed {
    /// The error answer of a backend call that did not serve.
    #[must_use]
    pub fn backend(not_served: NotServed) -> Self {
        Self {
            error: not_served.error.into(),
            via: Some(Box::new(not_served.via)),
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
        self.via.as_deref()
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
        if let Some(via) = self.via.map(|v| *v) {
            response.extensions_mut().insert(served(&via));
            response.headers_mut().extend(headers(via));
        }
        response
    }
}
