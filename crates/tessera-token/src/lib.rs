//! Tessera's token rules, shared by the server and the client library: the
//! claims of its access tokens, JWT signing and RFC 8725 verification, the
//! rules of issuance and RFC 8693 exchange ([`token`]), and the injectable
//! wall clock ([`clock`]). Pure: no I/O, no network, no storage.
//!
//! The sources stay at `src/token/` and `src/clock.rs` of the repository
//! (where the server's history and parallel work on them live) and are
//! compiled here only; the server re-exports them as `tessera::token` and
//! `tessera::clock`. Moving the files under this crate is a pure rename.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[path = "../../../src/clock.rs"]
pub mod clock;
#[path = "../../../src/token/mod.rs"]
pub mod token;

pub use token::*;
