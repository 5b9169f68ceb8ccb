//! The tower layer that counts every gRPC call of the public listener by
//! method and final status code, and observes its latency
//! (`tessera_rpc_requests_total`, `tessera_rpc_duration_seconds`).
//!
//! The final status of a gRPC call is in the response headers when the call
//! failed before any message (a "trailers-only" response: refusals by the
//! rate and size layers, most handler errors), and otherwise in the trailers
//! at the end of the body. The layer looks at the headers and, when they
//! hold no status, wraps the body and reads the trailers as they pass. A
//! body dropped before its trailers (the client went away, or cancelled a
//! stream) counts as `CANCELLED`.
//!
//! Streams: a call is counted once, when its final status is known, so a
//! revocation watch is counted when it ends, with the status it ended with
//! (`ABORTED` for a slow subscriber cut off, `CANCELLED` when the client
//! left). The latency of the long-lived streams ([`LONG_LIVED`]) is the time
//! to the response headers, not the life of the stream, so that they do not
//! swamp the histogram; every other call is timed to its final status.
//!
//! Method labels are the methods this server implements, read once from the
//! file descriptor sets; any other path (a probe for methods that do not
//! exist) is `other`, so the label set is bounded.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body as HttpBody, Frame};
use tonic::body::Body;

use crate::metrics::{Metrics, OTHER};

/// Methods whose calls are long-lived streams: their latency is the time
/// to the response headers.
pub const LONG_LIVED: [&str; 2] = [
    "tessera.v1.RevocationService/WatchRevocations",
    "grpc.health.v1.Health/Watch",
];

/// Methods served besides those of the `tessera.v1` descriptor set.
const STANDARD: [&str; 4] = [
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

fn known_methods() -> &'static HashSet<String> {
    static KNOWN: OnceLock<HashSet<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        use prost::Message as _;
        let mut known: HashSet<String> = STANDARD.iter().map(|s| s.to_string()).collect();
        // Generated at build time from our own protos: it decodes.
        if let Ok(set) = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET) {
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        known.insert(format!("{package}.{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        known
    })
}

/// The method label of a request path: the method without its leading
/// slash if this server implements it, else `other`.
pub fn method_label(path: &str) -> &'static str {
    let name = path.strip_prefix('/').unwrap_or(path);
    known_methods()
        .get(name)
        .map(String::as_str)
        .unwrap_or(OTHER)
}

/// The canonical name of a gRPC status code (as in the gRPC spec).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<&'static str> {
    let v = headers.get("grpc-status")?;
    let n: i32 = v.to_str().ok()?.trim().parse().ok()?;
    Some(code_name(tonic::Code::from_i32(n)))
}

/// Counts and times the gRPC calls of the services it wraps (see the
/// module docs). Installed outermost, so that it sees the refusals of the
/// size and rate layers too.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    metrics: Metrics,
}

impl RpcMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] makes.
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Metrics,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower_service::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let start = Instant::now();
        let method = method_label(req.uri().path());
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            let long_lived = LONG_LIVED.contains(&method);
            if long_lived {
                metrics.rpc_latency(method, start.elapsed());
            }
            if let Some(code) = status_in(res.headers()) {
                // Trailers-only: the call is over.
                let latency = (!long_lived).then(|| start.elapsed());
                metrics.rpc(method, code, latency);
                return Ok(res);
            }
            let call = Call {
                metrics,
                method,
                start: (!long_lived).then_some(start),
                done: false,
            };
            Ok(res.map(|body| Body::new(CountedBody { inner: body, call })))
        })
    }
}

/// One call whose final status is still to come.
struct Call {
    metrics: Metrics,
    method: &'static str,
    /// When the call started, if its latency is still to be observed.
    start: Option<Instant>,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: &'static str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let latency = self.start.map(|s| s.elapsed());
        self.metrics.rpc(self.method, code, latency);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped before the trailers: the client went away.
        self.finish("CANCELLED");
    }
}

/// A response body that records its call's status from the trailers.
struct CountedBody {
    inner: Body,
    call: Call,
}

impl HttpBody for CountedBody {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_in(trailers).unwrap_or("UNKNOWN");
                    self.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(s))) => self.call.finish(code_name(s.code())),
            // The end without trailers: no status was sent.
            Poll::Ready(None) => self.call.finish("UNKNOWN"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_the_served_methods_or_other() {
        assert_eq!(
            method_label("/tessera.v1.TokenService/IssueToken"),
            "tessera.v1.TokenService/IssueToken"
        );
        assert_eq!(
            method_label("/tessera.v1.RevocationService/WatchRevocations"),
            LONG_LIVED[0]
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/tessera.v1.TokenService/Nope"), OTHER);
        assert_eq!(method_label("garbage"), OTHER);
        assert!(known_methods().contains("tessera.v1.AdminService/ClusterStatus"));
    }

    #[test]
    fn statuses_are_read_from_headers_by_canonical_name() {
        let mut h = http::HeaderMap::new();
        assert_eq!(status_in(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("7"));
        assert_eq!(status_in(&h), Some("PERMISSION_DENIED"));
        h.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert_eq!(status_in(&h), Some("OK"));
    }
}
