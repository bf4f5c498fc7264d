//! Calling BZZZ nodes: the UCXI wire protocol and the validation of what nodes answer
//! (`ucxi`), and the cluster that chooses an endpoint, attempts and retries (`cluster`).

pub mod cluster;
pub mod ucxi;
