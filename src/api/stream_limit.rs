//! The bound on long-lived streams: `WatchRevocations`, and the streams of
//! the standard services that never end by themselves (health `Watch`,
//! reflection), each have a node-wide count and a per-identity share; the
//! standard services' pool is a tenth of the subscribers'
//! ([`super::PROBE_STREAM_SHARE`]), apart, so that they cannot crowd out
//! revocation subscribers.
//!
//! Health and reflection are not rate limited (probes must always get an
//! answer), and before 2026-12-01 their streams were bounded by nothing:
//! one caller could hold a `Health/Watch` stream per HTTP/2 stream slot of
//! every connection it may open (~6 KiB of node memory each, 120 MB
//! measured for 20,000). [`StreamLimitLayer`] takes a slot for each such
//! stream before the service sees it, and its response body gives the slot
//! back when the stream ends. `Health/Check`, what probes call, is unary
//! and not counted.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, Either};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use super::limits::{WatchSlot, WatchSlots};

/// The gRPC paths of streams that stay open until the caller leaves, other
/// than `WatchRevocations` (which takes its slot in its handler, after
/// its policy check).
pub const LONG_LIVED_PATHS: [&str; 3] = [
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The node's long-lived stream slots: at most `max_streams` in all, at
/// most the per-identity share of them for one caller.
#[derive(Debug)]
pub struct StreamLimits {
    permits: Arc<Semaphore>,
    slots: Arc<WatchSlots>,
    max_streams: usize,
}

/// One stream's slots; given back when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    _permit: OwnedSemaphorePermit,
    _slot: WatchSlot,
}

impl StreamLimits {
    /// At most `max_streams` streams on the node, `per_identity` of them
    /// for one caller.
    pub fn new(max_streams: usize, per_identity: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max_streams)),
            slots: WatchSlots::new(per_identity),
            max_streams,
        })
    }

    /// Takes a slot for `caller`, or refuses with `RESOURCE_EXHAUSTED`.
    pub fn acquire(&self, caller: &str) -> Result<StreamSlot, ApiError> {
        let slot = self.slots.acquire(caller)?;
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            ApiError::ResourceExhausted(format!(
                "this node serves at most {} watchers; try another node",
                self.max_streams
            ))
        })?;
        Ok(StreamSlot {
            _permit: permit,
            _slot: slot,
        })
    }

    /// Slots `caller` holds now.
    pub fn held(&self, caller: &str) -> usize {
        self.slots.held(caller)
    }
}

/// The tower layer that takes a [`StreamSlot`] for every call to one of
/// [`LONG_LIVED_PATHS`].
#[derive(Debug, Clone)]
pub struct StreamLimitLayer {
    limits: Arc<StreamLimits>,
}

impl StreamLimitLayer {
    /// A layer taking slots from `limits`.
    pub fn new(limits: Arc<StreamLimits>) -> Self {
        Self { limits }
    }
}

impl<S> tower_layer::Layer<S> for StreamLimitLayer {
    type Service = StreamLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamLimited {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// A service behind a [`StreamLimitLayer`].
#[derive(Debug, Clone)]
pub struct StreamLimited<S> {
    inner: S,
    limits: Arc<StreamLimits>,
}

impl<S, B> tower_service::Service<http::Request<B>> for StreamLimited<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    // Only the long-lived paths pay for a boxed future; every other call
    // goes through as it is.
    type Future = Either<S::Future, BoxFuture<'static, Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !LONG_LIVED_PATHS.contains(&req.uri().path()) {
            return Either::Left(self.inner.call(req));
        }
        // A connection without an identity shares one caller's share.
        let caller = super::rate_layer::caller_of(&mut req).unwrap_or_default();
        let slot = match self.limits.acquire(&caller) {
            Ok(slot) => slot,
            Err(e) => {
                let status = tonic::Status::from(e);
                return Either::Right(Box::pin(std::future::ready(Ok(status.into_http()))));
            }
        };
        let call = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let resp = call.await?;
            Ok(resp.map(|body| tonic::body::Body::new(Holding { body, _slot: slot })))
        }))
    }
}

/// A response body that holds its stream's slot until it is dropped.
struct Holding {
    body: tonic::body::Body,
    _slot: StreamSlot,
}

impl http_body::Body for Holding {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded_per_identity_and_per_node_and_given_back() {
        let limits = StreamLimits::new(3, 2);
        let a1 = limits.acquire("a").unwrap();
        let _a2 = limits.acquire("a").unwrap();
        let e = limits.acquire("a").unwrap_err();
        assert!(matches!(e, ApiError::ResourceExhausted(_)), "{e:?}");
        let _b1 = limits.acquire("b").unwrap();
        let e = limits.acquire("c").unwrap_err();
        assert!(e.to_string().contains("at most 3"), "{e}");
        assert_eq!(limits.held("c"), 0, "a refused slot is not held");
        drop(a1);
        let _c1 = limits.acquire("c").unwrap();
        assert_eq!(limits.held("a"), 1);
    }
}
