//! `GET /v1/watch`.
