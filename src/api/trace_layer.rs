//! The tower layer in front of the gRPC routes that opens each request's
//! span and sets its trace context (see [`crate::trace`]).
//!
//! The span carries the method, the caller identity (from the client
//! certificate), the trace id, the node and the node's applied revision
//! when the request arrived; the handlers' own spans add the `jti`s. No
//! field ever holds a token: the layer sees only the path and the headers'
//! `traceparent`.

use std::task::{Context, Poll};

use tracing::instrument::Instrumented;
use tracing::Instrument as _;

use crate::store::StateView;
use crate::trace::{TraceContext, TRACEPARENT};

/// Opens a request span and scopes the request's trace context.
#[derive(Clone)]
pub struct TraceLayer {
    node: u64,
    state: StateView,
}

impl TraceLayer {
    /// A layer for node `node`, reporting the revision applied in `state`.
    pub fn new(node: u64, state: StateView) -> Self {
        Self { node, state }
    }
}

impl<S> tower_layer::Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Traced {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service behind a [`TraceLayer`].
#[derive(Clone)]
pub struct Traced<S> {
    inner: S,
    layer: TraceLayer,
}

impl<S, B> tower_service::Service<http::Request<B>> for Traced<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<tokio::task::futures::TaskLocalFuture<TraceContext, S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // A caller's context continues (as a new hop); a missing or
        // malformed one starts a trace here.
        let ctx = req
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse)
            .map(|c| c.child())
            .unwrap_or_else(TraceContext::generate);
        // Every field is given when the span opens: the log formatter
        // formats a span's fields then, and again at every `record`.
        // Parsing the certificate and formatting ids costs a little on
        // every call: only when such a span is logged at all.
        let span = if tracing::span_enabled!(tracing::Level::INFO) {
            let caller = super::rate_layer::caller_of(&mut req);
            tracing::info_span!(
                "request",
                method = req.uri().path(),
                caller = caller.as_deref().unwrap_or("-"),
                trace_id = ctx.trace_id().as_str(),
                node = self.layer.node,
                revision = self.layer.state.revision(),
            )
        } else {
            tracing::Span::none()
        };
        crate::trace::scope(ctx, self.inner.call(req)).instrument(span)
    }
}
