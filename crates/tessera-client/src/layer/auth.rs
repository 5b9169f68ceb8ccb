//! [`AuthLayer`]: authenticates every request of a resource server with a
//! [`Verifier`] before the handler runs.
//!
//! For each request, in this order:
//!
//! 1. the path's [`Requirement`] from the [`Routes`] table; no rule:
//!    refused (`PERMISSION_DENIED` / 403); [`Requirement::Public`]: passed
//!    on untouched;
//! 2. the bearer token from the one `authorization` header (gRPC metadata
//!    is that header);
//! 3. the presenting certificate: a [`PeerCertificate`] extension if one
//!    was inserted (axum, hyper), else the TLS peer certificates that
//!    tonic's server puts into every request (`TlsConnectInfo`);
//! 4. [`Verifier::verify`]: signature, issuer, audience, times, binding to
//!    that certificate, revocations of the token and its ancestors, and the
//!    staleness of the revocation cache;
//! 5. every scope the route requires.
//!
//! A request that passes reaches the handler with the [`VerifiedToken`] and
//! the [`SubjectToken`] in its extensions (tonic copies them into
//! `tonic::Request::extensions()`).
//!
//! Refusals speak the caller's protocol: a gRPC request (`content-type:
//! application/grpc…`) gets a trailers-only status, anything else an HTTP
//! status with an RFC 6750 `WWW-Authenticate: Bearer` challenge:
//!
//! | cause | gRPC | HTTP |
//! |---|---|---|
//! | no token | `UNAUTHENTICATED` | 401, challenge without error |
//! | malformed `authorization` | `UNAUTHENTICATED` | 400 `invalid_request` |
//! | token refused by the verifier | `UNAUTHENTICATED` | 401 `invalid_token` |
//! | missing scope, or no rule for the path | `PERMISSION_DENIED` | 403 `insufficient_scope` |
//! | revocation data not synced or stale, keys unreachable | `UNAVAILABLE` | 503 |
//!
//! The last row is the resource server's own trouble, not the token's: the
//! verifier fails closed, and the caller may retry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower_layer::Layer;
use tower_service::Service;

use super::routes::{Requirement, Routes};
use crate::verifier::{VerifiedToken, Verifier, VerifyError};

/// The DER of the client certificate that presented a request, for servers
/// whose transport is not tonic's (axum, hyper): insert it into each
/// request's extensions before the [`AuthLayer`] runs. tonic servers need
/// not: the layer reads tonic's `TlsConnectInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate(pub Vec<u8>);

/// The bearer token a request was authenticated with, put into the
/// request's extensions by the [`AuthLayer`]. Copy it into an outgoing
/// request's extensions and the
/// [`TokenLayer`](super::TokenLayer) exchanges it (delegation) instead of
/// using the service's own token. Its `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectToken(pub String);

impl std::fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectToken(..)")
    }
}

/// Why the [`AuthLayer`] refused a request. Messages never quote a token.
#[derive(Debug)]
#[non_exhaustive]
pub enum Refusal {
    /// The path matches no rule of the [`Routes`] table.
    NoRoute,
    /// No `authorization` header.
    NoToken,
    /// More than one `authorization` header, another scheme than
    /// `Bearer`, or an empty or non-ASCII token.
    MalformedAuthorization,
    /// The [`Verifier`] refused the token.
    Invalid(VerifyError),
    /// The token lacks these scopes that the route requires.
    InsufficientScope(Vec<String>),
}

impl Refusal {
    /// The gRPC status a gRPC caller receives.
    pub fn status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            Refusal::NoRoute | Refusal::InsufficientScope(_) => {
                tonic::Status::permission_denied(msg)
            }
            Refusal::Invalid(e) if server_side(e) => tonic::Status::unavailable(msg),
            _ => tonic::Status::unauthenticated(msg),
        }
    }

    /// The HTTP status an HTTP caller receives.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Refusal::NoRoute | Refusal::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Refusal::MalformedAuthorization => StatusCode::BAD_REQUEST,
            Refusal::Invalid(e) if server_side(e) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The RFC 6750 §3 challenge for an HTTP caller; `None` when the
    /// refusal is not about the token (503).
    pub fn challenge(&self, realm: &str) -> Option<String> {
        let realm = quoted(realm);
        let desc = quoted(&self.to_string());
        Some(match self {
            Refusal::NoToken => format!("Bearer realm=\"{realm}\""),
            Refusal::MalformedAuthorization => format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{desc}\""
            ),
            Refusal::Invalid(e) if server_side(e) => return None,
            Refusal::Invalid(_) => format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{desc}\""
            ),
            Refusal::InsufficientScope(missing) => format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{}\"",
                quoted(&missing.join(" "))
            ),
            Refusal::NoRoute => format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{desc}\""
            ),
        })
    }

    /// The refusal as a response of the caller's protocol.
    fn into_response<B: Default>(self, grpc: bool, realm: &str) -> Response<B> {
        if grpc {
            return self.status().into_http();
        }
        let mut response = Response::new(B::default());
        *response.status_mut() = self.http_status();
        if let Some(v) = self
            .challenge(realm)
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            response.headers_mut().insert(WWW_AUTHENTICATE, v);
        }
        response
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoRoute => f.write_str("no access rule for this route"),
            Refusal::NoToken => f.write_str("no bearer token"),
            Refusal::MalformedAuthorization => {
                f.write_str("the authorization header is not one bearer token")
            }
            Refusal::Invalid(e) => write!(f, "{e}"),
            Refusal::InsufficientScope(missing) => {
                write!(f, "missing scope: {}", missing.join(" "))
            }
        }
    }
}

impl std::error::Error for Refusal {}

/// Refusals that say nothing about the token: the resource server cannot
/// currently tell whether it is revoked.
fn server_side(e: &VerifyError) -> bool {
    matches!(
        e,
        VerifyError::NotSynced
            | VerifyError::UnreadableRevocations { .. }
            | VerifyError::Stale { .. }
            | VerifyError::Keys(_)
    )
}

/// `s` restricted to what an RFC 6750 quoted attribute value may hold
/// (printable ASCII without `"` and `\`).
fn quoted(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\x20'..='\x7e' if c != '"' && c != '\\' => c,
            _ => '?',
        })
        .collect()
}

/// The bearer token of a request: exactly one `authorization` header with
/// scheme `Bearer` (any case) and a token of RFC 6750 `b64token`
/// characters.
fn bearer<B>(req: &Request<B>) -> Result<&str, Refusal> {
    let mut values = req.headers().get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(Refusal::NoToken)?;
    if values.next().is_some() {
        return Err(Refusal::MalformedAuthorization);
    }
    let value = value
        .to_str()
        .map_err(|_| Refusal::MalformedAuthorization)?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(Refusal::MalformedAuthorization)?;
    let token = token.trim_start_matches(' ');
    let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || !token.chars().all(b64token) {
        return Err(Refusal::MalformedAuthorization);
    }
    Ok(token)
}

/// The DER of the presenting client certificate, if the transport gave one.
fn peer_certificate<B>(req: &Request<B>) -> Option<Vec<u8>> {
    if let Some(PeerCertificate(der)) = req.extensions().get::<PeerCertificate>() {
        return Some(der.clone());
    }
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    certs.first().map(|c| c.as_ref().to_vec())
}

/// Whether a request speaks gRPC, to answer it in kind.
fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

struct Shared {
    verifier: Arc<Verifier>,
    routes: Routes,
}

/// What a request needs checked, taken from it before any await (a
/// request body need not be `Sync`).
struct Presented {
    scopes: Vec<String>,
    token: String,
    cert: Option<Vec<u8>>,
}

impl Shared {
    /// `Ok(None)`: a public route; otherwise what to verify.
    fn presented<B>(&self, req: &Request<B>) -> Result<Option<Presented>, Refusal> {
        let scopes = match self.routes.lookup(req.uri().path()) {
            None => return Err(Refusal::NoRoute),
            Some(Requirement::Public) => return Ok(None),
            Some(Requirement::Scopes(s)) => s.clone(),
        };
        Ok(Some(Presented {
            scopes,
            token: bearer(req)?.to_string(),
            cert: peer_certificate(req),
        }))
    }

    async fn verify(&self, p: Presented) -> Result<(VerifiedToken, SubjectToken), Refusal> {
        let verified = self
            .verifier
            .verify(&p.token, p.cert.as_deref())
            .await
            .map_err(Refusal::Invalid)?;
        let missing: Vec<String> = p
            .scopes
            .into_iter()
            .filter(|s| !verified.claims.has_scope(s))
            .collect();
        if !missing.is_empty() {
            return Err(Refusal::InsufficientScope(missing));
        }
        Ok((verified, SubjectToken(p.token)))
    }
}

/// A [`tower_layer::Layer`] that authenticates every request with a
/// [`Verifier`] against a [`Routes`] table (see the [module
/// documentation](self)). Works with any `http` service: a tonic server
/// (`Server::builder().layer(..)`), an axum router (`.layer(..)`) or a
/// hyper service.
#[derive(Clone)]
pub struct AuthLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("audience", &self.shared.verifier.audience())
            .field("routes", &self.shared.routes)
            .finish()
    }
}

impl AuthLayer {
    /// A layer that verifies with `verifier` and requires what `routes`
    /// says per path.
    pub fn new(verifier: Arc<Verifier>, routes: Routes) -> Self {
        Self {
            shared: Arc::new(Shared { verifier, routes }),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of an [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AuthService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // The clone is not ready; the one polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let grpc = is_grpc(&req);
        let presented = shared.presented(&req);
        Box::pin(async move {
            let outcome = match presented {
                Ok(Some(p)) => shared.verify(p).await.map(Some),
                Ok(None) => Ok(None),
                Err(refusal) => Err(refusal),
            };
            match outcome {
                Ok(Some((verified, subject))) => {
                    tracing::debug!(jti = %verified.claims.jti, path = req.uri().path(), "request authenticated");
                    req.extensions_mut().insert(verified);
                    req.extensions_mut().insert(subject);
                    inner.call(req).await
                }
                Ok(None) => inner.call(req).await,
                Err(refusal) => {
                    tracing::debug!(path = req.uri().path(), %refusal, "request refused");
                    Ok(refusal.into_response(grpc, shared.verifier.audience()))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: &[&str]) -> Request<()> {
        let mut r = Request::builder().uri("/a.S/Get");
        for a in auth {
            r = r.header(AUTHORIZATION, *a);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(
            bearer(&req(&["Bearer abc.def-_~+/="])).unwrap(),
            "abc.def-_~+/="
        );
        assert_eq!(bearer(&req(&["bearer  x"])).unwrap(), "x");
        assert!(matches!(bearer(&req(&[])), Err(Refusal::NoToken)));
        for bad in [
            "Basic abc",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a\"b",
            "abc",
        ] {
            assert!(
                matches!(bearer(&req(&[bad])), Err(Refusal::MalformedAuthorization)),
                "{bad}"
            );
        }
        assert!(matches!(
            bearer(&req(&["Bearer a", "Bearer b"])),
            Err(Refusal::MalformedAuthorization)
        ));
    }

    #[test]
    fn refusals_map_to_stable_codes_and_challenges() {
        use tonic::Code;
        let cases = [
            (Refusal::NoToken, Code::Unauthenticated, 401, Some("Bearer realm=\"aud\"")),
            (
                Refusal::Invalid(VerifyError::Revoked),
                Code::Unauthenticated,
                401,
                Some("Bearer realm=\"aud\", error=\"invalid_token\", error_description=\"token is revoked\""),
            ),
            (
                Refusal::InsufficientScope(vec!["a".into(), "b".into()]),
                Code::PermissionDenied,
                403,
                Some("Bearer realm=\"aud\", error=\"insufficient_scope\", scope=\"a b\""),
            ),
            (Refusal::NoRoute, Code::PermissionDenied, 403, None),
            (Refusal::MalformedAuthorization, Code::Unauthenticated, 400, None),
            (Refusal::Invalid(VerifyError::NotSynced), Code::Unavailable, 503, None),
            (
                Refusal::Invalid(VerifyError::UnreadableRevocations { revision: 7 }),
                Code::Unavailable,
                503,
                None,
            ),
            (
                Refusal::Invalid(VerifyError::Stale {
                    staleness: std::time::Duration::from_secs(60),
                }),
                Code::Unavailable,
                503,
                None,
            ),
        ];
        for (refusal, code, http, challenge) in cases {
            assert_eq!(refusal.status().code(), code, "{refusal}");
            assert_eq!(refusal.http_status().as_u16(), http, "{refusal}");
            let got = refusal.challenge("aud");
            if let Some(c) = challenge {
                assert_eq!(got.as_deref(), Some(c));
            }
            if http == 503 {
                assert_eq!(got, None);
            }
        }
    }

    #[test]
    fn challenge_values_are_quoted_safely() {
        assert_eq!(quoted("a\"b\\c\u{e9}\n"), "a?b?c??");
        let r = Refusal::Invalid(VerifyError::Invalid(
            tessera_token::TokenError::UnsupportedAlgorithm("x\"y".into()),
        ));
        let c = r.challenge("aud").unwrap();
        assert!(HeaderValue::from_str(&c).is_ok(), "{c}");
        assert!(!c.contains("x\"y"), "{c}");
    }

    #[test]
    fn grpc_refusals_are_trailers_only_responses() {
        let r: Response<String> = Refusal::NoToken.into_response(true, "aud");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "16");
        let r: Response<String> = Refusal::NoToken.into_response(false, "aud");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer realm=\"aud\"");
    }

    #[test]
    fn subject_token_debug_hides_the_token() {
        assert_eq!(
            format!("{:?}", SubjectToken("secret".into())),
            "SubjectToken(..)"
        );
    }

    /// The handler of the HTTP tests: answers with the subject it was
    /// handed, or "anonymous".
    #[derive(Clone)]
    struct Echo;

    impl Service<Request<String>> for Echo {
        type Response = Response<String>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Response<String>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<String>) -> Self::Future {
            let who = req
                .extensions()
                .get::<VerifiedToken>()
                .map_or("anonymous".to_string(), |t| t.claims.sub.clone());
            std::future::ready(Ok(Response::new(who)))
        }
    }

    fn http_req(path: &str, token: Option<&str>, cert: Option<&[u8]>) -> Request<String> {
        let mut r = Request::builder().uri(path);
        if let Some(t) = token {
            r = r.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut r = r.body(String::new()).unwrap();
        if let Some(c) = cert {
            r.extensions_mut().insert(PeerCertificate(c.to_vec()));
        }
        r
    }

    fn challenge(r: &Response<String>) -> &str {
        r.headers()[WWW_AUTHENTICATE].to_str().unwrap()
    }

    /// The layer over plain HTTP (what an axum or hyper server sees), with
    /// the certificate injected as a [`PeerCertificate`]: claims reach the
    /// handler; every refusal is the RFC 6750 status and challenge.
    #[tokio::test]
    async fn http_requests_get_claims_or_rfc6750_refusals() {
        use crate::verifier::tests::{claims, fixture, replace, revocation, snapshot, AUD, CERT};
        use tessera_proto::revocation::Target;

        let f = fixture();
        let routes = Routes::new()
            .public_prefix("/health")
            .exact("/ledger", ["ledger:write"])
            .exact("/admin", ["ledger:admin"]);
        let cache = crate::RevocationCache::detached(f.clock.clone());
        cache.apply_for_tests(snapshot(1, vec![]));
        let verifier = Arc::new(f.verifier(Some(cache.clone())));
        let layer = AuthLayer::new(verifier.clone(), routes);
        let mut svc = layer.layer(Echo);
        let token = f.key.sign(&claims()).unwrap();

        let ok = svc
            .call(http_req("/ledger", Some(&token), CERT))
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.body(), "spiffe://tessera.test/svc/frontend");

        let public = svc.call(http_req("/health", None, None)).await.unwrap();
        assert_eq!(
            (public.status(), public.body().as_str()),
            (StatusCode::OK, "anonymous")
        );

        let r = svc.call(http_req("/ledger", None, CERT)).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(challenge(&r), format!("Bearer realm=\"{AUD}\""));

        let r = svc
            .call(http_req("/admin", Some(&token), CERT))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            challenge(&r),
            format!("Bearer realm=\"{AUD}\", error=\"insufficient_scope\", scope=\"ledger:admin\"")
        );

        let r = svc
            .call(http_req("/elsewhere", Some(&token), CERT))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);

        let r = svc
            .call(http_req("/ledger", Some(&token), Some(b"another-cert")))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(
            challenge(&r).contains("error=\"invalid_token\""),
            "{}",
            challenge(&r)
        );
        assert!(!challenge(&r).contains(&token));

        // No certificate at all: the binding cannot be checked.
        let r = svc
            .call(http_req("/ledger", Some(&token), None))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

        // Stale revocation data: the server's trouble, 503 without a
        // challenge.
        cache.make_stale_for_tests(std::time::Duration::from_secs(3600));
        let r = svc
            .call(http_req("/ledger", Some(&token), CERT))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get(WWW_AUTHENTICATE).is_none());

        // A revoked ancestor (j1 is the root of the token's chain).
        replace(
            &f,
            &verifier,
            &cache,
            snapshot(2, vec![revocation(Target::Jti("j1".into()), 0)]),
        );
        let r = svc
            .call(http_req("/ledger", Some(&token), CERT))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(
            challenge(&r).contains("token is revoked"),
            "{}",
            challenge(&r)
        );
    }

    /// The same layer on an axum `Router`: the handler extracts the
    /// claims with `Extension`.
    #[tokio::test]
    async fn axum_router_takes_the_layer() {
        use crate::verifier::tests::{claims, fixture, CERT};
        use axum::body::Body;
        use tower::ServiceExt as _;

        async fn handler(axum::Extension(t): axum::Extension<VerifiedToken>) -> String {
            t.claims.client_id
        }
        let f = fixture();
        let routes = Routes::new().exact("/ledger", ["ledger:write"]);
        let app = axum::Router::new()
            .route("/ledger", axum::routing::get(handler))
            .layer(AuthLayer::new(Arc::new(f.verifier(None)), routes));
        let token = f.key.sign(&claims()).unwrap();
        let request = |token: Option<&str>| {
            let mut r = Request::builder().uri("/ledger");
            if let Some(t) = token {
                r = r.header(AUTHORIZATION, format!("Bearer {t}"));
            }
            let mut r = r.body(Body::empty()).unwrap();
            r.extensions_mut()
                .insert(PeerCertificate(CERT.unwrap().to_vec()));
            r
        };
        let ok = app.clone().oneshot(request(Some(&token))).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let body = axum::body::to_bytes(ok.into_body(), 1 << 16).await.unwrap();
        assert_eq!(&body[..], b"spiffe://tessera.test/svc/payments");
        let refused = app.oneshot(request(None)).await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(refused.headers().contains_key(WWW_AUTHENTICATE));
    }
}
