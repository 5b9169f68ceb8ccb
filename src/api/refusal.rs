//! Why an issue or exchange was refused, in two vocabularies at once: the
//! [`ApiError`] that becomes the gRPC status, and the part of the request
//! the refusal concerns ([`Cause`]), from which the OAuth HTTP face
//! ([`super::http`]) picks its RFC 6749 §5.2 error code. The handlers know
//! which step refused (a presented token, an exchange rule, policy for an
//! audience); recording it there keeps the HTTP side from guessing from
//! messages.

use tonic::Status;

use super::ApiError;
use crate::token::TokenError;

/// The part of a token request a refusal concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The request's shape, or nothing in particular (node state, bugs).
    Request,
    /// A presented token (subject or actor): invalid, expired, revoked,
    /// bound to another certificate, or not exchangeable any further.
    Grant,
    /// The requested scopes: malformed, none, or wider than the subject
    /// token's.
    Scope,
    /// The requested audiences (`audience`, `resource`): missing,
    /// malformed, or policy grants nothing for one of them.
    Target,
    /// The caller itself: a rule of the presented token excludes it
    /// (`may_act`), or policy does not let it do this at all.
    Client,
}

/// A refused issue or exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// What the gRPC status is made of.
    pub error: ApiError,
    /// What the refusal concerns.
    pub cause: Cause,
}

impl Refused {
    /// A refusal of `cause`.
    pub fn new(cause: Cause, error: ApiError) -> Self {
        Self { error, cause }
    }

    /// A refusal by the token rules, classified by the rule.
    pub fn token(e: TokenError) -> Self {
        use TokenError as T;
        let cause = match &e {
            T::MayActViolated => Cause::Client,
            T::ScopeWidening | T::NoScopeGranted | T::NoScopeRequested | T::InvalidScope => {
                Cause::Scope
            }
            T::NoAudience | T::InvalidAudience => Cause::Target,
            T::BadLifetime | T::InvalidKey(_) | T::Crypto(_) => Cause::Request,
            // Everything else is about a presented token (its signature,
            // time, binding, chain depth).
            _ => Cause::Grant,
        };
        Self::new(cause, ApiError::from(e))
    }
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Self {
        Self::new(Cause::Request, error)
    }
}

impl From<Refused> for Status {
    fn from(r: Refused) -> Self {
        r.error.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules_are_classified_by_what_they_judge() {
        let cause = |e| Refused::token(e).cause;
        assert_eq!(cause(TokenError::Expired), Cause::Grant);
        assert_eq!(cause(TokenError::BindingMismatch), Cause::Grant);
        assert_eq!(cause(TokenError::DepthExceeded), Cause::Grant);
        assert_eq!(cause(TokenError::ActorNotCaller), Cause::Grant);
        assert_eq!(cause(TokenError::MayActViolated), Cause::Client);
        assert_eq!(cause(TokenError::ScopeWidening), Cause::Scope);
        assert_eq!(cause(TokenError::NoScopeRequested), Cause::Scope);
        assert_eq!(cause(TokenError::NoAudience), Cause::Target);
        assert_eq!(cause(TokenError::BadLifetime), Cause::Request);
        // The gRPC code is the API table's, whatever the cause.
        assert_eq!(
            Status::from(Refused::token(TokenError::ScopeWidening)).code(),
            tonic::Code::PermissionDenied
        );
    }
}
