//! Resilience policies, each a small, separately tested piece (SPEC §7): per-endpoint
//! breakers, retry backoff and budget, latency-aware balancing. The real backend
//! composes them; handlers never see them.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod health;
pub mod retry;
pub mod shed;
