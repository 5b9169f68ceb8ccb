//! An accepted connection and its place in the connection limits: the
//! per-peer table and the HTTP/2 preface replay of [`TlsConn`].

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
    _slot: ConnSlot,
}

impl TlsConn {
    pub(super) fn new(stream: TlsStream<TcpStream>, slot: ConnSlot, first: &[u8]) -> Self {
        let mut head = [0u8; PREFACE.len()];
        let head_len = first.len().min(head.len());
        head[..head_len].copy_from_slice(&first[..head_len]);
        Self {
            stream,
            head,
            head_len,
            replayed: 0,
            _slot: slot,
        }
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
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for TlsConn {
    // The same as a bare TLS stream's, so `Request::peer_certs` works.
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}
