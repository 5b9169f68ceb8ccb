//! Policy as code: the Cedar schema and the engine that decides who may
//! issue, exchange, impersonate, revoke, introspect (and learn which claims)
//! and administer.
//!
//! This module owns the schema (`schema.cedarschema`, namespace `Tessera`),
//! the validation of policy documents against it, and the decisions. It does
//! no I/O: policy text arrives as a string (replicated through Raft by the
//! store) and decisions are plain values that the service writes to the
//! audit log.
//!
//! - [`PolicyEngine`] is one validated policy version, immutable and cheap to
//!   share in an `Arc`; a new version is a new engine.
//! - [`Request`] is one question: principal (the caller's certificate
//!   identity), [`Action`], [`Resource`] and a typed [`Context`].
//! - Grants are decided per scope: [`PolicyEngine::allowed_scopes`] asks once
//!   for every requested scope and keeps the ones that are allowed.
//! - Policies are named by their `@id("...")` annotation (else Cedar's
//!   default `policy0`, `policy1`, ...); [`Decision::policy_ids`] lists the
//!   rules that determined a decision.
//!
//! Default deny: an empty policy set allows nothing, and a `forbid` wins over
//! any `permit`.

mod engine;
mod request;
mod shape;
mod target;

pub use engine::{Decision, PolicyEngine, MAX_ERROR_MESSAGE_BYTES, MAX_POLICY_BYTES};
pub use request::{
    Action, Context, DiscloseContext, ExchangeFacts, GrantFacts, Request, Resource, RevokeContext,
    RevokeKind, CLUSTER_ID,
};
pub use shape::{MAX_NESTING, MAX_OPERATORS_PER_POLICY};

/// The Cedar schema (Cedar schema syntax) that policies are validated
/// against. Published so that operators can see it (`tessera policy schema`).
pub const SCHEMA: &str = include_str!("schema.cedarschema");

/// Why a policy document or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The text is not Cedar. The message lists the parser's problems,
    /// bounded to [`MAX_ERROR_MESSAGE_BYTES`].
    #[error("policy does not parse: {0}")]
    Parse(String),
    /// The text is Cedar but breaks the schema or Tessera's rules for policy
    /// documents (duplicate `@id`, templates, size). The message names the
    /// policies and the problems, bounded to [`MAX_ERROR_MESSAGE_BYTES`].
    #[error("policy is invalid: {0}")]
    Invalid(String),
    /// A request could not be turned into a Cedar request: a bug in the
    /// caller or in this module, never the user's fault.
    #[error("policy request cannot be built (bug): {0}")]
    Internal(String),
}
