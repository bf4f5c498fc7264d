//! Success answers: the UCXL success envelope plus the `X-Rustle-*` headers that say how
//! the request was served.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use ucxl::{Code, Success};

use crate::backend::Via;
use crate::error::ApiError;

/// `X-Rustle-Backend`: `real`, `fallback` or `mock`.
pub static X_RUSTLE_BACKEND: HeaderName = HeaderName::from_static("x-rustle-backend");
/// `X-Rustle-Endpoint`: the node that answered.
pub static X_RUSTLE_ENDPOINT: HeaderName = HeaderName::from_static("x-rustle-endpoint");
/// `X-Rustle-Attempts`: attempts made.
pub static X_RUSTLE_ATTEMPTS: HeaderName = HeaderName::from_static("x-rustle-attempts");
/// `X-Rustle-Stale: true` when a fallback read may be out of date.
pub static X_RUSTLE_STALE: HeaderName = HeaderName::from_static("x-rustle-stale");

/// A success answer.
#[derive(Debug)]
pub struct Reply<T> {
    code: Code,
    message: String,
    data: T,
    request_id: String,
    via: Option<Via>,
}

impl<T> Reply<T> {
    /// A success answer with `code`.
    pub fn new(code: Code, message: impl Into<String>, data: T, request_id: &str) -> Self {
        Self {
            code,
            message: message.into(),
            data,
            request_id: request_id.to_owned(),
            via: None,
        }
    }

    /// Adds the `X-Rustle-*` headers of a backend answer.
    #[must_use]
    pub fn via(mut self, via: Via) -> Self {
        self.via = Some(via);
        self
    }
}

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::OK);
        let body = Success::new(self.code, self.message, self.data, self.request_id);
        let bytes = match serde_json::to_vec(&body) {
            Ok(bytes) => bytes,
            Err(e) => return ApiError::internal(e).into_response(),
        };
        let mut response = (status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(via) = self.via {
            headers.insert(
                X_RUSTLE_BACKEND.clone(),
                HeaderValue::from_static(via.backend.as_str()),
            );
            headers.insert(X_RUSTLE_ATTEMPTS.clone(), HeaderValue::from(via.attempts));
            if let Some(endpoint) = via.endpoint.and_then(|e| HeaderValue::from_str(&e).ok()) {
                headers.insert(X_RUSTLE_ENDPOINT.clone(), endpoint);
            }
            if via.stale {
                headers.insert(X_RUSTLE_STALE.clone(), HeaderValue::from_static("true"));
            }
        }
        response
    }
}
