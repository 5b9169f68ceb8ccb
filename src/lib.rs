//! Tessera: a token service for service-to-service authorization.
//!
//! # Layout
//!
//! Lower layers never import higher ones:
//!
//! - [`token`]: JWT claims, signing, verification (RFC 8725) and the
//!   exchange rules of RFC 8693. Pure: no I/O, no clock of its own.
//! - [`policy`]: the Cedar schema and policy engine that decides who may
//!   issue, exchange, revoke, introspect and administer.
//! - [`keys`]: the key ring: key-encryption key, sealing of private keys,
//!   and the signing and verification keys derived from replicated records.
//! - [`tls`]: rustls configurations for mutual TLS and the caller identity
//!   taken from a peer certificate; [`certs`] generates development PKI.
//! - [`raft`]: openraft's type configuration and the replicated commands,
//!   and the node-to-node transport (members-only gRPC over mTLS).
//! - [`store`]: sled-backed Raft log and state machine.
//! - [`api`]: the public gRPC services and the error-to-status table.
//! - [`metrics`]: the Prometheus registry and the per-caller anomaly
//!   signal; a leaf that every layer may record into.
//! - [`node`]: configuration and wiring: `run(config, listeners, shutdown)`.
//! - [`client`]: what callers and resource servers embed.
//! - [`pb`] and [`pb_codec`]: the generated `tessera.v1` code and its codec.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod certs;
pub mod client;
pub mod clock;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod pb_codec;
pub mod policy;
pub mod raft;
pub mod store;
pub mod tls;
pub mod token;

/// Generated protobuf and gRPC code for the public API (`tessera.v1`).
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("tessera.v1");

    /// Encoded file descriptor set for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tessera_descriptor");
}
