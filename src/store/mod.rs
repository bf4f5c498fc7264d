//! What the gateway keeps itself: the local store (the embedded backend's data, fallback
//! data and the cache of cluster data, kept coherent with the nodes' change feeds) and the
//! durable journal of fallback writes.

pub mod coherence;
pub mod durable;
pub mod journal;
pub mod local;
