//! RUSTLE Gateway: one reliable, observable REST service for storing, fetching and
//! searching versioned UCXL envelopes, in front of a cluster of BZZZ nodes.
//!
//! `main.rs` only parses the command line; everything else lives here so that tests can
//! build the whole application on port 0 ([`startup::Application`]) or call the router in
//! memory ([`startup::router`]; [`edge::Edge`] adds CORS and compression around it).

pub mod audit;
pub mod auth;
pub mod backend;
pub mod compression;
pub mod config;
pub mod control;
pub mod cors;
pub mod edge;
pub mod error;
pub mod extract;
pub mod mcp;
pub mod metrics;
pub mod openapi;
pub mod reply;
pub mod resilience;
pub mod routes;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod watch;
