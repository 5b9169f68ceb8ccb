//! What the two examples share, and what `tests/it/t96_middleware.rs` runs:
//! a tiny `orders.v1.Orders` gRPC service (hand-written with tonic's
//! building blocks, so that the examples need no `.proto` of their own),
//! served over mutual TLS behind an [`AuthLayer`], and called through a
//! [`TokenLayer`].
#![allow(dead_code)] // Each example uses its half.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tessera_client::{AuthLayer, Routes, SubjectToken, TlsFiles, TokenLayer, VerifiedToken};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::transport::{Certificate, Channel, Identity, Server, ServerTlsConfig};
use tonic_prost::ProstCodec;
use tower_layer::Layer as _;

/// The gRPC service name.
pub const SERVICE: &str = "orders.v1.Orders";
/// Places an order: needs the scope the server is configured with.
pub const PLACE: &str = "/orders.v1.Orders/Place";
/// Refunds: needs `orders:refund`, which no caller of the tour holds.
pub const REFUND: &str = "/orders.v1.Orders/Refund";

/// The request of both methods.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderRequest {
    #[prost(string, tag = "1")]
    pub item: String,
}

/// What the handler saw: the verified claims, straight from the request's
/// extensions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Receipt {
    #[prost(string, tag = "1")]
    pub item: String,
    /// `sub`: on whose behalf.
    #[prost(string, tag = "2")]
    pub subject: String,
    /// `client_id`: the service that presented the token.
    #[prost(string, tag = "3")]
    pub client_id: String,
    #[prost(string, tag = "4")]
    pub scope: String,
    #[prost(string, tag = "5")]
    pub jti: String,
    /// The delegation chain's ancestors.
    #[prost(string, repeated, tag = "6")]
    pub chain: Vec<String>,
}

/// The access rules of a server whose `Place` needs `place_scope`:
/// everything else of the service needs `orders:refund`, health is public,
/// and any other path is refused.
pub fn routes(place_scope: &str) -> Routes {
    Routes::new()
        .public_prefix("/grpc.health.v1.Health/")
        .exact(PLACE, [place_scope])
        .prefix(format!("/{SERVICE}/"), ["orders:refund"])
}

/// The handler: answers with the claims the [`AuthLayer`] put into the
/// request.
struct Handler;

impl tonic::server::UnaryService<OrderRequest> for Handler {
    type Response = Receipt;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<Receipt>, tonic::Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<OrderRequest>) -> Self::Future {
        Box::pin(async move {
            // Never missing behind the layer; a server without it fails
            // closed here rather than serving anonymously.
            let token = request
                .extensions()
                .get::<VerifiedToken>()
                .cloned()
                .ok_or_else(|| tonic::Status::unauthenticated("no verified token"))?;
            let c = token.claims;
            Ok(tonic::Response::new(Receipt {
                item: request.into_inner().item,
                subject: c.sub,
                client_id: c.client_id,
                scope: c.scope,
                jti: c.jti,
                chain: c.chain,
            }))
        })
    }
}

/// `orders.v1.Orders` as a tower service (what tonic's code generator would
/// write from a `.proto`).
#[derive(Clone)]
pub struct OrdersServer;

impl tonic::server::NamedService for OrdersServer {
    const NAME: &'static str = SERVICE;
}

impl tower_service::Service<http::Request<Body>> for OrdersServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            match req.uri().path() {
                PLACE | REFUND => {
                    let mut grpc =
                        tonic::server::Grpc::new(ProstCodec::<Receipt, OrderRequest>::default());
                    Ok(grpc.unary(Handler, req).await)
                }
                _ => Ok(tonic::Status::unimplemented("no such method").into_http()),
            }
        })
    }
}

/// Serves `orders.v1.Orders` on `listener` with mutual TLS (`tls`: the
/// server's identity and the CA its callers' certificates come from), every
/// request through `auth`, until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: &TlsFiles,
    auth: AuthLayer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            std::fs::read(&tls.cert)?,
            std::fs::read(&tls.key)?,
        ))
        .client_ca_root(Certificate::from_pem(std::fs::read(&tls.ca)?));
    Server::builder()
        .tls_config(tls)?
        // The layer sees tonic's TLS connection info: the caller's
        // certificate for the token's binding.
        .layer(auth)
        .add_service(OrdersServer)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await?;
    Ok(())
}

/// Calls `method` (`PLACE` or `REFUND`) over `channel` through `tokens`:
/// the layer attaches the token for the downstream's audience, exchanged
/// from `on_behalf_of` when given.
pub async fn call(
    channel: Channel,
    tokens: &TokenLayer,
    method: &'static str,
    item: &str,
    on_behalf_of: Option<SubjectToken>,
) -> Result<Receipt, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(tokens.layer(channel));
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(OrderRequest { item: item.into() });
    if let Some(subject) = on_behalf_of {
        request.extensions_mut().insert(subject);
    }
    let path = http::uri::PathAndQuery::from_static(method);
    let codec = ProstCodec::<OrderRequest, Receipt>::default();
    grpc.unary(request, path, codec)
        .await
        .map(tonic::Response::into_inner)
}
