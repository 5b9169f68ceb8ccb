//! Raft: the type configuration and replicated data model (`types`), and
//! (later) the node-to-node network and internal gRPC service.

pub mod types;

pub use types::*;
