//! Success answers in the UCXL format, with optional extra headers.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use ucxl::{Code, Success};

use crate::errors::ErrorReport;
use crate::observe::Served;

/// A success answer: `{"response": {code, message, data, request_id, timestamp}}`.
#[derive(Debug)]
pub struct Reply<T> {
    code: Code,
    message: String,
    data: T,
    request_id: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    served: Option<Served>,
}

impl<T> Reply<T> {
    /// A success answer with `code`.
    pub fn new(code: Code, message: impl Into<String>, data: T, request_id: &str) -> Self {
        Self {
            code,
            message: message.into(),
            data,
            request_id: request_id.to_owned(),
            headers: Vec::new(),
            served: None,
        }
    }

    /// The UCXL code.
    #[must_use]
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The data, for answers that are not HTTP (the gateway's MCP tools).
    #[must_use]
    pub fn into_data(self) -> T {
        self.data
    }

    /// Says how the answer was served (for the access log).
    #[must_use]
    pub fn served(mut self, served: Served) -> Self {
        self.served = Some(served);
        self
    }

    /// Adds a response header.
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::OK);
        let body = Success::new(self.code, self.message, self.data, self.request_id);
        // Most answers fit: one allocation instead of a doubling series of copies.
        let mut bytes = Vec::with_capacity(1024);
        if let Err(e) = serde_json::to_writer(&mut bytes, &body) {
            return ErrorReport::internal(&e).into_response();
        }
        let mut response = (status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        if let Some(served) = self.served {
            response.extensions_mut().insert(served);
        }
        response
    }
}
