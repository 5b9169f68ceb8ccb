//! The client layer's one error type: connecting, calling the cluster and
//! waiting on it. The gRPC code of a failed call is kept as it came, so that
//! callers can tell "policy said no" (`PERMISSION_DENIED`) from "the cluster
//! is unreachable" (`UNAVAILABLE`).

use std::time::Duration;

use tonic::Code;

/// Errors of the client library.
///
/// Messages never contain a token: at most an endpoint, a file path, a gRPC
/// code and the server's message (which never quotes tokens either).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A certificate or key file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoint or TLS setup is invalid, or the connection failed.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A node answered a call with an error status (or the call failed in
    /// transport, which tonic reports as a status too).
    #[error("{endpoint} answered {code:?}: {message}")]
    Status {
        /// The node that answered (or could not be reached).
        endpoint: String,
        /// The gRPC code, as received.
        code: Code,
        /// The status message, as received.
        message: String,
        /// The server's hint of when a retry can succeed
        /// ([`tessera_proto::RETRY_AFTER_METADATA`]), if it gave one.
        retry_after: Option<Duration>,
    },
    /// The configuration names no endpoint.
    #[error("no endpoint configured")]
    NoEndpoints,
    /// The configuration is unusable; the reason names the field.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// A bounded wait ran out.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long.
        waited: Duration,
    },
    /// The background task (of a [`super::RevocationCache`]) has ended.
    #[error("the client has been shut down")]
    Closed,
    /// No usable verification keys are loaded (none yet, or the loaded ones
    /// predate the revocation cache's last snapshot) and fetching them is
    /// rate limited (the last attempt failed recently).
    #[error("no verification keys loaded yet")]
    NoKeys,
    /// A node answered something the client cannot use (an unreadable JWKS
    /// or token); the reason never quotes a token.
    #[error("unusable response: {0}")]
    BadResponse(String),
}

impl ClientError {
    /// A copy of a node's answer (`Status`), for callers that share one
    /// failed attempt; `None` for the other kinds, which hold values that
    /// cannot be copied.
    pub(crate) fn shared_copy(&self) -> Option<ClientError> {
        match self {
            ClientError::Status {
                endpoint,
                code,
                message,
                retry_after,
            } => Some(ClientError::Status {
                endpoint: endpoint.clone(),
                code: *code,
                message: message.clone(),
                retry_after: *retry_after,
            }),
            _ => None,
        }
    }

    /// The gRPC code of a failed call, as the server (or tonic's transport)
    /// reported it; `None` for errors that are not a call's status.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// When the server said a retry can succeed (a rate limit's refusal):
    /// `None` when it gave no hint.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn status(endpoint: &str, status: &tonic::Status) -> Self {
        ClientError::Status {
            endpoint: endpoint.to_string(),
            code: status.code(),
            message: status.message().to_string(),
            retry_after: retry_hint(status),
        }
    }
}

/// Longest retry hint taken from a server: a larger (or garbled) value is
/// capped, so that a bad hint cannot park a client for long.
pub const MAX_RETRY_HINT: Duration = Duration::from_secs(60);

/// The retry hint of a status, capped at [`MAX_RETRY_HINT`].
fn retry_hint(status: &tonic::Status) -> Option<Duration> {
    let ms: u64 = status
        .metadata()
        .get(tessera_proto::RETRY_AFTER_METADATA)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms).min(MAX_RETRY_HINT))
}

/// Whether a failed call is worth repeating on another node: the node is
/// unreachable, overloaded in transport, not the leader, or timed out. A
/// refusal (`PERMISSION_DENIED`, `INVALID_ARGUMENT`, `UNAUTHENTICATED`, ...)
/// would be the same everywhere.
pub(crate) fn is_failover(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_the_code_and_message() {
        let e = ClientError::status("n1:1", &tonic::Status::permission_denied("policy: issue"));
        assert_eq!(e.code(), Some(Code::PermissionDenied));
        assert_eq!(
            e.to_string(),
            "n1:1 answered PermissionDenied: policy: issue"
        );
        assert_eq!(ClientError::NoEndpoints.code(), None);
    }

    #[test]
    fn status_keeps_the_retry_hint_capped() {
        let mut s = tonic::Status::resource_exhausted("rate limit");
        assert_eq!(ClientError::status("n", &s).retry_after(), None);
        s.metadata_mut()
            .insert(tessera_proto::RETRY_AFTER_METADATA, "250".parse().unwrap());
        assert_eq!(
            ClientError::status("n", &s).retry_after(),
            Some(Duration::from_millis(250))
        );
        s.metadata_mut().insert(
            tessera_proto::RETRY_AFTER_METADATA,
            "99999999".parse().unwrap(),
        );
        assert_eq!(
            ClientError::status("n", &s).retry_after(),
            Some(MAX_RETRY_HINT)
        );
        s.metadata_mut()
            .insert(tessera_proto::RETRY_AFTER_METADATA, "soon".parse().unwrap());
        assert_eq!(ClientError::status("n", &s).retry_after(), None);
        assert_eq!(ClientError::NoEndpoints.retry_after(), None);
    }

    #[test]
    fn failover_codes() {
        for c in [
            Code::Unavailable,
            Code::Unknown,
            Code::Cancelled,
            Code::DeadlineExceeded,
        ] {
            assert!(is_failover(c), "{c:?}");
        }
        for c in [
            Code::Ok,
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::Internal,
            Code::Aborted,
            Code::NotFound,
        ] {
            assert!(!is_failover(c), "{c:?}");
        }
    }
}
