//! The deadline of a gRPC call: the caller's `grpc-timeout`, capped by the
//! node's own limit, answered with `DEADLINE_EXCEEDED` when it passes.
//!
//! tonic's server timeout (`Server::timeout`) answers an expired call with
//! `CANCELLED` ("Timeout expired"): a code the API's error table does not
//! list, and the one the metrics count as "the client left". This layer
//! replaces it, so a call that ran out of time says so with gRPC's code for
//! it, the same code the handlers' own bounded waits answer (a little
//! before the caller's deadline, so that the status arrives before the
//! caller's own timer gives up with `CANCELLED`). It bounds the
//! time until the response starts (a stream's headers), as tonic's did;
//! streams that stay open (`WatchRevocations`) are not cut.

use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;

/// The header a gRPC client states its deadline in.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// How much earlier than the caller's deadline the node answers (at most a
/// tenth of it): time for the status to reach the caller.
const EARLY_BY: Duration = Duration::from_millis(20);

/// The tower layer bounding every call by `min(grpc-timeout, cap)`.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    cap: Duration,
}

impl DeadlineLayer {
    /// Calls without a `grpc-timeout`, or with a longer one, get `cap`.
    pub fn new(cap: Duration) -> Self {
        Self { cap }
    }
}

impl<S> tower_layer::Layer<S> for DeadlineLayer {
    type Service = Deadlined<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadlined {
            inner,
            cap: self.cap,
        }
    }
}

/// A service behind a [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadlined<S> {
    inner: S,
    cap: Duration,
}

impl<S, B> tower_service::Service<http::Request<B>> for Deadlined<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let asked = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        // Answer a little before the caller's deadline: tonic's own
        // `grpc-timeout` handling sits outside every layer and would
        // answer `CANCELLED` at the deadline itself, and a caller's timer
        // fires then too; the status must reach it first.
        let asked = asked.map(|t| t.saturating_sub((t / 10).min(EARLY_BY)));
        let limit = asked.map_or(self.cap, |t| t.min(self.cap));
        // Anchored now, as tonic's timer is: the future may first be polled
        // later, on a busy node.
        let deadline = tokio::time::Instant::now() + limit;
        let call = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(result) => result,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the call's deadline ({} ms{}) passed before it was answered",
                    limit.as_millis(),
                    if asked.is_some_and(|t| t <= limit) {
                        ", the caller's grpc-timeout"
                    } else {
                        ", this node's limit"
                    }
                ))
                .into_http()),
            }
        })
    }
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`). Anything else is ignored (the cap applies), as
/// gRPC's own servers do.
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let unit_at = v.len().checked_sub(1)?;
    if !v.is_char_boundary(unit_at) {
        return None;
    }
    let (digits, unit) = v.split_at(unit_at);
    // A leading `+` is outside the spec but tonic's own parser takes it:
    // take it too, or tonic's timer would answer `CANCELLED` for it.
    let digits = digits.strip_prefix('+').unwrap_or(digits);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_tonics_own_parser_does() {
        assert_eq!(parse_grpc_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5M"), Some(Duration::from_secs(300)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("+5S"), Some(Duration::from_secs(5)));
        for bad in [
            "",
            "m",
            "123456789m",
            "12x",
            "-1S",
            "1.5S",
            "1 S",
            "€",
            "+m",
            "++5S",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    /// The deadline runs from the call, not from the first poll: hyper
    /// polls the call's future on a task of its own, possibly late on a
    /// busy node, and tonic's own timer (outside every layer, answering
    /// `CANCELLED`) started at the call.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_runs_from_the_call_not_from_the_first_poll() {
        use tower_service::Service as _;
        let slow = tower_service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut svc = tower_layer::Layer::layer(&DeadlineLayer::new(Duration::from_secs(30)), slow);
        let req = http::Request::builder()
            .header(GRPC_TIMEOUT, "1000m")
            .body(())
            .unwrap();
        let start = tokio::time::Instant::now();
        let fut = svc.call(req);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resp = fut.await.unwrap();
        let status = tonic::Status::from_header_map(resp.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        // 1 s less the early margin, from the call.
        assert_eq!(start.elapsed(), Duration::from_millis(980));
    }

    /// A `tower::service_fn` without the dependency.
    fn tower_service_fn<F, Fut>(f: F) -> ServiceFn<F>
    where
        F: FnMut(http::Request<()>) -> Fut,
    {
        ServiceFn(f)
    }

    #[derive(Clone)]
    struct ServiceFn<F>(F);

    impl<F, Fut> tower_service::Service<http::Request<()>> for ServiceFn<F>
    where
        F: FnMut(http::Request<()>) -> Fut,
        Fut: std::future::Future<
                Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
            > + Send
            + 'static,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = Fut;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<()>) -> Fut {
            (self.0)(req)
        }
    }
}
