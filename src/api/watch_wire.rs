//! The wire side of `RevocationService`: what a subscriber's stream yields
//! ([`Frame`]), how it is encoded, and the gRPC service that serves it.
//!
//! A node sends each revocation event to every subscriber (a thousand
//! streams for one event). Building a `WatchEvent` per stream — cloning
//! every revoked id into protobuf structs, encoding them, freeing them —
//! repeats the same work a thousand times, so an event's encodings are
//! made once, by the first stream that sends it, and kept with the event
//! in the feed ([`FeedEvent::encoded`]); every other stream copies those
//! bytes into its gRPC frame. The bytes are exactly what prost gives for
//! the same message (a test compares them), so the wire format is
//! unchanged. A `revoked_batch` message is assembled from per-event
//! parts: in protobuf, a repeated field's encoding is the concatenation of
//! its elements' encodings.
//!
//! The service is written out instead of generated because the generated
//! one only yields `WatchEvent` structs; it answers the same path with the
//! same codec rules (malformed requests are `INVALID_ARGUMENT`).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::{BufMut, Bytes};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::{Request, Response, Status};

use super::watch_service::{batch_msg, event_msg, WatchApi, WatchStream};
use crate::pb;
use crate::store::FeedEvent;

/// One message of a subscriber's stream.
pub(crate) enum Frame {
    /// Any message, built for this stream (snapshot chunks, heartbeats, and
    /// events when shared encoding is off).
    Msg(pb::WatchEvent),
    /// One event as a `revoked` message, from its shared encoding.
    Event(Arc<FeedEvent>),
    /// Consecutive events as one `revoked_batch` message, from their
    /// shared encodings.
    Batch(Vec<Arc<FeedEvent>>),
}

/// Slot of [`FeedEvent::encoded`] holding the whole `revoked` message.
const SLOT_EVENT: usize = 0;
/// Slot holding the event as one element of `RevokedBatch.events`.
const SLOT_PART: usize = 1;
/// `WatchEvent.revision`.
const FIELD_REVISION: u32 = 1;
/// `WatchEvent.revoked_batch`.
const FIELD_REVOKED_BATCH: u32 = 6;

fn event_bytes(e: &FeedEvent) -> Bytes {
    e.encoded(SLOT_EVENT, |e| event_msg(e).encode_to_vec().into())
}

/// `RevokedBatch { events: [e] }` encodes as exactly the one element of
/// the repeated field (key, length, `RevokedEvent`): a part to concatenate.
fn part_bytes(e: &Arc<FeedEvent>) -> Bytes {
    e.encoded(SLOT_PART, |_| {
        match batch_msg(std::slice::from_ref(e)).kind {
            Some(pb::watch_event::Kind::RevokedBatch(b)) => b.encode_to_vec().into(),
            _ => Bytes::new(),
        }
    })
}

/// Writes `WatchEvent { revision, revoked_batch: { events: parts } }` in
/// prost's field order.
fn put_batch(revision: u64, parts: &[Bytes], dst: &mut impl BufMut) {
    if revision != 0 {
        encode_key(FIELD_REVISION, WireType::Varint, dst);
        encode_varint(revision, dst);
    }
    let len: usize = parts.iter().map(Bytes::len).sum();
    encode_key(FIELD_REVOKED_BATCH, WireType::LengthDelimited, dst);
    encode_varint(len as u64, dst);
    for p in parts {
        dst.put_slice(p);
    }
}

impl Frame {
    /// Encodes this frame's message into `dst`.
    fn encode_into(self, dst: &mut impl BufMut) -> Result<(), Status> {
        // The buffer grows as needed: running out of room is a bug.
        let no_room = |need: usize| {
            Status::internal(format!("no room to encode a {need}-byte watch message"))
        };
        match self {
            Frame::Msg(m) => m
                .encode(dst)
                .map_err(|e| Status::internal(format!("encoding a watch message: {e}"))),
            Frame::Event(e) => {
                let b = event_bytes(&e);
                if dst.remaining_mut() < b.len() {
                    return Err(no_room(b.len()));
                }
                dst.put_slice(&b);
                Ok(())
            }
            Frame::Batch(events) => {
                let revision = events.last().map_or(0, |e| e.revision);
                let parts: Vec<Bytes> = events.iter().map(part_bytes).collect();
                let len: usize = parts.iter().map(Bytes::len).sum();
                let need =
                    1 + encoded_len_varint(revision) + 1 + encoded_len_varint(len as u64) + len;
                if dst.remaining_mut() < need {
                    return Err(no_room(need));
                }
                put_batch(revision, &parts, dst);
                Ok(())
            }
        }
    }
}

/// The codec of `WatchRevocations`: [`Frame`]s out, the strict decoder in.
struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = Frame;
    type Decode = pb::WatchRequest;
    type Encoder = FrameEncoder;
    type Decoder = pb::codec::StrictDecoder<pb::WatchRequest>;

    fn encoder(&mut self) -> FrameEncoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        pb::codec::StrictCodec::<pb::WatchEvent, pb::WatchRequest>::default().decoder()
    }
}

struct FrameEncoder;

impl Encoder for FrameEncoder {
    type Item = Frame;
    type Error = Status;

    fn encode(&mut self, item: Frame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode_into(dst)
    }
}

/// `tessera.v1.RevocationService`, serving [`WatchApi`].
#[derive(Clone)]
pub(crate) struct WatchServer(Arc<WatchApi>);

impl WatchServer {
    pub(crate) fn new(api: WatchApi) -> Self {
        Self(Arc::new(api))
    }
}

impl tonic::server::NamedService for WatchServer {
    const NAME: &'static str = "tessera.v1.RevocationService";
}

/// The one method, as tonic's server-streaming handler wants it.
struct WatchMethod(Arc<WatchApi>);

impl tonic::server::ServerStreamingService<pb::WatchRequest> for WatchMethod {
    type Response = Frame;
    type ResponseStream = WatchStream;
    type Future = BoxFuture<Response<WatchStream>, Status>;

    fn call(&mut self, request: Request<pb::WatchRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.watch_revocations(request).await })
    }
}

impl<B> Service<http::Request<B>> for WatchServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let api = self.0.clone();
        if req.uri().path() == "/tessera.v1.RevocationService/WatchRevocations" {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(WatchCodec);
                Ok(grpc.server_streaming(WatchMethod(api), req).await)
            })
        } else {
            Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Revocation, RevocationEvent};

    fn ev(revision: u64, n: usize) -> Arc<FeedEvent> {
        Arc::new(FeedEvent::new(RevocationEvent {
            revision,
            revocations: (0..n)
                .map(|i| match i % 3 {
                    0 => Revocation::Jti {
                        jti: format!("j{revision}-{i}"),
                        until: 100 + i as u64,
                    },
                    1 => Revocation::Subject {
                        subject: format!("s{i}"),
                        cutoff: 7,
                        until: 9,
                        revision,
                    },
                    _ => Revocation::Client {
                        client: format!("spiffe://td/c{i}"),
                        cutoff: 3,
                        until: 1 << 40,
                        revision,
                    },
                })
                .collect(),
        }))
    }

    fn bytes(f: Frame) -> Vec<u8> {
        let mut v = Vec::new();
        f.encode_into(&mut v).unwrap();
        v
    }

    // Old clients decode what prost would have sent them: the shared bytes
    // must be the same, byte for byte, for single events and batches.
    #[test]
    fn shared_encodings_are_what_prost_encodes() {
        for n in [0, 1, 5] {
            let e = ev(42, n);
            let want = event_msg(&e).encode_to_vec();
            assert_eq!(bytes(Frame::Event(e.clone())), want);
            // Twice: the second time from the cached bytes.
            assert_eq!(bytes(Frame::Event(e)), want);
        }
        let evs = [ev(7, 1), ev(9, 3), ev(300, 0), ev(1 << 33, 2)];
        for k in 1..=evs.len() {
            let want = batch_msg(&evs[..k]).encode_to_vec();
            assert_eq!(bytes(Frame::Batch(evs[..k].to_vec())), want);
            let got = pb::WatchEvent::decode(&want[..]).unwrap();
            assert_eq!(got, batch_msg(&evs[..k]));
        }
    }
}
