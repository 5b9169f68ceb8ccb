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
//! - [`store`]: the Raft log (segment files, metadata in sled) and the
//!   state machine.
//! - [`api`]: the public gRPC services and the error-to-status table;
//!   [`api::http`] the optional HTTPS listener (JWKS, RFC 8414 metadata).
//! - [`trace`]: W3C trace context carried from the API to forwarded
//!   writes (used by `api` and `raft`).
//! - [`metrics`]: the Prometheus registry and the per-caller anomaly
//!   signal; a leaf that every layer may record into.
//! - [`node`]: configuration and wiring: `run(config, listeners, shutdown)`,
//!   and certificate reload for every listener and the Raft client.
//! - [`client`]: what callers and resource servers embed (the
//!   `tessera-client` crate, re-exported).
//! - [`pb`] and [`pb_codec`]: the generated `tessera.v1` code and its codec
//!   (the `tessera-proto` crate, re-exported).
//!
//! [`token`] and [`clock`] are compiled in the `tessera-token` crate (from
//! `src/token` and `src/clock.rs`, where they stay for now) and re-exported,
//! so that the client library shares them without depending on the server.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod certs;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod raft;
pub mod store;
pub mod tls;
pub mod trace;

/// What callers and resource servers embed: the `tessera-client` crate.
pub use tessera_client as client;
/// Generated protobuf and gRPC code for the public API (`tessera.v1`): the
/// `tessera-proto` crate.
pub use tessera_proto as pb;
/// The codec of the generated `tessera.v1` services and clients.
pub use tessera_proto::codec as pb_codec;
/// Wall-clock time as an injectable dependency (from `tessera-token`).
pub use tessera_token::clock;
/// The token layer: the `tessera-token` crate.
pub use tessera_token::token;
