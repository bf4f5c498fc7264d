//! Calling BZZZ nodes: the UCXI wire protocol and the validation of what nodes answer
//! (`ucxi`), the transport seam that carries one exchange (`transport`), what the gateway
//! knows of each node (`endpoint`), the cluster that chooses an endpoint, attempts and
//! retries (`cluster`), and the client of the nodes' change feeds (`feed`).

pub mod cluster;
pub mod endpoint;
pub mod feed;
pub mod transport;
pub mod ucxi;

#[cfg(test)]
mod tests;
