//! The tower layer in front of the gRPC routes that charges each call to
//! its caller's bucket in a [`RateLimiter`] and answers a refusal itself,
//! before the request body is read.

use std::sync::Arc;
use std::task::{Context, Poll};

use super::limits::{RateLimiter, RpcClass};

/// Called with the caller and class of every refusal (metrics, anomaly
/// signal).
pub type RefusalHook = Arc<dyn Fn(&str, RpcClass) + Send + Sync>;

/// The tower layer that applies a [`RateLimiter`] to gRPC routes, keyed by
/// the caller identity of the connection's client certificate.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
    on_refusal: Option<RefusalHook>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// A layer charging calls to `limiter`.
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        Self {
            limiter,
            on_refusal: None,
        }
    }

    /// Calls `hook` with the caller and class of every refusal.
    pub fn with_refusal_hook(mut self, hook: RefusalHook) -> Self {
        self.on_refusal = Some(hook);
        self
    }
}

impl<S> tower_layer::Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limiter: self.limiter.clone(),
            on_refusal: self.on_refusal.clone(),
        }
    }
}

/// A service behind a [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimited<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
    on_refusal: Option<RefusalHook>,
}

impl<S> std::fmt::Debug for RateLimited<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimited")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

/// The caller identity of the connection a request came on, if its client
/// certificate has one (otherwise the handler refuses the call anyway).
/// Parsed once per request (see [`crate::tls::request_caller`]).
pub(super) fn caller_of<B>(req: &mut http::Request<B>) -> Option<String> {
    crate::tls::request_caller(req).map(|p| p.id)
}

impl<S, B> tower_service::Service<http::Request<B>> for RateLimited<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures_util::future::Either<std::future::Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        use futures_util::future::Either;
        if let Some(class) = RpcClass::of_path(req.uri().path()) {
            if let Some(caller) = caller_of(&mut req) {
                if let Err(e) = self.limiter.check(&caller, class) {
                    if let Some(hook) = &self.on_refusal {
                        hook(&caller, class);
                    }
                    let status = tonic::Status::from(e);
                    return Either::Left(std::future::ready(Ok(status.into_http())));
                }
            }
        }
        Either::Right(self.inner.call(req))
    }
}
