//! The token layer: the claims of Tessera's access tokens, JWT signing and
//! verification (RFC 9068 profile, RFC 8725 practices), and the rules of
//! issuance and RFC 8693 token exchange.
//!
//! Everything here is pure: no I/O, no clock (callers pass `now` in unix
//! seconds), no policy engine (policy answers come in as data). The service
//! layer verifies incoming tokens with [`verify`], decides with policy, builds
//! claims with [`issue_claims`] or [`exchange()`], and signs them with a
//! [`SigningKey`] from the key ring.
//!
//! - [`claims`]: [`Claims`] and the JSON shapes of `aud`, `act`, `cnf`,
//!   `may_act` and the delegation chain.
//! - [`jwt`]: [`SigningKey`], [`VerifyingKey`], [`KeySet`] (and JWKS),
//!   [`verify`] and [`VerifyParams`].
//! - [`mod@exchange`]: [`exchange()`], [`issue_claims`] and the rules they
//!   apply, documented rule by rule.
//! - [`cutoff_revokes`]: the subject/client cut-off rule (revisions, not
//!   clocks), shared with the client library's verifier.
//! - [`TokenError`]: one error enum for the layer, with exact variants.

pub mod claims;
mod cutoff;
mod error;
pub mod exchange;
pub mod jwt;

pub use claims::{x5t_s256, Actor, Audience, Claims, Confirmation, MayAct};
pub use cutoff::cutoff_revokes;
pub use error::TokenError;
pub use exchange::{exchange, issue_claims, ExchangeInput, Limits};
pub use jwt::{
    check_claims, generate_ed25519, generate_es256, new_jti, verify, Alg, KeySet, SigningKey,
    VerifyParams, VerifyingKey, DEFAULT_LEEWAY, DEFAULT_MAX_CHAIN, DEFAULT_MAX_LEN,
    MAX_DEPTH_LIMIT, MAX_LEEWAY, TOKEN_TYPE,
};
