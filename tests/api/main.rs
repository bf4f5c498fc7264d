//! API tests over real HTTP: every test spawns its own gateway on port 0.

mod abuse;
mod admin;
mod auth;
mod cache;
mod conformance;
mod envelopes;
mod errors;
mod faults;
mod helpers;
mod http_features;
mod mcp;
mod node_client;
#[path = "../../crates/bzzz-node/tests/cluster/harness.rs"]
#[allow(dead_code)] // the node tests use the rest
mod nodes;
mod observe;
mod openapi;
mod ops;
mod otlp;
mod process;
#[path = "../../crates/ucxl-service/tests/support/raw_http.rs"]
#[allow(dead_code)] // the service's own tests use the rest
mod raw_http;
mod replay;
mod resilience;
mod search;
mod sse;
mod tls;
mod watch;
mod watch_resume;
mod wire;
