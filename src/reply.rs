//! The `X-Rustle-*` headers that say how a request was served, on top of the UCXL success
//! reply of `ucxl-service`.

use axum::http::{HeaderName, HeaderValue};
use ucxl_service::Reply;

use crate::backend::Via;

/// `X-Rustle-Backend`: `real`, `fallback` or `mock`.
pub static X_RUSTLE_BACKEND: HeaderName = HeaderName::from_static("x-rustle-backend");
/// `X-Rustle-Endpoint`: the node that answered.
pub static X_RUSTLE_ENDPOINT: HeaderName = HeaderName::from_static("x-rustle-endpoint");
/// `X-Rustle-Attempts`: attempts made.
pub static X_RUSTLE_ATTEMPTS: HeaderName = HeaderName::from_static("x-rustle-attempts");
/// `X-Rustle-Stale: true` when a fallback read may be out of date.
pub static X_RUSTLE_STALE: HeaderName = HeaderName::from_static("x-rustle-stale");

/// Adds the `X-Rustle-*` headers of a backend answer.
pub trait ServedBy {
    /// The reply with the headers of `via`.
    #[must_use]
    fn via(self, via: Via) -> Self;
}

impl<T> ServedBy for Reply<T> {
    fn via(self, via: Via) -> Self {
        let mut reply = self
            .header(
                X_RUSTLE_BACKEND.clone(),
                HeaderValue::from_static(via.backend.as_str()),
            )
            .header(X_RUSTLE_ATTEMPTS.clone(), HeaderValue::from(via.attempts));
        if let Some(endpoint) = via.endpoint.and_then(|e| HeaderValue::from_str(&e).ok()) {
            reply = reply.header(X_RUSTLE_ENDPOINT.clone(), endpoint);
        }
        if via.stale {
            reply = reply.header(X_RUSTLE_STALE.clone(), HeaderValue::from_static("true"));
        }
        reply
    }
}
