//! BZZZ node: a libp2p Kademlia peer that stores UCXL version sets durably, replicates
//! every write to a majority of the replication factor, catches up peers that come back,
//! and serves the UCXI HTTP API.
//!
//! `main.rs` reads the environment and runs [`node::Node`]; tests start node processes.

pub mod api;
pub mod auth;
pub mod config;
pub mod dht;
pub mod feed;
pub mod node;
pub mod p2p;
pub mod store;
