//! [`TokenLayer`]: attaches the right token to every outgoing request of a
//! caller, from a [`TokenSource`] (cached per audience and scopes, renewed
//! before expiry).
//!
//! The request's path picks the audience and scopes (longest matching
//! prefix, else the default). With a [`SubjectToken`] in the request's
//! extensions (the token an incoming request was authenticated with), that
//! token is exchanged for the audience (RFC 8693 delegation: the downstream
//! service sees who acts for whom); without one, the caller's own token for
//! the audience is used. A path with no target goes out untouched.
//!
//! When no token can be had, the request is not sent: the call fails with a
//! `tonic::Status` (boxed, so that a tonic client reports it as the call's
//! status) carrying the cluster's code (`PERMISSION_DENIED` when policy
//! refuses, `UNAVAILABLE` when the cluster is unreachable) and its retry
//! hint (`x-tessera-retry-after-ms`) when it gave one, so that a caller
//! that honours hints sees the cluster's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use tower_layer::Layer;
use tower_service::Service;

use super::auth::SubjectToken;
use crate::error::ClientError;
use crate::source::TokenSource;

/// Errors of a [`TokenService`]: the inner service's, or a boxed
/// `tonic::Status` when no token could be had.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a request goes: the audience and scopes of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    audience: String,
    scopes: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    source: Arc<TokenSource>,
    /// Longest prefix first.
    routes: Vec<(String, Target)>,
    default: Option<Target>,
}

impl Shared {
    fn target(&self, path: &str) -> Option<&Target> {
        self.routes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, t)| t)
            .or(self.default.as_ref())
    }

    async fn token(
        &self,
        target: &Target,
        subject: Option<&SubjectToken>,
    ) -> Result<String, ClientError> {
        let scopes: Vec<&str> = target.scopes.iter().map(String::as_str).collect();
        match subject {
            Some(SubjectToken(t)) => self.source.exchange(t, &target.audience, &scopes).await,
            None => self.source.token(&target.audience, &scopes).await,
        }
    }
}

/// A [`tower_layer::Layer`] for clients (a tonic `Channel`, a hyper
/// client) that attaches `authorization: Bearer …` with the token for each
/// request's audience. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct TokenLayer {
    shared: Arc<Shared>,
}

impl TokenLayer {
    /// Every request gets a token for `audience` with `scopes`, unless a
    /// [`route`](Self::route) says otherwise.
    pub fn new<S: Into<String>>(
        source: Arc<TokenSource>,
        audience: impl Into<String>,
        scopes: impl IntoIterator<Item = S>,
    ) -> Self {
        Self::routes_only(source).default_target(audience, scopes)
    }

    /// No default: only paths given by [`route`](Self::route) get a token.
    pub fn routes_only(source: Arc<TokenSource>) -> Self {
        Self {
            shared: Arc::new(Shared {
                source,
                routes: Vec::new(),
                default: None,
            }),
        }
    }

    /// Requests whose path starts with `prefix` (e.g. a gRPC service,
    /// `/orders.v1.Orders/`) get a token for `audience` with `scopes`.
    pub fn route<S: Into<String>>(
        self,
        prefix: impl Into<String>,
        audience: impl Into<String>,
        scopes: impl IntoIterator<Item = S>,
    ) -> Self {
        let prefix = prefix.into();
        let target = target(audience, scopes);
        self.edit(|s| {
            s.routes.retain(|(p, _)| *p != prefix);
            s.routes.push((prefix, target));
            s.routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        })
    }

    fn default_target<S: Into<String>>(
        self,
        audience: impl Into<String>,
        scopes: impl IntoIterator<Item = S>,
    ) -> Self {
        let target = target(audience, scopes);
        self.edit(|s| s.default = Some(target))
    }

    /// Builder edits happen before the layer is shared.
    fn edit(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Arc::try_unwrap(self.shared).unwrap_or_else(|a| Shared {
            source: a.source.clone(),
            routes: a.routes.clone(),
            default: a.default.clone(),
        });
        f(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }
}

fn target<S: Into<String>>(
    audience: impl Into<String>,
    scopes: impl IntoIterator<Item = S>,
) -> Target {
    Target {
        audience: audience.into(),
        scopes: scopes.into_iter().map(Into::into).collect(),
    }
}

impl<S> Layer<S> for TokenLayer {
    type Service = TokenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of a [`TokenLayer`].
#[derive(Debug, Clone)]
pub struct TokenService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The status a caller sees when no token could be had for `audience`.
fn refused(audience: &str, e: &ClientError) -> tonic::Status {
    let msg = format!("no token for {audience}: {e}");
    let mut status = match e.code() {
        Some(code) if !crate::error::is_failover(code) => tonic::Status::new(code, msg),
        _ => tonic::Status::unavailable(msg),
    };
    if let Some(hint) = e.retry_after() {
        // Digits always make a valid value; the check only keeps a panic out.
        if let Ok(value) = hint.as_millis().to_string().parse() {
            status
                .metadata_mut()
                .insert(tessera_proto::RETRY_AFTER_METADATA, value);
        }
    }
    status
}

impl<S, B> Service<Request<B>> for TokenService<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone is not ready; the one polled ready sends this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            if let Some(target) = shared.target(req.uri().path()) {
                let subject = req.extensions_mut().remove::<SubjectToken>();
                let token = shared
                    .token(target, subject.as_ref())
                    .await
                    .map_err(|e| Box::new(refused(&target.audience, &e)) as BoxError)?;
                let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    Box::new(tonic::Status::internal(
                        "the cluster issued an unusable token",
                    )) as BoxError
                })?;
                // Kept out of HPACK's dynamic table and out of Debug output.
                value.set_sensitive(true);
                req.headers_mut().insert(AUTHORIZATION, value);
            }
            inner.call(req).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::TokenSourceConfig;
    use crate::testpki::TestPki;

    fn layer() -> (TestPki, TokenLayer) {
        let pki = TestPki::new();
        let source = TokenSource::new(TokenSourceConfig::new(
            vec!["127.0.0.1:1".into()],
            pki.client("frontend"),
        ))
        .unwrap();
        let l = TokenLayer::new(Arc::new(source), "spiffe://t/svc/default", ["d"])
            .route("/a.S/", "spiffe://t/svc/a", ["a:read"])
            .route("/a.S/Admin", "spiffe://t/svc/a-admin", ["a:admin"]);
        (pki, l)
    }

    #[test]
    fn paths_pick_their_audience() {
        let (_pki, l) = layer();
        let aud = |p: &str| l.shared.target(p).map(|t| t.audience.clone());
        assert_eq!(aud("/a.S/Get").as_deref(), Some("spiffe://t/svc/a"));
        assert_eq!(
            aud("/a.S/AdminX").as_deref(),
            Some("spiffe://t/svc/a-admin")
        );
        assert_eq!(aud("/b.T/Get").as_deref(), Some("spiffe://t/svc/default"));
        let only = TokenLayer::routes_only(l.shared.source.clone());
        assert_eq!(only.shared.target("/b.T/Get"), None);
    }

    #[test]
    fn refusals_keep_the_clusters_code() {
        let denied = ClientError::Status {
            endpoint: "n".into(),
            code: tonic::Code::PermissionDenied,
            message: "policy".into(),
            retry_after: None,
        };
        assert_eq!(refused("a", &denied).code(), tonic::Code::PermissionDenied);
        let down = ClientError::Status {
            endpoint: "n".into(),
            code: tonic::Code::Unknown,
            message: "transport".into(),
            retry_after: None,
        };
        assert_eq!(refused("a", &down).code(), tonic::Code::Unavailable);
        assert_eq!(
            refused("a", &ClientError::NoEndpoints).code(),
            tonic::Code::Unavailable
        );
    }

    /// The cluster's retry hint was dropped from the status: a caller that
    /// honours hints retried at once into the rate limit that refused it.
    #[test]
    fn a_refusal_dropped_the_clusters_retry_hint() {
        let hint = |s: &tonic::Status| {
            s.metadata()
                .get(tessera_proto::RETRY_AFTER_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let limited = ClientError::Status {
            endpoint: "n".into(),
            code: tonic::Code::ResourceExhausted,
            message: "rate limit".into(),
            retry_after: Some(std::time::Duration::from_millis(1_500)),
        };
        let s = refused("a", &limited);
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(hint(&s).as_deref(), Some("1500"));
        // As a tonic client reads it back.
        assert_eq!(
            ClientError::status("a", &s).retry_after(),
            Some(std::time::Duration::from_millis(1_500))
        );
        let busy = ClientError::Status {
            endpoint: "n".into(),
            code: tonic::Code::Unavailable,
            message: "overloaded".into(),
            retry_after: Some(std::time::Duration::from_millis(200)),
        };
        assert_eq!(hint(&refused("a", &busy)).as_deref(), Some("200"));
        let denied = ClientError::Status {
            endpoint: "n".into(),
            code: tonic::Code::PermissionDenied,
            message: "policy".into(),
            retry_after: None,
        };
        assert_eq!(hint(&refused("a", &denied)), None);
    }

    /// An unreachable cluster: the request is never sent and the caller
    /// gets `UNAVAILABLE` as a status a tonic client finds.
    #[tokio::test]
    async fn no_token_no_request() {
        let (_pki, l) = layer();
        let sent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = sent.clone();
        let inner = tower_service_fn(move |_req: Request<()>| {
            s2.store(true, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(()) }
        });
        let mut svc = l.layer(inner);
        let req = Request::builder().uri("/a.S/Get").body(()).unwrap();
        let err = svc.call(req).await.unwrap_err();
        let status = err.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status
            .message()
            .starts_with("no token for spiffe://t/svc/a"));
        assert!(!sent.load(std::sync::atomic::Ordering::SeqCst));
    }

    /// A minimal `service_fn` (tower's own is behind a feature we do not
    /// otherwise need).
    fn tower_service_fn<F, Fut>(f: F) -> FnService<F>
    where
        F: FnMut(Request<()>) -> Fut,
    {
        FnService(f)
    }

    #[derive(Clone)]
    struct FnService<F>(F);

    impl<F, Fut> Service<Request<()>> for FnService<F>
    where
        F: FnMut(Request<()>) -> Fut,
        Fut: Future<Output = Result<(), std::convert::Infallible>>,
    {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = Fut;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<()>) -> Fut {
            (self.0)(req)
        }
    }
}
