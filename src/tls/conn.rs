//! An accepted connection and its place in the connection limits: the
//! per-peer table, the HTTP/2 preface replay and the gathered writes of
//! [`TlsConn`].

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// The HTTP/2 client connection preface (RFC 9113 §3.4): the first bytes a
/// client sends on a connection.
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Open connections per peer address. Entries exist only while a peer has
/// a connection open, so the table is bounded by `max_connections`.
#[derive(Debug, Default)]
pub(super) struct PeerTable {
    // A std mutex: held for a map update, never across an await.
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place in the limits; given back when dropped.
#[derive(Debug)]
pub(super) struct ConnSlot {
    _total: OwnedSemaphorePermit,
    peers: Arc<PeerTable>,
    ip: IpAddr,
}

impl PeerTable {
    pub(super) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max: usize,
        total: OwnedSemaphorePermit,
    ) -> Option<ConnSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            _total: total,
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self
            .peers
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// An established connection: TLS done and the client's first bytes (the
/// HTTP/2 preface on gRPC listeners) received, and replayed to the server
/// on the first reads. Holds its place in the connection limits until
/// dropped.
#[derive(Debug)]
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    /// The bytes read ahead (at most a preface's length).
    head: [u8; PREFACE.len()],
    head_len: usize,
    /// Bytes of `head` already handed to the reader.
    replayed: usize,
    /// Writes gathered until the next flush, when enabled (see
    /// [`Gather`]).
    gather: Option<Gather>,
    _slot: ConnSlot,
}

/// Most bytes gathered before they go to TLS without waiting for a flush.
const GATHER_MAX: usize = 64 * 1024;

/// Gathered writes. The HTTP/2 connection task writes and flushes each
/// round of frames as soon as it runs, and one revocation event fanned out
/// to the many streams of a connection wakes it once per stream, each time
/// to write little. Here the first flush of a round only puts the
/// connection task back at the end of the run queue: the streams queued
/// before it add their frames meanwhile, and the second flush hands them
/// to TLS in one write. Measured A/B in docs/BENCHMARKS.md (propagation).
#[derive(Debug, Default)]
struct Gather {
    buf: Vec<u8>,
    /// Bytes of `buf` already written to TLS.
    sent: usize,
    /// The current flush has already let the others run once.
    yielded: bool,
}

impl TlsConn {
    pub(super) fn new(
        stream: TlsStream<TcpStream>,
        slot: ConnSlot,
        first: &[u8],
        gather_writes: bool,
    ) -> Self {
        let mut head = [0u8; PREFACE.len()];
        let head_len = first.len().min(head.len());
        head[..head_len].copy_from_slice(&first[..head_len]);
        Self {
            stream,
            head,
            head_len,
            replayed: 0,
            gather: gather_writes.then(Gather::default),
            _slot: slot,
        }
    }

    /// Writes the gathered bytes to TLS.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(g) = self.gather.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while g.sent < g.buf.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &g.buf[g.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => g.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        g.buf.clear();
        g.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes what fits of `bufs` into the gathered bytes, after writing
    /// them out if full. None when writes are not gathered.
    fn poll_gather(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Option<Poll<io::Result<usize>>> {
        let full = self.gather.as_ref()?.buf.len() >= GATHER_MAX;
        if full {
            if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
                return Some(Poll::Ready(Err(e)));
            }
        }
        let g = self.gather.as_mut()?;
        let room = GATHER_MAX.saturating_sub(g.buf.len());
        if room == 0 {
            // Still full: TLS (the socket) has no room; the drain above
            // registered the wake-up.
            return Some(Poll::Pending);
        }
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(room - n);
            g.buf.extend_from_slice(&b[..take]);
            n += take;
            if n == room {
                break;
            }
        }
        Some(Poll::Ready(Ok(n)))
    }

    /// The TLS stream (for its session: peer certificates, ALPN).
    pub fn get_ref(&self) -> &TlsStream<TcpStream> {
        &self.stream
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replayed < this.head_len {
            let n = (this.head_len - this.replayed).min(buf.remaining());
            buf.put_slice(&this.head[this.replayed..this.replayed + n]);
            this.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(p) = this.poll_gather(cx, &[io::IoSlice::new(buf)]) {
            return p;
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(p) = this.poll_gather(cx, bufs) {
            return p;
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // Gathering copies slices as cheaply as one buffer.
        self.gather.is_some() || self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(g) = this.gather.as_mut() {
            if g.sent < g.buf.len() {
                if !g.yielded {
                    // Woken by itself, a task goes to the back of the run
                    // queue: whoever is queued writes first.
                    g.yielded = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                std::task::ready!(this.poll_drain(cx))?;
            }
        }
        std::task::ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        if let Some(g) = this.gather.as_mut() {
            g.yielded = false;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

impl Connected for TlsConn {
    // The same as a bare TLS stream's, so `Request::peer_certs` works.
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt as _;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::tls::testpki::TestPki;
    use crate::tls::{client_config, tls_incoming_with, AcceptOptions, ServerTls};

    // Gathered writes: what the server writes reaches the client whole and
    // in order once flushed — many small writes held for one flush, and
    // more than the gathering bound in one write, passed on without one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gathered_writes_arrive_whole_and_in_order() {
        let pki = TestPki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = tls_incoming_with(
            listener,
            ServerTls::load(pki.server("s")).unwrap(),
            AcceptOptions {
                gather_writes: true,
                ..AcceptOptions::default()
            },
            std::future::pending(),
        );
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = TlsConnector::from(client_config(&pki.client("c")).unwrap())
            .connect(name, tcp)
            .await
            .unwrap();
        client.write_all(PREFACE).await.unwrap();
        client.flush().await.unwrap();
        let mut server = incoming.next().await.unwrap().unwrap();

        let mut want = Vec::new();
        for i in 0..1000u32 {
            want.extend_from_slice(format!("m{i};").as_bytes());
        }
        let small_len = want.len();
        want.extend(std::iter::repeat_n(7u8, 2 * GATHER_MAX + 5));
        let expected = want.clone();
        let write = async move {
            for chunk in want[..small_len].split_inclusive(|b| *b == b';') {
                server.write_all(chunk).await.unwrap();
            }
            server.flush().await.unwrap();
            server.write_all(&want[small_len..]).await.unwrap();
            server.flush().await.unwrap();
            server
        };
        let read = async {
            let mut got = vec![0u8; expected.len()];
            client.read_exact(&mut got).await.unwrap();
            got
        };
        let bound = Duration::from_secs(60);
        let (_server, got) = tokio::time::timeout(bound, async { tokio::join!(write, read) })
            .await
            .expect("gathered writes stalled");
        assert_eq!(got, expected);
    }
}
