//! Tessera's public gRPC API, package `tessera.v1`: the code generated from
//! `proto/tessera/v1/*.proto` (messages, clients and servers), the codec
//! every generated service and client uses ([`codec`]), and the protocol
//! constants that servers and clients must agree on ([`consts`]).
//!
//! The server re-exports this crate as `tessera::pb`; the client library
//! (`tessera-client`) depends on it without depending on the server.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod consts;

pub use consts::*;

/// The generated code, kept apart so that lints on it can be relaxed.
mod generated {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("tessera.v1");
}

pub use generated::*;

/// Encoded file descriptor set for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tessera_descriptor");
