//! The TLS accept loop: TCP connections in, established mutual-TLS streams
//! out, for `tonic::transport::Server::serve_with_incoming_shutdown`.
//!
//! Connection hygiene happens here, before the HTTP/2 server sees a
//! connection: a cap on connections in total and per peer IP address
//! (excess connections are closed at once), a bound on the TLS handshake,
//! and a bound on the time from the end of the handshake to the HTTP/2
//! client preface (RFC 9113 §3.4), so a client that completes TLS and then
//! says nothing, or says something else, loses its connection within
//! seconds instead of holding it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

use super::conn::{PeerTable, TlsConn, PREFACE};
use super::ServerTls;

/// Limits of the accept loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptOptions {
    /// A handshake not finished in this time is dropped, so a client that
    /// connects and goes silent cannot hold a slot.
    pub handshake_timeout: Duration,
    /// A connection whose client has not sent the HTTP/2 preface this long
    /// after its handshake is closed.
    pub preface_timeout: Duration,
    /// Connections in a handshake, waiting for their preface, or waiting
    /// for room in the queue. When reached, the loop stops calling
    /// `accept`, and new connections wait in the kernel's backlog.
    pub max_handshakes: usize,
    /// Established connections waiting for the server to pick them up.
    pub queue: usize,
    /// Open connections in total, from accept to close. A connection
    /// beyond it is closed at once.
    pub max_connections: usize,
    /// Open connections from one IP address. A connection beyond it is
    /// closed at once.
    pub max_connections_per_peer: usize,
    /// What the client must send within `preface_timeout`: the HTTP/2
    /// preface (gRPC listeners), or, when false, any first bytes (the HTTPS
    /// listener, which also speaks HTTP/1.1). Either way a client silent
    /// after its handshake is cut off.
    pub require_h2_preface: bool,
    /// Gather a connection's writes until its flush and let the tasks
    /// already queued write theirs first (see `TlsConn`): fewer, larger
    /// TLS records and syscalls when one event fans out to many streams of
    /// a connection, for one trip through the run queue per flush. For the
    /// gRPC API listener; off by default.
    pub gather_writes: bool,
}

impl Default for AcceptOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            preface_timeout: Duration::from_secs(5),
            max_handshakes: 1024,
            queue: 64,
            max_connections: 4096,
            max_connections_per_peer: 512,
            require_h2_preface: true,
            gather_writes: false,
        }
    }
}

impl AcceptOptions {
    /// Checks the values no type can.
    pub fn validate(&self) -> Result<(), String> {
        if self.handshake_timeout.is_zero() || self.preface_timeout.is_zero() {
            return Err("handshake and preface timeouts must be positive".into());
        }
        if self.max_handshakes == 0
            || self.queue == 0
            || self.max_connections == 0
            || self.max_connections_per_peer == 0
        {
            return Err("connection limits must be positive".into());
        }
        Ok(())
    }
}

/// The stream of established connections returned by [`tls_incoming`]. It
/// never yields an error: failed handshakes are logged and dropped. Dropping
/// it stops the accept loop and closes the listener.
#[derive(Debug)]
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsConn>,
}

impl Stream for TlsIncoming {
    type Item = Result<TlsConn, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|s| s.map(Ok))
    }
}

/// Accepts TCP connections on `listener` and runs each TLS handshake in its
/// own task with the default [`AcceptOptions`], yielding established
/// streams. Meant for `Server::serve_with_incoming_shutdown`, which drops
/// the stream on shutdown; dropping it stops the accept loop. `tls` is a
/// [`ServerTls`] (reloadable) or a fixed `Arc<rustls::ServerConfig>`.
///
/// Call inside a tokio runtime. See [`tls_incoming_with`].
pub fn tls_incoming(listener: TcpListener, tls: impl Into<ServerTls>) -> TlsIncoming {
    tls_incoming_with(
        listener,
        tls,
        AcceptOptions::default(),
        std::future::pending(),
    )
}

/// [`tls_incoming`], plus the accept loop's task handle: once the server has
/// dropped the stream, awaiting the handle means the listener is closed, so
/// its port can be bound again at once (a restart on the same address).
pub fn tls_incoming_joined(
    listener: TcpListener,
    tls: impl Into<ServerTls>,
) -> (TlsIncoming, tokio::task::JoinHandle<()>) {
    spawn_accept(
        listener,
        tls,
        AcceptOptions::default(),
        std::future::pending(),
    )
}

/// [`tls_incoming_joined`] with explicit limits.
pub fn tls_incoming_joined_with(
    listener: TcpListener,
    tls: impl Into<ServerTls>,
    opts: AcceptOptions,
) -> (TlsIncoming, tokio::task::JoinHandle<()>) {
    spawn_accept(listener, tls, opts, std::future::pending())
}

/// [`tls_incoming`] with explicit limits and a shutdown signal.
///
/// The configuration is taken from `tls` per connection, so
/// [`ServerTls::reload`] applies to the next handshake. The accept loop is a
/// spawned task (call this inside a tokio runtime); it owns the handshake
/// tasks and ends, aborting them and closing the listener, when `shutdown`
/// completes or the returned stream is dropped. Failed or timed-out
/// handshakes are logged at debug level with the peer address and dropped.
/// Accept errors (e.g. out of file descriptors) are logged and retried
/// after a short pause, never ending the stream.
pub fn tls_incoming_with<F>(
    listener: TcpListener,
    tls: impl Into<ServerTls>,
    opts: AcceptOptions,
    shutdown: F,
) -> TlsIncoming
where
    F: Future<Output = ()> + Send + 'static,
{
    spawn_accept(listener, tls, opts, shutdown).0
}

fn spawn_accept<F>(
    listener: TcpListener,
    tls: impl Into<ServerTls>,
    opts: AcceptOptions,
    shutdown: F,
) -> (TlsIncoming, tokio::task::JoinHandle<()>)
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(opts.queue.max(1));
    let local = listener.local_addr().ok();
    let span = tracing::info_span!("tls_accept", local = ?local);
    let task = tokio::spawn(accept_loop(listener, tls.into(), opts, tx, shutdown).instrument(span));
    (TlsIncoming { rx }, task)
}

async fn accept_loop<F>(
    listener: TcpListener,
    tls: ServerTls,
    opts: AcceptOptions,
    tx: mpsc::Sender<TlsConn>,
    shutdown: F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(opts.max_handshakes.max(1)));
    let connections = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let peers = Arc::new(PeerTable::default());
    // Dropping the set at the end of this function aborts any handshake
    // still running, so no task outlives the listener.
    let mut handshakes = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished handshakes so the set stays as small as the number
        // of permits in use.
        while handshakes.try_join_next().is_some() {}
        tokio::select! {
            () = &mut shutdown => break,
            () = tx.closed() => break,
            permit = permits.clone().acquire_owned() => {
                let Ok(permit) = permit else { break };
                let (tcp, peer) = tokio::select! {
                    () = &mut shutdown => break,
                    () = tx.closed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            tracing::warn!(%error, "accept failed");
                            // Typically EMFILE: retrying at once would spin.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                // gRPC is request/response over small frames: Nagle only
                // adds latency.
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%peer, %error, "set_nodelay failed");
                }
                // Over a limit: closed at once, before any TLS work.
                let Ok(total) = connections.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "connection refused: too many connections");
                    continue;
                };
                let Some(slot) = peers.admit(peer.ip(), opts.max_connections_per_peer, total)
                else {
                    tracing::debug!(%peer, "connection refused: too many from this address");
                    continue;
                };
                let acceptor = TlsAcceptor::from(tls.config());
                let tx = tx.clone();
                let timeout = opts.handshake_timeout;
                let preface_timeout = opts.preface_timeout;
                let require_h2 = opts.require_h2_preface;
                let gather = opts.gather_writes;
                handshakes.spawn(
                    async move {
                        let result = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
                        match result {
                            Ok(Ok(mut stream)) => {
                                let mut first = [0u8; PREFACE.len()];
                                let read = tokio::time::timeout(preface_timeout, async {
                                    if require_h2 {
                                        stream.read_exact(&mut first).await
                                    } else {
                                        stream.read(&mut first).await
                                    }
                                })
                                .await;
                                match read {
                                    Ok(Ok(n)) if require_h2 && &first == PREFACE => {
                                        let conn = TlsConn::new(stream, slot, &first[..n], gather);
                                        // Fails only if the server stopped listening.
                                        let _ = tx.send(conn).await;
                                    }
                                    Ok(Ok(n)) if !require_h2 && n > 0 => {
                                        let conn = TlsConn::new(stream, slot, &first[..n], gather);
                                        let _ = tx.send(conn).await;
                                    }
                                    Ok(Ok(0)) => {
                                        tracing::debug!(%peer, "closed before the first request");
                                    }
                                    Ok(Ok(_)) => {
                                        tracing::debug!(%peer, "not an HTTP/2 client preface");
                                    }
                                    Ok(Err(error)) => {
                                        tracing::debug!(%peer, %error, "closed before the HTTP/2 preface (or first bytes)");
                                    }
                                    Err(_) => {
                                        tracing::debug!(%peer, "no HTTP/2 preface (or first bytes) in time");
                                    }
                                }
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                            }
                        }
                        // Held until the stream is queued, so a server that
                        // stops picking up connections stops the accepting
                        // too, instead of piling up finished handshakes.
                        drop(permit);
                    }
                    .instrument(tracing::debug_span!("tls_handshake", %peer)),
                );
            }
        }
    }
    tracing::debug!("TLS accept loop stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testpki::TestPki;
    use crate::tls::{caller_identity, client_config, server_config, TlsFiles};
    use futures_util::StreamExt as _;
    use rustls::pki_types::ServerName;
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tonic::transport::server::Connected as _;

    /// Handshakes over an in-memory pipe; returns the server's verdict.
    async fn handshake(
        server: &TlsFiles,
        client: Arc<rustls::ClientConfig>,
    ) -> Result<(), rustls::Error> {
        let acceptor = TlsAcceptor::from(server_config(server).unwrap());
        let connector = TlsConnector::from(client);
        let (c, s) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("localhost").unwrap();
        let (client_side, server_side) =
            tokio::join!(connector.connect(name, c), acceptor.accept(s));
        let mut server_side = server_side.map_err(|e| {
            e.into_inner()
                .and_then(|inner| inner.downcast::<rustls::Error>().ok())
                .map(|e| *e)
                .expect("a rustls error")
        })?;
        let mut client_side = client_side.unwrap();
        // Round trip: under TLS 1.3 the client may finish before the server
        // has judged its certificate.
        client_side.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server_side.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    fn no_client_auth(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(crate::tls::pem::load_certs(ca).unwrap().remove(0))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    #[tokio::test]
    async fn trusted_client_is_accepted() {
        let pki = TestPki::new();
        let server = pki.server("s");
        handshake(&server, client_config(&pki.client("c")).unwrap())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn missing_client_certificate_is_refused() {
        let pki = TestPki::new();
        let server = pki.server("s");
        let err = handshake(&server, no_client_auth(&server.ca))
            .await
            .unwrap_err();
        assert_eq!(err, rustls::Error::NoCertificatesPresented);
    }

    #[tokio::test]
    async fn untrusted_ca_is_refused() {
        let pki = TestPki::new();
        let other = TestPki::with_ca_name("Another CA");
        let server = pki.server("s");
        let mut stranger = other.client("stranger");
        // The stranger trusts our server, but its own CA is unknown to us.
        stranger.ca = server.ca.clone();
        let err = handshake(&server, client_config(&stranger).unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        );
    }

    #[tokio::test]
    async fn impostor_ca_with_our_name_is_refused() {
        let pki = TestPki::new();
        // Same subject name as our CA, different key.
        let impostor = TestPki::new();
        let server = pki.server("s");
        let mut stranger = impostor.client("stranger");
        stranger.ca = server.ca.clone();
        let err = handshake(&server, client_config(&stranger).unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
        );
    }

    #[tokio::test]
    async fn expired_client_certificate_is_refused() {
        let pki = TestPki::new();
        let server = pki.server("s");
        let err = handshake(&server, client_config(&pki.expired_client("old")).unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. })
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn client_certificate_without_client_auth_purpose_is_refused() {
        let pki = TestPki::new();
        let server = pki.server("s");
        let mut spec = crate::certs::LeafSpec::new("server-only");
        spec.uris.push("spiffe://tessera.test/svc/x".into());
        spec.client_auth = false;
        let err = handshake(&server, client_config(&pki.leaf("x", &spec)).unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::InvalidPurpose
                        | rustls::CertificateError::InvalidPurposeContext { .. }
                )
            ),
            "{err:?}"
        );
    }

    /// Completes TLS and says nothing.
    async fn connect_silent(
        addr: std::net::SocketAddr,
        client: Arc<rustls::ClientConfig>,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        TlsConnector::from(client).connect(name, tcp).await
    }

    /// Completes TLS and sends the HTTP/2 preface, as a gRPC client does.
    async fn connect(
        addr: std::net::SocketAddr,
        client: Arc<rustls::ClientConfig>,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut s = connect_silent(addr, client).await?;
        s.write_all(PREFACE).await?;
        s.flush().await?;
        Ok(s)
    }

    /// Reads until the server closes; the bound is generous (5x the server's).
    async fn closed_within(s: &mut tokio_rustls::client::TlsStream<TcpStream>, bound: Duration) {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(bound, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(read.is_ok(), "connection still open after {bound:?}");
    }

    fn opts(preface_timeout: Duration, per_peer: usize) -> AcceptOptions {
        AcceptOptions {
            preface_timeout,
            max_connections_per_peer: per_peer,
            ..AcceptOptions::default()
        }
    }

    #[tokio::test]
    async fn client_silent_after_handshake_is_disconnected() {
        let pki = TestPki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bound = Duration::from_secs(1);
        let mut incoming = tls_incoming_with(
            listener,
            ServerTls::load(pki.server("s")).unwrap(),
            opts(bound, 100),
            std::future::pending(),
        );
        let client = client_config(&pki.client("c")).unwrap();
        let mut silent = connect_silent(addr, client.clone()).await.unwrap();
        // A normal client gets through meanwhile.
        let _normal = connect(addr, client).await.unwrap();
        let server_side = incoming.next().await.unwrap().unwrap();
        assert_eq!(
            server_side.get_ref().get_ref().1.alpn_protocol(),
            Some(&b"h2"[..])
        );
        closed_within(&mut silent, 5 * bound).await;
    }

    #[tokio::test]
    async fn client_sending_something_else_than_the_preface_is_disconnected() {
        let pki = TestPki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _incoming = tls_incoming_with(
            listener,
            ServerTls::load(pki.server("s")).unwrap(),
            // Long: the close must come from the wrong bytes, not the time.
            opts(Duration::from_secs(600), 100),
            std::future::pending(),
        );
        let mut s = connect_silent(addr, client_config(&pki.client("c")).unwrap())
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        s.flush().await.unwrap();
        closed_within(&mut s, Duration::from_secs(30)).await;
    }

    #[tokio::test]
    async fn without_the_preface_requirement_first_bytes_are_replayed() {
        let pki = TestPki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bound = Duration::from_secs(1);
        let mut incoming = tls_incoming_with(
            listener,
            ServerTls::load(pki.server("s")).unwrap(),
            AcceptOptions {
                require_h2_preface: false,
                ..opts(bound, 100)
            },
            std::future::pending(),
        );
        let client = client_config(&pki.client("c")).unwrap();
        // Silent after the handshake: still cut off.
        let mut silent = connect_silent(addr, client.clone()).await.unwrap();
        // HTTP/1.1: let through, its bytes intact.
        let mut http1 = connect_silent(addr, client).await.unwrap();
        http1.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        http1.flush().await.unwrap();
        let mut server_side = incoming.next().await.unwrap().unwrap();
        let mut got = [0u8; 16];
        server_side.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
        closed_within(&mut silent, 5 * bound).await;
    }

    #[tokio::test]
    async fn connections_per_peer_are_capped() {
        let pki = TestPki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = tls_incoming_with(
            listener,
            ServerTls::load(pki.server("s")).unwrap(),
            opts(Duration::from_secs(600), 2),
            std::future::pending(),
        );
        let client = client_config(&pki.client("c")).unwrap();
        let _c1 = connect(addr, client.clone()).await.unwrap();
        let s1 = incoming.next().await.unwrap().unwrap();
        let _c2 = connect(addr, client.clone()).await.unwrap();
        let _s2 = incoming.next().await.unwrap().unwrap();
        // The third from the same address is closed before TLS.
        let third = connect(addr, client.clone()).await;
        if let Ok(mut s) = third {
            closed_within(&mut s, Duration::from_secs(30)).await;
        }
        // Closing one frees its place.
        drop(s1);
        let _c4 = connect(addr, client).await.unwrap();
        let _s4 = incoming.next().await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn incoming_yields_trusted_and_drops_refused() {
        let pki = TestPki::new();
        let other = TestPki::new();
        let server = pki.server("s");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = ServerTls::load(server.clone()).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut incoming = tls_incoming_with(listener, tls, AcceptOptions::default(), async {
            let _ = stop_rx.await;
        });

        // Refused clients: their connections never come out of the stream.
        let mut stranger = other.client("stranger");
        stranger.ca = server.ca.clone();
        for refused in [
            client_config(&stranger).unwrap(),
            client_config(&pki.expired_client("old")).unwrap(),
            no_client_auth(&server.ca),
        ] {
            if let Ok(mut s) = connect(addr, refused).await {
                // TLS 1.3: the refusal arrives as an alert on first read.
                let mut buf = [0u8; 1];
                assert!(s.read(&mut buf).await.map(|n| n == 0).unwrap_or(true));
            }
        }

        // Then a trusted client: the next stream out is its connection.
        let mut client = connect(addr, client_config(&pki.client("orders")).unwrap())
            .await
            .unwrap();
        let server_side = incoming.next().await.unwrap().unwrap();

        // What tonic puts into request extensions for this stream.
        let mut req = tonic::Request::new(());
        req.extensions_mut().insert(server_side.connect_info());
        let who = caller_identity(&req).unwrap();
        assert_eq!(who.id, "spiffe://tessera.test/svc/orders");
        let leaf = crate::tls::pem::load_certs(&pki.path().join("orders.pem")).unwrap();
        assert_eq!(who.thumbprint, crate::tls::identity::thumbprint(&leaf[0]));
        assert_eq!(
            server_side.get_ref().get_ref().1.alpn_protocol(),
            Some(&b"h2"[..])
        );

        client.write_all(b"x").await.unwrap();

        stop_tx.send(()).unwrap();
        assert!(incoming.next().await.is_none(), "stream ends on shutdown");
    }

    #[tokio::test]
    async fn reload_applies_to_the_next_handshake() {
        let pki = TestPki::new();
        let server = pki.server("s");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = ServerTls::load(server.clone()).unwrap();
        let mut incoming = tls_incoming(listener, tls.clone());
        let client = client_config(&pki.client("c")).unwrap();

        let served_leaf = |c: &tokio_rustls::client::TlsStream<TcpStream>| {
            c.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        };
        let first = connect(addr, client.clone()).await.unwrap();
        let _s1 = incoming.next().await.unwrap().unwrap();
        let before = served_leaf(&first);

        // Renew the server certificate on disk, then reload.
        let renewed = pki.server("s");
        assert_eq!(renewed, server);
        tls.reload().unwrap();

        let second = connect(addr, client).await.unwrap();
        let _s2 = incoming.next().await.unwrap().unwrap();
        assert_ne!(served_leaf(&second), before);
        assert_eq!(
            crate::tls::pem::load_certs(&server.cert).unwrap()[0].to_vec(),
            served_leaf(&second)
        );
    }

    #[tokio::test]
    async fn silent_client_times_out_and_frees_its_slot() {
        let pki = TestPki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let opts = AcceptOptions {
            handshake_timeout: Duration::from_millis(50),
            max_handshakes: 1,
            queue: 1,
            ..AcceptOptions::default()
        };
        let mut incoming = tls_incoming_with(
            listener,
            ServerTls::load(pki.server("s")).unwrap(),
            opts,
            std::future::pending(),
        );
        // Takes the only slot and never says hello.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let client = tokio::spawn(connect(addr, client_config(&pki.client("c")).unwrap()));
        // The trusted client gets through only once the silent one is cut.
        let _server_side = incoming.next().await.unwrap().unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            silent.read(&mut buf).await.unwrap(),
            0,
            "silent peer closed"
        );
        client.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_the_loop() {
        let pki = TestPki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A fixed configuration works too.
        let incoming = tls_incoming(listener, server_config(&pki.server("s")).unwrap());
        drop(incoming);
        // The loop notices the closed channel and drops the listener; a
        // connect then eventually fails. Poll with yields, not sleeps.
        let mut refused = false;
        for _ in 0..1000 {
            tokio::task::yield_now().await;
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "listener still open after the stream was dropped");
    }
}
