//! The one table from errors to gRPC statuses. Every layer's error enters
//! the API as an [`ApiError`] through an explicit `From`; every `ApiError`
//! leaves as a [`tonic::Status`] with a stable code. `INTERNAL` means a bug.
//!
//! Two answers are made before a handler runs: a request message above the
//! size limit is `RESOURCE_EXHAUSTED` ([`super::MessageLimitLayer`]) and
//! one that is not valid protobuf is `INVALID_ARGUMENT`
//! ([`crate::pb_codec`]).

use tonic::{Code, Status};

use crate::keys::KeyError;
use crate::policy::PolicyError;
use crate::raft::NodeId;
use crate::token::TokenError;

/// Metadata key carrying the leader's address on `UNAVAILABLE`.
pub use tessera_proto::LEADER_METADATA;

/// Errors of the API layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// Missing or bad credentials or token.
    #[error("{0}")]
    Unauthenticated(String),
    /// Policy or a token rule said no; the message names the rule family.
    #[error("{0}")]
    PermissionDenied(String),
    /// This node cannot take the write now (no quorum, not the leader).
    #[error("{reason}")]
    Unavailable {
        /// Why.
        reason: String,
        /// The leader's id and address, when known.
        leader: Option<(NodeId, String)>,
    },
    /// A limit was hit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// What the request asks for would exceed a size limit (a token longer
    /// than verifiers accept): `RESOURCE_EXHAUSTED` over gRPC like any
    /// limit, but the request's doing, so no retry helps (HTTP 400, not
    /// 429 `slow_down`).
    #[error("{0}")]
    TooLarge(String),
    /// A per-caller rate limit refused the call; retrying after
    /// `retry_after` can succeed.
    #[error("rate limit for {class} calls exceeded; retry in {} ms", retry_after_ms(*retry_after))]
    RateLimited {
        /// The RPC class whose limit was hit (`issue`, `revoke`, ...).
        class: &'static str,
        /// Until the caller's bucket has a token again.
        retry_after: std::time::Duration,
    },
    /// A bounded wait ran out.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The request is well-formed but the system is not in a state where
    /// it can be carried out (the message says what to do first).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        use TokenError as T;
        let msg = e.to_string();
        match e {
            // The presented token or credential is not acceptable.
            T::TooLarge
            | T::Malformed(_)
            | T::ForbiddenHeader(_)
            | T::CriticalHeader
            | T::WrongType
            | T::UnknownKey(_)
            | T::AlgorithmMismatch
            | T::BadSignature
            | T::UnsupportedAlgorithm(_)
            | T::BadClaims(_)
            | T::WrongIssuer
            | T::WrongAudience
            | T::Expired
            | T::NotYetValid
            | T::IssuedInFuture
            | T::ChainTooLong
            | T::SubjectExpired
            | T::Unbound
            | T::BindingMismatch
            | T::ActorNotCaller => Self::Unauthenticated(msg),
            // A rule of exchange said no.
            T::MayActViolated | T::ScopeWidening | T::NoScopeGranted | T::DepthExceeded => {
                Self::PermissionDenied(msg)
            }
            // The request itself is wrong.
            T::NoScopeRequested
            | T::InvalidScope
            | T::NoAudience
            | T::InvalidAudience
            | T::BadLifetime => Self::InvalidArgument(msg),
            T::InvalidKey(_) | T::Crypto(_) => Self::Internal(msg),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::NoActiveKey => Self::Unavailable {
                reason: "no active signing key".into(),
                leader: None,
            },
            // A node without the KEK a key needs cannot sign or re-seal;
            // another node (with the right configuration) can.
            e @ KeyError::Unseal { .. } => Self::Unavailable {
                reason: e.to_string(),
                leader: None,
            },
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Parse(_) | PolicyError::Invalid(_) => Self::InvalidArgument(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

type ClientWriteRaftError = openraft::error::RaftError<
    NodeId,
    openraft::error::ClientWriteError<NodeId, crate::raft::NodeInfo>,
>;

impl From<ClientWriteRaftError> for ApiError {
    fn from(e: ClientWriteRaftError) -> Self {
        use openraft::error::{ClientWriteError, RaftError};
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Self::Unavailable {
                reason: "this node is not the leader".into(),
                leader: f.leader_id.zip(f.leader_node.map(|n| n.api_addr)),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                Self::InvalidArgument(format!("membership change: {c}"))
            }
            RaftError::Fatal(f) => Self::Unavailable {
                reason: format!("raft stopped: {f}"),
                leader: None,
            },
        }
    }
}

/// A retry hint in whole milliseconds, rounded up (a hint of 0 would invite
/// a retry that is refused again).
fn retry_after_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::Unavailable { reason, leader } => match leader {
                Some((id, addr)) => {
                    let mut s = Status::new(
                        Code::Unavailable,
                        format!("{reason}; leader is node {id} at {addr}"),
                    );
                    if let Ok(v) = addr.parse() {
                        s.metadata_mut().insert(LEADER_METADATA, v);
                    }
                    s
                }
                None => Status::unavailable(reason),
            },
            ApiError::ResourceExhausted(m) | ApiError::TooLarge(m) => Status::resource_exhausted(m),
            e @ ApiError::RateLimited { retry_after, .. } => {
                let mut s = Status::resource_exhausted(e.to_string());
                s.metadata_mut().insert(
                    crate::api::limits::RETRY_AFTER_METADATA,
                    retry_after_ms(retry_after).into(),
                );
                s
            }
            ApiError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::Internal(m) => Status::internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: impl Into<ApiError>) -> Code {
        Status::from(e.into()).code()
    }

    #[test]
    fn table_of_codes() {
        assert_eq!(
            code(ApiError::InvalidArgument("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            code(ApiError::Unauthenticated("x".into())),
            Code::Unauthenticated
        );
        assert_eq!(
            code(ApiError::FailedPrecondition("x".into())),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(ApiError::PermissionDenied("x".into())),
            Code::PermissionDenied
        );
        assert_eq!(
            code(ApiError::ResourceExhausted("x".into())),
            Code::ResourceExhausted
        );
        assert_eq!(
            code(ApiError::TooLarge("x".into())),
            Code::ResourceExhausted
        );
        assert_eq!(
            code(ApiError::DeadlineExceeded("x".into())),
            Code::DeadlineExceeded
        );
        assert_eq!(code(ApiError::Internal("x".into())), Code::Internal);
        assert_eq!(
            code(ApiError::RateLimited {
                class: "issue",
                retry_after: std::time::Duration::from_millis(5)
            }),
            Code::ResourceExhausted
        );
        assert_eq!(
            code(ApiError::Unavailable {
                reason: "x".into(),
                leader: None
            }),
            Code::Unavailable
        );
    }

    #[test]
    fn unavailable_names_the_leader() {
        let s = Status::from(ApiError::Unavailable {
            reason: "not leader".into(),
            leader: Some((2, "10.0.0.2:7443".into())),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("node 2 at 10.0.0.2:7443"));
        assert_eq!(s.metadata().get(LEADER_METADATA).unwrap(), "10.0.0.2:7443");
    }

    #[test]
    fn rate_limited_carries_a_retry_hint() {
        let s = Status::from(ApiError::RateLimited {
            class: "revoke",
            retry_after: std::time::Duration::from_micros(2_001),
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.metadata()
                .get(crate::api::limits::RETRY_AFTER_METADATA)
                .unwrap(),
            "3"
        );
        assert_eq!(
            s.message(),
            "rate limit for revoke calls exceeded; retry in 3 ms"
        );
    }

    #[test]
    fn token_errors_by_family() {
        assert_eq!(code(TokenError::BadSignature), Code::Unauthenticated);
        assert_eq!(code(TokenError::Expired), Code::Unauthenticated);
        assert_eq!(code(TokenError::TooLarge), Code::Unauthenticated);
        assert_eq!(
            code(TokenError::UnknownKey("k".into())),
            Code::Unauthenticated
        );
        assert_eq!(code(TokenError::BindingMismatch), Code::Unauthenticated);
        assert_eq!(code(TokenError::ActorNotCaller), Code::Unauthenticated);
        assert_eq!(code(TokenError::ScopeWidening), Code::PermissionDenied);
        assert_eq!(code(TokenError::MayActViolated), Code::PermissionDenied);
        assert_eq!(code(TokenError::DepthExceeded), Code::PermissionDenied);
        assert_eq!(code(TokenError::NoScopeGranted), Code::PermissionDenied);
        assert_eq!(code(TokenError::NoScopeRequested), Code::InvalidArgument);
        assert_eq!(code(TokenError::NoAudience), Code::InvalidArgument);
        assert_eq!(code(TokenError::Crypto("x")), Code::Internal);
    }

    #[test]
    fn malformed_requests_and_field_limits_are_invalid_argument() {
        use crate::api::validate;
        use crate::pb;
        let too_many = pb::IssueTokenRequest {
            audience: vec!["a".into()],
            scope: (0..100_000).map(|i| i.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            code(validate::issue(too_many, 3600).unwrap_err()),
            Code::InvalidArgument
        );
        let too_long = pb::IssueTokenRequest {
            audience: vec!["a".into()],
            scope: vec!["s".into()],
            lifetime_seconds: 3601,
            ..Default::default()
        };
        assert_eq!(
            code(validate::issue(too_long, 3600).unwrap_err()),
            Code::InvalidArgument
        );
        // RFC 8693: subject_token_type is required.
        let untyped = pb::ExchangeTokenRequest {
            subject_token: "t".into(),
            ..Default::default()
        };
        assert_eq!(
            code(validate::exchange(untyped, 3600).unwrap_err()),
            Code::InvalidArgument
        );
        assert_eq!(
            code(validate::revoke(pb::RevokeRequest { target: None }).unwrap_err()),
            Code::InvalidArgument
        );
        assert_eq!(code(TokenError::BadLifetime), Code::InvalidArgument);
        // Oversized messages (api::message_limit) and undecodable protobuf
        // (pb_codec) are answered before a handler runs; their codes are
        // tested there and end to end (tests/it/t25_hostile.rs).
    }

    #[test]
    fn other_layers() {
        assert_eq!(code(KeyError::NoActiveKey), Code::Unavailable);
        assert_eq!(code(PolicyError::Parse("x".into())), Code::InvalidArgument);
        assert_eq!(code(PolicyError::Internal("x".into())), Code::Internal);
    }
}
