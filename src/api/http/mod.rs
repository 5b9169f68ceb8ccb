//! The HTTPS listener (`http_listen`): what off-the-shelf OAuth and JOSE
//! software can fetch without gRPC, served with axum's router on hyper
//! (HTTP/1.1 and HTTP/2) over server-authenticated TLS.
//!
//! - `GET /.well-known/jwks.json` ([`jwks`]): the key set `GetJwks`
//!   returns, through the same code path ([`Shared::jwks`]), with
//!   `Cache-Control: max-age` = the key publish-ahead window (`key_publish_ahead`).
//! - `GET /.well-known/oauth-authorization-server` ([`metadata`]): RFC 8414
//!   metadata naming this node's HTTPS address.
//! - `POST /oauth2/token`, `/oauth2/introspect`, `/oauth2/revoke`
//!   ([`oauth`]): the OAuth faces of `TokenService`, calling its handlers.
//!
//! Routes are added in [`router`], one line each. Every handler can read
//! the verified client certificate's identity, if the client presented
//! one, as the [`ClientIdentity`] request extension (RFC 8705
//! `tls_client_auth` needs it). Client certificates are optional here but,
//! when presented, must be issued by the cluster CA (else the handshake
//! fails).
//!
//! Bounded like the gRPC listener: the same accept loop (connection caps,
//! handshake and first-bytes timeouts), a header-read timeout that also
//! closes idle HTTP/1.1 keep-alive connections, HTTP/2 stream and header
//! limits, a request-body limit, a per-request timeout and a maximum
//! connection age after which a connection is drained. Unknown paths are
//! 404, known paths with another method 405.

mod form;
mod jwks;
mod metadata;
mod metrics;
pub mod oauth;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderValue, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_service::Service as _;
use tracing::Instrument as _;

use super::{ApiError, Shared};
use crate::tls::{AcceptOptions, PeerIdentity, ServerTls, TlsConn};

/// Settings of the HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// `host:port` clients reach this listener at, used in the metadata's
    /// URLs; empty: the bound address.
    pub advertise_addr: String,
    /// Connection caps and handshake/first-bytes timeouts (the HTTP/2
    /// preface is not required: HTTP/1.1 is served too).
    pub accept: AcceptOptions,
    /// Largest request body, bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Longest time a request may take (503 beyond).
    pub request_timeout: Duration,
    /// Longest time to receive a request's headers, which is also how long
    /// an idle HTTP/1.1 keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// A connection older than this is drained (in-flight requests finish)
    /// and closed, so no client holds a connection slot forever.
    pub max_connection_age: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Largest request header block, bytes.
    pub max_header_bytes: u32,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            advertise_addr: String::new(),
            accept: AcceptOptions {
                require_h2_preface: false,
                max_connections: 1024,
                max_connections_per_peer: 64,
                ..AcceptOptions::default()
            },
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(600),
            max_concurrent_streams: 64,
            max_header_bytes: 16 * 1024,
        }
    }
}

impl HttpSettings {
    /// Checks the values no type can.
    pub fn validate(&self) -> Result<(), String> {
        self.accept.validate()?;
        if self.request_timeout.is_zero()
            || self.header_read_timeout.is_zero()
            || self.max_connection_age.is_zero()
        {
            return Err("HTTPS timeouts and connection age must be positive".into());
        }
        if self.max_concurrent_streams == 0 || self.max_header_bytes < 1024 {
            return Err("HTTPS limits: at least one stream and 1 KiB of headers".into());
        }
        if self.max_body_bytes == 0 {
            return Err("HTTPS body limit must be positive".into());
        }
        Ok(())
    }
}

/// The verified identity of the client certificate the client presented
/// on this connection, or `None` (no certificate, or one without a SPIFFE
/// or DNS name). Present in every request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity(pub Option<PeerIdentity>);

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The node's handler state (key ring, readiness, settings).
    pub shared: Arc<Shared>,
    /// The listener's settings.
    pub settings: Arc<HttpSettings>,
    /// `https://{advertised address}`: the base of every URL published.
    pub base_url: Arc<str>,
    /// The per-caller rate limiter of the gRPC listener: the OAuth
    /// endpoints charge the same buckets as the RPCs they stand for.
    pub rate: Arc<super::limits::RateLimiter>,
}

/// The listener's routes. A new endpoint is one `.route(..)` line here;
/// its handler takes `State<HttpState>` and, for client authentication,
/// `Extension<ClientIdentity>`.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route(jwks::PATH, get(jwks::get))
        .route(metadata::PATH, get(metadata::get))
        .route(metrics::PATH, get(metrics::get))
        .route(oauth::TOKEN_PATH, post(oauth::token))
        .route(oauth::INTROSPECT_PATH, post(oauth::introspect))
        .route(oauth::REVOKE_PATH, post(oauth::revoke))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such resource")
}

/// A JSON error body in the shape of RFC 6749 §5.2 (`error`,
/// `error_description`), which OAuth clients already parse.
pub fn error_response(status: StatusCode, error: &str, description: &str) -> Response {
    let body = serde_json::json!({ "error": error, "error_description": description });
    json_response(status, body.to_string(), "no-store")
}

/// A JSON response with the given `Cache-Control`.
pub fn json_response(status: StatusCode, body: String, cache_control: &str) -> Response {
    let mut resp = (status, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(cache_control) {
        headers.insert(header::CACHE_CONTROL, v);
    }
    resp
}

/// The one table from [`ApiError`] to HTTP statuses, the counterpart of
/// the gRPC table in [`super::error`].
pub fn api_error_response(e: &ApiError) -> Response {
    let (status, code) = match e {
        ApiError::InvalidArgument(_) | ApiError::TooLarge(_) => {
            (StatusCode::BAD_REQUEST, "invalid_request")
        }
        ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "invalid_client"),
        ApiError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "access_denied"),
        ApiError::Unavailable { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        }
        ApiError::ResourceExhausted(_) | ApiError::RateLimited { .. } => {
            (StatusCode::TOO_MANY_REQUESTS, "slow_down")
        }
        ApiError::DeadlineExceeded(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    };
    let mut resp = error_response(status, code, &e.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// `https://{advertise}` or, when empty, `https://{bound}`.
pub fn base_url(advertise: &str, bound: std::net::SocketAddr) -> String {
    if advertise.is_empty() || advertise.ends_with(":0") {
        format!("https://{bound}")
    } else {
        format!("https://{advertise}")
    }
}

/// How long a connection being drained (shutdown, maximum age) may take to
/// finish its requests before it is closed.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Serves the HTTPS listener on `listener` until `stop` turns true.
pub async fn serve(
    state: HttpState,
    listener: TcpListener,
    tls: ServerTls,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use futures_util::StreamExt as _;
    let settings = state.settings.clone();
    let app = router(state);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size((settings.max_header_bytes as usize).max(8192))
        .max_headers(100);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(settings.max_header_bytes)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let (mut incoming, accept_loop) =
        crate::tls::tls_incoming_joined_with(listener, tls, settings.accept.clone());
    // Owns every connection task: dropping it (at the end) closes them.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let conn = tokio::select! {
            () = stopped(&mut stop) => break,
            c = incoming.next() => match c {
                Some(Ok(c)) => c,
                _ => break,
            },
        };
        let peer = conn
            .get_ref()
            .get_ref()
            .0
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        conns.spawn(
            serve_conn(
                conn,
                app.clone(),
                builder.clone(),
                settings.clone(),
                stop.clone(),
            )
            .instrument(tracing::debug_span!("https_conn", %peer)),
        );
    }
    drop(incoming);
    // Connections were told to drain (they watch `stop`); give them the
    // grace, then close what is left.
    let _ = tokio::time::timeout(DRAIN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    let _ = accept_loop.await;
}

/// Completes once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn serve_conn(
    conn: TlsConn,
    app: Router,
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    settings: Arc<HttpSettings>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let identity = ClientIdentity(
        conn.get_ref()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|leaf| crate::tls::identity_from_cert(leaf).ok()),
    );
    let max_body = settings.max_body_bytes;
    let timeout = settings.request_timeout;
    // Set by the first request: until then the connection has the header
    // deadline to send one (below).
    let requested = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let requested_in = requested.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let mut app = app.clone();
        let identity = identity.clone();
        requested_in.store(true, std::sync::atomic::Ordering::Release);
        async move {
            let too_large = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n > max_body as u64);
            if too_large {
                return Ok::<_, Infallible>(error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request",
                    "request body too large",
                ));
            }
            let mut req = req.map(|body| Body::new(http_body_util::Limited::new(body, max_body)));
            req.extensions_mut().insert(identity);
            match tokio::time::timeout(timeout, app.call(req)).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(never)) => match never {},
                // As every 503 of the table: with `Retry-After` (it had
                // none, found by review).
                Err(_) => Ok(api_error_response(&ApiError::DeadlineExceeded(
                    "request timed out".into(),
                ))),
            }
        }
    });
    let connection = builder.serve_connection(TokioIo::new(conn), service);
    tokio::pin!(connection);
    let age = tokio::time::sleep(settings.max_connection_age);
    tokio::pin!(age);
    // hyper's `header_read_timeout` starts only once the protocol is known:
    // a client that sent the first bytes of the HTTP/2 preface and went
    // silent was held until the connection's maximum age (600 s). The
    // first request must arrive within the header deadline, whatever the
    // protocol.
    let first_request = tokio::time::sleep(settings.header_read_timeout);
    tokio::pin!(first_request);
    let mut awaiting_first = true;
    let result = loop {
        tokio::select! {
            r = connection.as_mut() => break r,
            () = stopped(&mut stop) => {
                connection.as_mut().graceful_shutdown();
                break tokio::time::timeout(DRAIN_GRACE, connection.as_mut()).await.unwrap_or(Ok(()));
            }
            _ = &mut age => {
                connection.as_mut().graceful_shutdown();
                break tokio::time::timeout(DRAIN_GRACE, connection.as_mut()).await.unwrap_or(Ok(()));
            }
            _ = &mut first_request, if awaiting_first => {
                awaiting_first = false;
                if !requested.load(std::sync::atomic::Ordering::Acquire) {
                    tracing::debug!("HTTPS connection sent no request within the header deadline; closed");
                    // Dropping the connection closes it.
                    break Ok(());
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTPS connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_prefers_the_advertised_address() {
        let bound: std::net::SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert_eq!(base_url("", bound), "https://127.0.0.1:8443");
        assert_eq!(base_url("0.0.0.0:0", bound), "https://127.0.0.1:8443");
        assert_eq!(
            base_url("tessera.example:443", bound),
            "https://tessera.example:443"
        );
    }

    #[test]
    fn api_errors_map_to_stable_statuses() {
        let cases = [
            (
                ApiError::InvalidArgument("x".into()),
                StatusCode::BAD_REQUEST,
            ),
            (
                ApiError::Unauthenticated("x".into()),
                StatusCode::UNAUTHORIZED,
            ),
            (
                ApiError::PermissionDenied("x".into()),
                StatusCode::FORBIDDEN,
            ),
            (
                ApiError::Unavailable {
                    reason: "x".into(),
                    leader: None,
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                ApiError::ResourceExhausted("x".into()),
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (
                ApiError::Internal("x".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (e, want) in cases {
            let resp = api_error_response(&e);
            assert_eq!(resp.status(), want, "{e:?}");
            assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
            assert_eq!(
                resp.headers().contains_key(header::RETRY_AFTER),
                want == StatusCode::SERVICE_UNAVAILABLE
            );
        }
    }

    #[test]
    fn default_settings_are_valid() {
        let s = HttpSettings::default();
        s.validate().unwrap();
        assert!(!s.accept.require_h2_preface);
        let bad = HttpSettings {
            max_body_bytes: 0,
            ..HttpSettings::default()
        };
        assert!(bad.validate().is_err());
    }
}
