//! The rules of token issuance and of RFC 8693 token exchange, as pure
//! functions from verified inputs to the claims of the new token.
//!
//! The service verifies the subject and actor tokens (signature, issuer,
//! time, revocation), asks policy what the caller may have, and then calls
//! [`exchange`] (or [`issue_claims`]); it signs what comes back. Time
//! is an argument, policy answers are data: nothing here does I/O.
//!
//! # Exchange rules, in the order they are checked
//!
//! 1. **Subject still valid.** `subject.exp > now`, else
//!    [`TokenError::SubjectExpired`] (verification allows a leeway; exchange
//!    does not mint from an expired token).
//! 2. **Binding (RFC 8705).** A subject token without `cnf` is refused
//!    ([`TokenError::Unbound`]): Tessera only issues bound tokens. The
//!    caller may present the subject token if (a) it is the holder — the
//!    token's `x5t#S256` is the caller's certificate thumbprint — or (b) it
//!    is one of the token's audiences, i.e. the token was sent to it and it
//!    exchanges it for one aimed further downstream. Otherwise
//!    [`TokenError::BindingMismatch`]: a bound token presented from another
//!    certificate by a party it was not addressed to is refused.
//! 3. **Actor token.** If given, its `sub` must be the caller and it must be
//!    bound to the caller's certificate, else [`TokenError::ActorNotCaller`]:
//!    the actor is always the mTLS caller, whatever token it shows.
//! 4. **`may_act` (RFC 8693 §4.4).** If the subject token has one, it must
//!    list the caller, else [`TokenError::MayActViolated`]. This holds even
//!    when the caller is the subject. The claim is copied into the new token,
//!    so the subject's restriction binds every later hop too.
//! 5. **Scopes.** Granted = requested ∩ subject token's ∩ policy-allowed,
//!    in request order, without duplicates:
//!    - an empty request is refused ([`TokenError::NoScopeRequested`]): it
//!      does not mean "everything the subject has";
//!    - a requested scope that is not RFC 6749 scope syntax is refused
//!      ([`TokenError::InvalidScope`]);
//!    - a requested scope the subject token does not carry is refused
//!      ([`TokenError::ScopeWidening`]) rather than silently dropped: asking
//!      for more than you hold is a client bug or an attack, and either way
//!      the caller should hear about it;
//!    - a requested scope the subject has but policy does not allow is
//!      dropped (policy narrows quietly, as in IssueToken);
//!    - if nothing is left, [`TokenError::NoScopeGranted`].
//! 6. **Audiences.** At least one ([`TokenError::NoAudience`]), none empty
//!    ([`TokenError::InvalidAudience`]); duplicates are removed. Which
//!    audiences are allowed is policy's decision, made before this call.
//! 7. **Depth.** The new chain is `subject.chain + [subject.jti]`; its length
//!    must be ≤ `max_depth`, else [`TokenError::DepthExceeded`].
//! 8. **Lifetime.** `min(requested or default, subject.exp - now)`; a
//!    request above `max_lifetime` is refused, not shortened (the service
//!    refuses it earlier with a clearer message; policy sees the request as
//!    it was made); zero (a request of 0, a limit of 0) or an overflowing
//!    expiry is [`TokenError::BadLifetime`]. Shortening to the subject's
//!    remaining lifetime is deliberate: a caller cannot know it exactly, and
//!    `expires_in` tells it what it got. `iat = nbf = now`.
//! 9. **Actor claim.** Delegation (the default) makes the caller the
//!    current actor and nests the subject's `act` under it (RFC 8693 §4.1).
//!    When the caller already is the acting party — the outermost `act` of
//!    the subject token, or the subject itself if there is no `act` — it is
//!    narrowing its own token, not delegating, and `act` is kept as is
//!    (no `{"sub": X, "act": {"sub": X}}` stutter). Impersonation keeps the
//!    subject's `act` unchanged; whether the caller may impersonate is
//!    policy's decision, made before this call.
//!
//! The new token keeps the subject token's `sub`; `client_id` is the caller
//! and `cnf` the caller's thumbprint (the new token is bound to whoever
//! asked for it).

use super::claims::{Actor, Audience, Claims, Confirmation};
use super::error::TokenError;

/// Everything an exchange decision depends on, already verified.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeInput<'a> {
    /// mTLS identity of the caller.
    pub caller: &'a str,
    /// `x5t#S256` of the caller's leaf certificate (base64url of SHA-256 of DER).
    pub caller_cert_thumbprint: &'a str,
    /// The verified subject token's claims.
    pub subject: &'a Claims,
    /// The verified actor token's claims, if one was presented.
    pub actor: Option<&'a Claims>,
    /// Scopes the caller asked for.
    pub requested_scopes: &'a [String],
    /// Audiences of the new token (`audience` ∪ `resource`), already
    /// allowed by policy.
    pub audiences: &'a [String],
    /// Lifetime the caller asked for, in seconds.
    pub requested_lifetime: Option<u64>,
    /// Impersonation (no new `act` level) instead of delegation; the service
    /// sets it only when policy allowed it.
    pub impersonate: bool,
    /// Current time, unix seconds.
    pub now: u64,
}

/// Service-wide limits on what is issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `iss` of every token.
    pub issuer: String,
    /// Lifetime in seconds when none is requested.
    pub default_lifetime: u64,
    /// Longest lifetime in seconds, whatever is requested.
    pub max_lifetime: u64,
    /// Longest delegation chain (number of exchanges from the issued token).
    pub max_depth: usize,
}

/// Applies the exchange rules (see the module documentation) and returns
/// the claims of the new token, with `jti` as its id. `policy_scopes` are the
/// scopes policy allows the caller; a service that asks policy only after
/// the rules (with the scopes this returns) passes the requested scopes.
pub fn exchange(
    input: &ExchangeInput<'_>,
    policy_scopes: &[String],
    limits: &Limits,
    jti: String,
) -> Result<Claims, TokenError> {
    let subject = input.subject;
    let caller = input.caller;
    let thumbprint = input.caller_cert_thumbprint;
    let now = input.now;

    // 1. Subject still valid.
    if subject.exp <= now {
        return Err(TokenError::SubjectExpired);
    }

    // 2. Binding.
    let bound_to = match subject.thumbprint() {
        Some(t) if !t.is_empty() => t,
        _ => return Err(TokenError::Unbound),
    };
    let is_holder = !thumbprint.is_empty() && bound_to == thumbprint;
    if !is_holder && !subject.aud.contains(caller) {
        return Err(TokenError::BindingMismatch);
    }

    // 3. Actor token.
    if let Some(actor) = input.actor {
        if actor.sub != caller || thumbprint.is_empty() || !actor.is_bound_to(thumbprint) {
            return Err(TokenError::ActorNotCaller);
        }
    }

    // 4. may_act.
    if let Some(may_act) = &subject.may_act {
        if !may_act.allows(caller) {
            return Err(TokenError::MayActViolated);
        }
    }

    // 5. Scopes.
    if input.requested_scopes.is_empty() {
        return Err(TokenError::NoScopeRequested);
    }
    if !input.requested_scopes.iter().all(|s| is_scope_token(s)) {
        return Err(TokenError::InvalidScope);
    }
    if !input.requested_scopes.iter().all(|s| subject.has_scope(s)) {
        return Err(TokenError::ScopeWidening);
    }
    let granted: Vec<&str> = dedup(
        input
            .requested_scopes
            .iter()
            .filter(|s| policy_scopes.contains(*s)),
    );
    if granted.is_empty() {
        return Err(TokenError::NoScopeGranted);
    }

    // 6. Audiences.
    let aud = audience(input.audiences)?;

    // 7. Depth.
    let mut chain = Vec::with_capacity(subject.chain.len() + 1);
    chain.extend(subject.chain.iter().cloned());
    chain.push(subject.jti.clone());
    if chain.len() > limits.max_depth {
        return Err(TokenError::DepthExceeded);
    }

    // 8. Lifetime.
    let remaining = subject.exp - now; // > 0, checked in 1.
    let exp = expiry(input.requested_lifetime, limits, now, remaining)?;

    // 9. Actor claim.
    let caller_already_acts = match &subject.act {
        Some(act) => act.sub == caller,
        None => subject.sub == caller,
    };
    let act = if input.impersonate || caller_already_acts {
        subject.act.clone()
    } else {
        Some(Actor {
            sub: caller.to_owned(),
            act: subject.act.clone().map(Box::new),
        })
    };

    let mut claims = Claims {
        iss: limits.issuer.clone(),
        sub: subject.sub.clone(),
        aud,
        exp,
        iat: now,
        nbf: now,
        jti,
        scope: granted.join(" "),
        client_id: caller.to_owned(),
        act,
        cnf: Some(Confirmation {
            x5t_s256: thumbprint.to_owned(),
        }),
        may_act: subject.may_act.clone(),
        chain,
        // Set by the service from its applied revision.
        rev: None,
        ancestor_clients: subject.ancestor_clients.clone(),
    };
    // A cut-off of any ancestor's client reaches the new token: the ones
    // `sub` and `act` do not name are listed (impersonation hops).
    if !claims.clients().contains(&subject.client_id.as_str()) {
        claims.ancestor_clients.push(subject.client_id.clone());
    }
    Ok(claims)
}

/// The claims of a token the caller gets for itself (IssueToken): `sub` =
/// `client_id` = caller, bound to the caller's certificate, no `act`, an
/// empty chain. `granted_scopes` are what policy allows of the request.
// The argument list mirrors the IssueToken request one to one; a struct
// would only rename the same eight values.
#[allow(clippy::too_many_arguments)]
pub fn issue_claims(
    caller: &str,
    thumbprint: &str,
    audiences: &[String],
    granted_scopes: &[String],
    requested_lifetime: Option<u64>,
    limits: &Limits,
    now: u64,
    jti: String,
) -> Result<Claims, TokenError> {
    if thumbprint.is_empty() {
        return Err(TokenError::Unbound);
    }
    if granted_scopes.is_empty() {
        return Err(TokenError::NoScopeGranted);
    }
    if !granted_scopes.iter().all(|s| is_scope_token(s)) {
        return Err(TokenError::InvalidScope);
    }
    let aud = audience(audiences)?;
    let exp = expiry(requested_lifetime, limits, now, u64::MAX)?;
    Ok(Claims {
        iss: limits.issuer.clone(),
        sub: caller.to_owned(),
        aud,
        exp,
        iat: now,
        nbf: now,
        jti,
        scope: dedup(granted_scopes.iter()).join(" "),
        client_id: caller.to_owned(),
        act: None,
        cnf: Some(Confirmation {
            x5t_s256: thumbprint.to_owned(),
        }),
        may_act: None,
        chain: Vec::new(),
        // Set by the service from its applied revision.
        rev: None,
        ancestor_clients: Vec::new(),
    })
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

/// The distinct values, first occurrence first.
fn dedup<'a>(values: impl Iterator<Item = &'a String>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for v in values {
        if !out.contains(&v.as_str()) {
            out.push(v);
        }
    }
    out
}

fn audience(audiences: &[String]) -> Result<Audience, TokenError> {
    if audiences.iter().any(String::is_empty) {
        return Err(TokenError::InvalidAudience);
    }
    let list = dedup(audiences.iter())
        .into_iter()
        .map(str::to_owned)
        .collect();
    Audience::new(list).ok_or(TokenError::NoAudience)
}

/// `now + min(requested or default, remaining)` (the default bounded by
/// `max`), refusing zero and a request above `max`.
fn expiry(
    requested: Option<u64>,
    limits: &Limits,
    now: u64,
    remaining: u64,
) -> Result<u64, TokenError> {
    if requested.is_some_and(|r| r > limits.max_lifetime) {
        return Err(TokenError::BadLifetime);
    }
    let lifetime = requested
        .unwrap_or(limits.default_lifetime)
        .min(limits.max_lifetime)
        .min(remaining);
    if lifetime == 0 {
        return Err(TokenError::BadLifetime);
    }
    now.checked_add(lifetime).ok_or(TokenError::BadLifetime)
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
