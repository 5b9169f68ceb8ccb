//! The baseline of `tessera bench --baseline`: a do-nothing unary gRPC
//! service served in the bench process on 127.0.0.1:0, through the same
//! accept loop ([`tessera::tls::tls_incoming_joined_with`]), the same mTLS
//! server configuration ([`ServerTls`] of kind `Mtls`, built from a node's
//! certificate files) and the same HTTP/2 settings as a node's API listener
//! (`tessera::api::serve`). It leaves out only what is Tessera's own work:
//! the middleware layers and the services. Its throughput is the transport's
//! ceiling on this machine, so operations are reported as ratios of it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tessera::tls::{ServerKind, ServerTls, TlsFiles};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generated code of `proto/tessera/bench/v1/bench.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("tessera.bench.v1");
}

use pb::baseline_service_server::{BaselineService, BaselineServiceServer};
pub use pb::{baseline_service_client::BaselineServiceClient, EchoMessage};

/// Largest payload the baseline accepts: as a node's API (`MAX_REQUEST_BYTES`
/// is 64 KiB there), with room for any token the bench sends.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

struct Echo;

#[tonic::async_trait]
impl BaselineService for Echo {
    async fn echo(
        &self,
        request: tonic::Request<EchoMessage>,
    ) -> Result<tonic::Response<EchoMessage>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }
}

/// The running baseline server; [`BaselineServer::shutdown`] stops it.
pub struct BaselineServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl BaselineServer {
    /// Serves the baseline on 127.0.0.1:0 with the server identity `files`
    /// (a node's certificate, key and CA).
    pub async fn start(files: TlsFiles) -> anyhow::Result<Self> {
        let loaded = tessera::tls::LoadedTls::load(&files)
            .with_context(|| format!("baseline server identity {}", files.cert.display()))?;
        // The node builds its API listener's configuration exactly so
        // (`node::start`).
        let tls = ServerTls::from_loaded(&loaded, ServerKind::Mtls)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let limits = tessera::api::ServerLimits::default();
        let (incoming, accept_loop) =
            tessera::tls::tls_incoming_joined_with(listener, tls, limits.accept.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let service = BaselineServiceServer::new(Echo).max_decoding_message_size(MAX_MESSAGE_BYTES);
        // The same transport settings as `tessera::api::serve`, without its
        // layers (metrics, message limit, tracing, rate limits): those are
        // part of what an operation costs.
        let server = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(1024)
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .max_concurrent_streams(limits.http2.max_concurrent_streams)
            .http2_max_header_list_size(limits.http2.max_header_list_size)
            .http2_keepalive_interval(Some(limits.http2.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.http2.keepalive_timeout))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "baseline server failed");
            }
            let _ = accept_loop.await;
        });
        Ok(Self { addr, stop, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits (bounded) for the listener to close.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        // Open connections end when the bench drops its clients; do not
        // wait on them forever.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}
