//! The request-size limit as a tower layer: a gRPC message whose length
//! prefix is above the limit is refused with `RESOURCE_EXHAUSTED` the
//! moment its 5-byte frame header arrives, before its body is buffered.
//!
//! tonic refuses such a message too (`max_decoding_message_size`), but with
//! `OUT_OF_RANGE`; gRPC's convention and our error table say
//! `RESOURCE_EXHAUSTED`. The layer wraps each request body and reads the
//! length prefixes as the data streams past; the first one above the
//! limit ends the body with a [`Status`], which tonic hands to the caller
//! as it is. The per-service `max_decoding_message_size` stays as a second
//! line at the same limit.
//!
//! Installed on the public server: `Server::builder().layer(MessageLimitLayer::new(MAX_REQUEST_BYTES))`.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame};
use tonic::body::Body;
use tonic::Status;

/// Refuses request messages longer than a limit (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct MessageLimitLayer {
    max: usize,
}

impl MessageLimitLayer {
    /// A layer refusing messages of more than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl<S> tower_layer::Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> MessageLimit<S> {
        MessageLimit {
            inner,
            max: self.max,
        }
    }
}

/// The service [`MessageLimitLayer`] makes.
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    max: usize,
}

impl<S> tower_service::Service<http::Request<Body>> for MessageLimit<S>
where
    S: tower_service::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let max = self.max;
        self.inner
            .call(req.map(|b| Body::new(LimitedBody::new(b, max))))
    }
}

/// Where the scanner is in the gRPC framing: 1 flag byte, 4 length bytes
/// (big-endian), then the message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Framing {
    header: [u8; 5],
    /// Header bytes seen of the current frame.
    have: usize,
    /// Message bytes still to skip.
    skip: usize,
}

impl Framing {
    /// Advances over `data`; the length of the first message above `max`
    /// is an error.
    fn scan(&mut self, mut data: &[u8], max: usize) -> Result<(), usize> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let [_, a, b, c, d] = self.header;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len > max {
                    return Err(len);
                }
                self.skip = len;
            }
        }
        Ok(())
    }
}

/// A request body that ends with `RESOURCE_EXHAUSTED` at the first
/// oversized message.
struct LimitedBody {
    inner: Body,
    max: usize,
    framing: Framing,
    failed: bool,
}

impl LimitedBody {
    fn new(inner: Body, max: usize) -> Self {
        Self {
            inner,
            max,
            framing: Framing::default(),
            failed: false,
        }
    }
}

impl HttpBody for LimitedBody {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            if let Err(len) = this.framing.scan(data, this.max) {
                this.failed = true;
                return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                    "request message of {len} bytes is larger than the limit of {} bytes",
                    this.max
                )))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    #[test]
    fn messages_within_the_limit_pass_in_any_split() {
        let mut data = frame(3);
        data.extend_from_slice(b"abc");
        data.extend(frame(0));
        data.extend(frame(10));
        data.extend_from_slice(&[7; 10]);
        // Every way of cutting the stream in two, and byte by byte.
        for cut in 0..=data.len() {
            let mut f = Framing::default();
            assert_eq!(f.scan(&data[..cut], 10), Ok(()));
            assert_eq!(f.scan(&data[cut..], 10), Ok(()));
            assert_eq!((f.have, f.skip), (0, 0), "cut at {cut}");
        }
        let mut f = Framing::default();
        for b in &data {
            assert_eq!(f.scan(std::slice::from_ref(b), 10), Ok(()));
        }
    }

    #[test]
    fn an_oversized_length_prefix_is_refused_before_its_body() {
        let mut data = frame(2);
        data.extend_from_slice(b"ok");
        data.extend(frame(11));
        for cut in 0..data.len() {
            let mut f = Framing::default();
            let r = f
                .scan(&data[..cut], 10)
                .and_then(|()| f.scan(&data[cut..], 10));
            assert_eq!(r, Err(11), "cut at {cut}");
        }
        assert_eq!(
            Framing::default().scan(&frame(u32::MAX), usize::MAX >> 1),
            Ok(())
        );
    }
}
