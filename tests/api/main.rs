//! API tests over real HTTP: every test spawns its own gateway on port 0.

mod admin;
mod conformance;
mod envelopes;
mod errors;
mod helpers;
mod node_client;
mod ops;
mod process;
mod search;
