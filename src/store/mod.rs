//! What the gateway keeps itself: the local store (the embedded backend's data, fallback
//! data and the cache of cluster data) and the durable journal of fallback writes.

pub mod durable;
pub mod journal;
pub mod local;
