//! Raft: the type configuration and replicated data model ([`types`]), and
//! the node-to-node transport: the binary encoding of Raft messages
//! ([`codec`]), the client side openraft sends through ([`network`]) and
//! the internal gRPC service that receives ([`service`]) behind its
//! members-only gate ([`members_only`]); and the
//! [`proposer`], which batches concurrent writes into single log entries;
//! the batched [`read_index`] behind linearizable reads; and the pre-vote
//! [`election`] that keeps a returning node from deposing a healthy leader;
//! and what a follower heard of its leader's commit ([`commits_heard`]),
//! which tells it when it is catching up.
//!
//! # Transport
//!
//! Raft traffic runs on its own listener with mutual TLS. Both ends check
//! that the other is a *member*, not merely someone the CA vouches for: the
//! server maps the caller's certificate to a node id
//! (`spiffe://{trust-domain}/node/{id}`) and looks it up in the current
//! membership, before it reads the call's body; the client verifies that
//! the server certificate names the node it meant to reach. Each request carries the sender's data
//! incarnation and each reply the responder's node id and incarnation, so a
//! node whose data was wiped can neither vote nor acknowledge on behalf of
//! the state it lost.

pub mod codec;
pub mod commits_heard;
pub mod election;
pub mod members_only;
pub mod network;
pub mod proposer;
pub mod read_index;
mod read_link;
pub mod service;
pub mod types;

pub use codec::CodecError;
pub use election::{
    elect_unless_led, CampaignStats, Campaigner, ElectionTimes, LastLogId, LeaderContact,
    PreVoteReply, PreVoteRequest,
};
pub use members_only::MembersOnlyLayer;
pub use network::{
    hello, Faults, ForwardError, Network, PeerClient, RaftNetError, DEFAULT_SNAPSHOT_CHUNK_TIMEOUT,
};
pub use proposer::{Batcher, Proposer, WriteError};
pub use read_index::{ReadIndex, ReadIndexError};
pub use service::{server, trust_domain_of, RaftService};
pub use types::*;

/// Generated protobuf and gRPC code of the internal Raft service
/// (`tessera.raft.v1`).
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("tessera.raft.v1");
}

/// Largest gRPC message either end of the Raft transport accepts or sends:
/// comfortably above a snapshot chunk (the node configures openraft's
/// `snapshot_max_chunk_size` to 4 MiB) plus its envelope.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Request metadata: the sender's data incarnation (decimal).
pub const INCARNATION_HEADER: &str = "x-tessera-incarnation";
/// Reply metadata: the responder's node id (decimal). Replies also carry
/// the responder's [`INCARNATION_HEADER`].
pub const NODE_ID_HEADER: &str = "x-tessera-node-id";
