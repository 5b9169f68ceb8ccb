//! Request validation: the cheap checks every request passes before any
//! work is done for it, and the one place that documents the limits.
//!
//! Every repeated or variable-size field of a `tessera.v1` request is
//! checked against a count and a byte limit before anything iterates over
//! it more than once; de-duplication is linear (a hash set); nothing here
//! verifies a signature or asks Cedar. Handlers call these functions first
//! and work only on what they return, so a request can hold a worker for a
//! bounded, small amount of CPU whatever it contains.
//!
//! | field | limit |
//! |---|---|
//! | whole request message | [`crate::api::MAX_REQUEST_BYTES`] (2 MiB), refused as the frame header arrives: `RESOURCE_EXHAUSTED` |
//! | `audience` entries, `resource` entries | [`MAX_AUDIENCES`] each, and [`MAX_AUDIENCES`] distinct together |
//! | one audience, subject, client, jti, `may_act` identity | 1 to [`MAX_NAME_BYTES`] bytes |
//! | `scope` entries (each may hold several, space-separated) | [`MAX_SCOPES`] entries, [`MAX_SCOPE_LIST_BYTES`] bytes in all, [`MAX_SCOPES`] distinct scopes |
//! | one scope | 1 to [`MAX_NAME_BYTES`] bytes |
//! | audiences × scopes (policy questions of one grant) | [`MAX_GRANT_QUESTIONS`] |
//! | `may_act` entries | [`MAX_MAY_ACT`] |
//! | `lifetime_seconds` | the cluster's `max_lifetime` (0: the default lifetime) |
//! | `subject_token`, `actor_token`, introspected or revoked token | `max_token_len` (8 KiB by default), checked by the token rules before any parsing |
//! | InitCluster `raft_addrs` | 1 to [`MAX_MEMBERS`], each 1 to [`MAX_ADDR_BYTES`] bytes |
//! | policy text | [`crate::policy::MAX_POLICY_BYTES`] (1 MiB), checked before parsing |
//!
//! A request beyond a field limit is malformed: `INVALID_ARGUMENT`, with a
//! message naming the field and the limit. `RESOURCE_EXHAUSTED` is kept for
//! the message size and for rate limits, which are about the caller's
//! volume rather than the request's shape.

use std::collections::HashSet;

use super::ApiError;
use crate::pb;
use crate::token::TokenError;

/// Most audiences of one token (`audience` and `resource` together, after
/// removing duplicates); also the most entries of either field.
pub const MAX_AUDIENCES: usize = 16;
/// Most distinct scopes in one request; also the most `scope` entries.
pub const MAX_SCOPES: usize = 64;
/// Most bytes of all `scope` entries of one request together.
pub const MAX_SCOPE_LIST_BYTES: usize = 8 * 1024;
/// Longest audience, scope, subject, client identity or jti, in bytes.
pub const MAX_NAME_BYTES: usize = 512;
/// Most (audience, scope) pairs one grant asks policy about: each pair is
/// one Cedar evaluation (15 to 25 µs), so this bounds a request's policy
/// work to a few milliseconds.
pub const MAX_GRANT_QUESTIONS: usize = 256;
/// Most identities in an IssueToken `may_act`.
pub const MAX_MAY_ACT: usize = 16;
/// Most members named in one InitCluster.
pub const MAX_MEMBERS: usize = 9;
/// Longest Raft address (`host:port`), in bytes.
pub const MAX_ADDR_BYTES: usize = 261;

/// RFC 8693 grant type.
pub use tessera_proto::GRANT_TYPE_TOKEN_EXCHANGE as GRANT_TOKEN_EXCHANGE;
/// RFC 8693 token types: an OAuth access token, a JWT.
pub use tessera_proto::{TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT};

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(msg.into())
}

/// A checked IssueToken request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueParams {
    /// Distinct audiences, first occurrence first; 1 to [`MAX_AUDIENCES`].
    pub audiences: Vec<String>,
    /// Distinct scopes, first occurrence first; at most [`MAX_SCOPES`].
    /// None requested is a token rule's refusal (`NoScopeRequested`, a
    /// scope refusal as for an exchange), left to the handler.
    pub scopes: Vec<String>,
    /// The requested lifetime, at most the maximum; `None` for the default.
    pub lifetime: Option<u64>,
    /// Distinct identities that may later act on the token (may be empty).
    pub may_act: Vec<String>,
}

/// Checks an IssueToken request. `max_lifetime` is the cluster's maximum.
pub fn issue(r: pb::IssueTokenRequest, max_lifetime: u64) -> Result<IssueParams, ApiError> {
    let audiences = audiences(r.audience, Vec::new())?;
    let scopes = scopes(&r.scope)?;
    check_grant_size(&audiences, &scopes)?;
    let lifetime = lifetime(r.lifetime_seconds, max_lifetime)?;
    let may_act = names("may_act", r.may_act, MAX_MAY_ACT)?;
    if audiences.is_empty() {
        return Err(TokenError::NoAudience.into());
    }
    Ok(IssueParams {
        audiences,
        scopes,
        lifetime,
        may_act,
    })
}

/// A checked ExchangeToken request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeParams {
    /// The subject token (non-empty; its size is the token rules' check).
    pub subject_token: String,
    /// The actor token, if one was given with its type.
    pub actor_token: Option<String>,
    /// Distinct audiences (`audience` then `resource`); at most
    /// [`MAX_AUDIENCES`], possibly none (the exchange rules refuse that
    /// with their own message).
    pub audiences: Vec<String>,
    /// Distinct scopes; at most [`MAX_SCOPES`], possibly none (refused by
    /// the exchange rules).
    pub scopes: Vec<String>,
    /// The requested lifetime, at most the maximum; `None` for the default.
    pub lifetime: Option<u64>,
    /// Impersonation instead of delegation.
    pub impersonate: bool,
}

/// Checks an ExchangeToken request: RFC 8693's required fields and values,
/// then the limits.
pub fn exchange(
    r: pb::ExchangeTokenRequest,
    max_lifetime: u64,
) -> Result<ExchangeParams, ApiError> {
    if !(r.grant_type.is_empty() || r.grant_type == GRANT_TOKEN_EXCHANGE) {
        return Err(invalid("unsupported grant_type"));
    }
    let token_type_ok = |t: &str| t == TOKEN_TYPE_ACCESS || t == TOKEN_TYPE_JWT;
    if r.subject_token.is_empty() {
        return Err(invalid("subject_token is required"));
    }
    // RFC 8693 §2.1: subject_token_type is REQUIRED.
    if r.subject_token_type.is_empty() {
        return Err(invalid("subject_token_type is required"));
    }
    if !token_type_ok(&r.subject_token_type) {
        return Err(invalid("unsupported subject_token_type"));
    }
    if !(r.requested_token_type.is_empty() || r.requested_token_type == TOKEN_TYPE_ACCESS) {
        return Err(invalid("unsupported requested_token_type"));
    }
    // RFC 8693 §2.1: actor_token_type is REQUIRED with an actor_token and
    // must not be present without one.
    let actor_token = match (r.actor_token.is_empty(), r.actor_token_type.is_empty()) {
        (true, true) => None,
        (true, false) => return Err(invalid("actor_token_type without actor_token")),
        (false, true) => return Err(invalid("actor_token_type is required with actor_token")),
        (false, false) if !token_type_ok(&r.actor_token_type) => {
            return Err(invalid("unsupported actor_token_type"))
        }
        (false, false) => Some(r.actor_token),
    };
    let audiences = audiences(r.audience, r.resource)?;
    let scopes = scopes(&r.scope)?;
    check_grant_size(&audiences, &scopes)?;
    let lifetime = lifetime(r.lifetime_seconds, max_lifetime)?;
    Ok(ExchangeParams {
        subject_token: r.subject_token,
        actor_token,
        audiences,
        scopes,
        lifetime,
        impersonate: r.impersonate,
    })
}

/// Checks an Introspect request.
pub fn introspect(r: &pb::IntrospectRequest) -> Result<(), ApiError> {
    if r.token.is_empty() {
        return Err(invalid("token is required"));
    }
    Ok(())
}

/// Checks a Revoke request and returns its target.
pub fn revoke(r: pb::RevokeRequest) -> Result<pb::revoke_request::Target, ApiError> {
    use pb::revoke_request::Target;
    let target = r
        .target
        .ok_or_else(|| invalid("a revocation target is required"))?;
    match &target {
        Target::Token(t) | Target::ChainOfToken(t) if t.is_empty() => {
            return Err(invalid("token is empty"))
        }
        Target::Jti(v) => name("jti", v)?,
        Target::Subject(v) => name("subject", v)?,
        Target::Client(v) => name("client", v)?,
        Target::Token(_) | Target::ChainOfToken(_) => {}
    }
    Ok(target)
}

/// Checks the member addresses of an InitCluster request.
pub fn raft_addrs(addrs: &[String]) -> Result<(), ApiError> {
    if addrs.is_empty() || addrs.len() > MAX_MEMBERS {
        return Err(invalid(format!(
            "give 1 to {MAX_MEMBERS} member Raft addresses"
        )));
    }
    addrs.iter().try_for_each(|a| raft_addr(a))
}

/// Checks one Raft address (`host:port`).
pub fn raft_addr(addr: &str) -> Result<(), ApiError> {
    if addr.is_empty() || addr.len() > MAX_ADDR_BYTES {
        return Err(invalid(format!(
            "a Raft address must be 1 to {MAX_ADDR_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Checks a policy document's size (parsing comes after).
pub fn policy_text(text: &str) -> Result<(), ApiError> {
    let max = crate::policy::MAX_POLICY_BYTES;
    if text.len() > max {
        return Err(invalid(format!(
            "policy is invalid: the document is {} bytes, more than the limit of {max}",
            text.len()
        )));
    }
    Ok(())
}

fn name(what: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() || v.len() > MAX_NAME_BYTES {
        return Err(invalid(format!(
            "each {what} must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Distinct names, first occurrence first; the count is checked before
/// anything is hashed.
fn names(what: &str, values: Vec<String>, max: usize) -> Result<Vec<String>, ApiError> {
    if values.len() > max {
        return Err(invalid(format!("too many {what} entries (at most {max})")));
    }
    values.iter().try_for_each(|v| name(what, v))?;
    Ok(dedup(values))
}

/// `audience` then `resource` (RFC 8707), distinct.
fn audiences(audience: Vec<String>, resource: Vec<String>) -> Result<Vec<String>, ApiError> {
    for (what, list) in [("audience", &audience), ("resource", &resource)] {
        if list.len() > MAX_AUDIENCES {
            return Err(invalid(format!(
                "too many {what} entries (at most {MAX_AUDIENCES})"
            )));
        }
        list.iter().try_for_each(|v| name(what, v))?;
    }
    let all = dedup(audience.into_iter().chain(resource));
    if all.len() > MAX_AUDIENCES {
        return Err(invalid(format!(
            "too many audiences (at most {MAX_AUDIENCES} distinct)"
        )));
    }
    Ok(all)
}

/// Scopes from the request: each entry may hold several, space-separated
/// (as in OAuth's `scope` parameter). Distinct, first occurrence first.
/// The entry count and total size are checked before splitting, so the
/// split and the hash set see at most [`MAX_SCOPE_LIST_BYTES`].
fn scopes(raw: &[String]) -> Result<Vec<String>, ApiError> {
    if raw.len() > MAX_SCOPES {
        return Err(invalid(format!(
            "too many scope entries (at most {MAX_SCOPES})"
        )));
    }
    let total: usize = raw.iter().map(String::len).sum();
    if total > MAX_SCOPE_LIST_BYTES {
        return Err(invalid(format!(
            "scopes take {total} bytes (at most {MAX_SCOPE_LIST_BYTES})"
        )));
    }
    let mut seen: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for s in raw
        .iter()
        .flat_map(|s| s.split(' '))
        .filter(|s| !s.is_empty())
    {
        if s.len() > MAX_NAME_BYTES {
            return Err(invalid(format!(
                "each scope must be 1 to {MAX_NAME_BYTES} bytes"
            )));
        }
        if seen.insert(s) {
            if out.len() == MAX_SCOPES {
                return Err(invalid(format!(
                    "too many scopes (at most {MAX_SCOPES} distinct)"
                )));
            }
            out.push(s.to_owned());
        }
    }
    Ok(out)
}

fn check_grant_size(audiences: &[String], scopes: &[String]) -> Result<(), ApiError> {
    if audiences.len().saturating_mul(scopes.len()) > MAX_GRANT_QUESTIONS {
        return Err(invalid(format!(
            "{} audiences × {} scopes is more than {MAX_GRANT_QUESTIONS} combinations",
            audiences.len(),
            scopes.len()
        )));
    }
    Ok(())
}

/// `0` means "the default" (`None`); more than `max` is refused rather than
/// silently shortened, so that the caller and policy see what was asked.
fn lifetime(requested: u64, max: u64) -> Result<Option<u64>, ApiError> {
    match requested {
        0 => Ok(None),
        l if l > max => Err(invalid(format!(
            "lifetime_seconds {l} is above this cluster's maximum of {max}"
        ))),
        l => Ok(Some(l)),
    }
}

/// The distinct values, first occurrence first, in linear time.
fn dedup(values: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    values
        .into_iter()
        .filter(|v| seen.insert(v.clone()))
        .collect()
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
