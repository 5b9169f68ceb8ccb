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
        // formats a span's fields then, and again at every `record`. The
        // values are computed only when the span is enabled (the macro
        // evaluates them then), so parsing the certificate and formatting
        // ids cost nothing when no one logs the span. The filter decides
        // on this very span, so name and field directives
        // (`[request]=debug`) still select it.
        let uri = req.uri().clone();
        let span = tracing::info_span!(
            "request",
            method = uri.path(),
            caller = super::rate_layer::caller_of(&mut req)
                .as_deref()
                .unwrap_or("-"),
            trace_id = ctx.trace_id().as_str(),
            node = self.layer.node,
            revision = self.layer.state.revision(),
        );
        crate::trace::scope(ctx, self.inner.call(req)).instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use tower_layer::Layer as _;
    use tower_service::Service as _;

    use super::*;

    /// Log output into memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// A handler that logs one line at `debug` while it runs.
    #[derive(Clone)]
    struct Logs;

    impl tower_service::Service<http::Request<()>> for Logs {
        type Response = ();
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<(), Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            Box::pin(async {
                tracing::debug!("inside the handler");
                Ok(())
            })
        }
    }

    /// Found by review: the layer asked whether some `info` span of its
    /// module would be enabled instead of building this one, so a filter
    /// that selects the request span by name (`warn,[request]=debug`, the
    /// way to follow requests without `info` everywhere) lost the span
    /// and every line logged inside it.
    #[test]
    fn a_filter_that_names_the_request_span_lost_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, _sm, state) = crate::store::open(dir.path()).unwrap();
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn,[request]=debug"))
            .with_writer(out.clone())
            .with_ansi(false)
            .finish();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let mut svc = TraceLayer::new(7, state).layer(Logs);
            let req = http::Request::builder()
                .uri("/tessera.v1.TokenService/Introspect")
                .body(())
                .unwrap();
            runtime.block_on(svc.call(req)).unwrap();
        });
        let out = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            out.contains(r#"request{method="/tessera.v1.TokenService/Introspect" caller="-""#),
            "{out}"
        );
        assert!(out.contains("node=7"), "{out}");
        assert!(out.contains("inside the handler"), "{out}");
    }
}
