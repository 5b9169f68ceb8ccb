//! The client side of Tessera: what callers and resource servers embed.
//!
//! - [`RevocationCache`] ([`cache`]): a live local copy of the cluster's
//!   revocations, fed by the `WatchRevocations` stream; resumes from its last
//!   revision on another node, falls back to a snapshot, reports staleness.
//! - [`Verifier`] ([`verifier`]): verifies a token locally (JWKS, RFC 8725
//!   checks, certificate binding, revocations from the cache).
//! - [`TokenSource`] ([`source`]): the caller's own and exchanged tokens,
//!   cached per audience and scopes, renewed before expiry with jitter.
//! - [`ClientError`]: the one error type of the layer, keeping gRPC codes.
//! - [`connect`] and [`endpoint`]: mutual-TLS channels to one node, shared
//!   with the CLI, the benchmarks and the tests.
//!
//! `docs/CLIENT.md` walks through a resource server and a caller.

pub mod cache;
mod conn;
mod error;
pub mod source;
pub mod verifier;

pub use cache::{CacheConfig, CacheStatus, RevocationCache};
pub use conn::{connect, endpoint, DEFAULT_CONNECT_TIMEOUT};
pub use error::ClientError;
pub use source::{Renewal, TokenSource, TokenSourceConfig};
pub use verifier::{VerifiedToken, Verifier, VerifierConfig, VerifyError};
