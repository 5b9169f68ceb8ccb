//! The Raft listener's gate: a call from anything but a cluster member is
//! refused on its headers, before its body is read.
//!
//! The listener shares the API's mTLS configuration, so every holder of a
//! certificate of the cluster CA (each service has one) completes the
//! handshake. tonic reads a unary call's whole message (up to the Raft
//! transport's 64 MiB) before the handler runs, so a check in the handler
//! alone let any service make a node hold the bodies of unfinished calls
//! (found by review: 206 MiB for four calls on one connection). This layer
//! runs rules 1 and 2 of [`super::service`] (a node identity of the trust
//! domain, in the current membership) on the request's certificate first;
//! the handler still checks all three rules, and the sender of each
//! message.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;

use super::TypeConfig;

/// Wraps the Raft service in [`MembersOnly`].
#[derive(Clone)]
pub struct MembersOnlyLayer {
    raft: openraft::Raft<TypeConfig>,
    trust_domain: Arc<str>,
}

impl MembersOnlyLayer {
    /// Admits members of `raft`'s membership in `trust_domain`.
    pub fn new(raft: openraft::Raft<TypeConfig>, trust_domain: &str) -> Self {
        Self {
            raft,
            trust_domain: trust_domain.into(),
        }
    }
}

impl<S> tower_layer::Layer<S> for MembersOnlyLayer {
    type Service = MembersOnly<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MembersOnly {
            inner,
            gate: self.clone(),
        }
    }
}

/// The Raft service behind the members-only check.
#[derive(Clone)]
pub struct MembersOnly<S> {
    inner: S,
    gate: MembersOnlyLayer,
}

impl<S, B> tower_service::Service<http::Request<B>> for MembersOnly<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, std::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let admitted = match crate::tls::request_caller(&mut req) {
            Some(peer) => {
                super::service::member(&self.gate.raft, &self.gate.trust_domain, &peer).map(|_| ())
            }
            None => Err(tonic::Status::unauthenticated(
                "no usable client certificate: the Raft service is for cluster members only",
            )),
        };
        match admitted {
            Ok(()) => Either::Left(self.inner.call(req)),
            // Answered at once; the body is dropped unread.
            Err(status) => Either::Right(std::future::ready(Ok(status.into_http()))),
        }
    }
}
