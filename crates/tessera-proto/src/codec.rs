//! The protobuf codec of the public API (`tessera.v1`): prost's encoder and
//! decoder, except that a message that does not decode is the caller's
//! fault, `INVALID_ARGUMENT`, not `INTERNAL` as in tonic's default codec
//! (our error table reserves `INTERNAL` for bugs). `build.rs` names this
//! codec for every generated `tessera.v1` service and client.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// [`tonic_prost::ProstCodec`] with decode errors as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`; a malformed message is `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct StrictDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_message(buf).map(Some)
    }
}

/// One message from its protobuf encoding; malformed input is
/// `INVALID_ARGUMENT`.
fn decode_message<U: Message + Default>(buf: impl prost::bytes::Buf) -> Result<U, Status> {
    U::decode(buf).map_err(|e| Status::invalid_argument(format!("malformed protobuf message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Result<Option<crate::IssueTokenRequest>, Status> {
        decode_message(bytes).map(Some)
    }

    #[test]
    fn undecodable_protobuf_is_invalid_argument() {
        // Field 1 (audience), length-delimited, claims 100 bytes, has 1.
        let e = decode(&[0x0a, 100, b'x']).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("malformed protobuf"),
            "{}",
            e.message()
        );
        // A wire type that does not exist.
        assert_eq!(
            decode(&[0x0f]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn valid_messages_decode() {
        let m = crate::IssueTokenRequest {
            audience: vec!["a".into()],
            ..Default::default()
        };
        assert_eq!(decode(&m.encode_to_vec()).unwrap().unwrap(), m);
    }
}
