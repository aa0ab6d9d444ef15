//! Codecs that turn an [`Envelope`] into bytes and back.
//!
//! bincode 2 is the default (compact, fast); JSON is selectable for interoperability. The
//! codec used is named in the `content_type` header of every record, so a consumer decodes
//! each record with the codec it was written with, and a node can switch codecs without
//! breaking consumers of older records.

use crate::envelope::Envelope;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("bincode encode failed: {0}")]
    BincodeEncode(#[from] bincode::error::EncodeError),
    #[error("bincode decode failed: {0}")]
    BincodeDecode(#[from] bincode::error::DecodeError),
    #[error("json codec failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown content type {0:?}")]
    UnknownContentType(String),
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
}

/// One way of putting envelopes on the wire.
pub trait Codec {
    /// The `content_type` header value naming this codec.
    fn content_type(&self) -> &'static str;
    fn encode<P: Serialize>(&self, envelope: &Envelope<P>) -> Result<Vec<u8>, CodecError>;
    fn decode<P: DeserializeOwned>(&self, bytes: &[u8]) -> Result<Envelope<P>, CodecError>;
}

/// bincode 2 with its standard configuration (varint integers, little endian).
#[derive(Debug, Clone, Copy, Default)]
pub struct BincodeCodec;

/// serde_json.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

pub const BINCODE_CONTENT_TYPE: &str = "application/x-bincode-v2";
pub const JSON_CONTENT_TYPE: &str = "application/json";

impl Codec for BincodeCodec {
    fn content_type(&self) -> &'static str {
        BINCODE_CONTENT_TYPE
    }
    fn encode<P: Serialize>(&self, envelope: &Envelope<P>) -> Result<Vec<u8>, CodecError> {
        Ok(bincode::serde::encode_to_vec(
            envelope,
            bincode::config::standard(),
        )?)
    }
    fn decode<P: DeserializeOwned>(&self, bytes: &[u8]) -> Result<Envelope<P>, CodecError> {
        let (envelope, read) =
            bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
        if read != bytes.len() {
            return Err(CodecError::TrailingBytes(bytes.len() - read));
        }
        Ok(envelope)
    }
}

impl Codec for JsonCodec {
    fn content_type(&self) -> &'static str {
        JSON_CONTENT_TYPE
    }
    fn encode<P: Serialize>(&self, envelope: &Envelope<P>) -> Result<Vec<u8>, CodecError> {
        Ok(serde_json::to_vec(envelope)?)
    }
    fn decode<P: DeserializeOwned>(&self, bytes: &[u8]) -> Result<Envelope<P>, CodecError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// The codec chosen in config (`journal.codec = "bincode" | "json"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecKind {
    #[default]
    Bincode,
    Json,
}

impl CodecKind {
    /// The codec named by a record's `content_type` header.
    pub fn from_content_type(content_type: &str) -> Result<Self, CodecError> {
        match content_type {
            BINCODE_CONTENT_TYPE => Ok(Self::Bincode),
            JSON_CONTENT_TYPE => Ok(Self::Json),
            other => Err(CodecError::UnknownContentType(other.to_string())),
        }
    }
}

impl Codec for CodecKind {
    fn content_type(&self) -> &'static str {
        match self {
            Self::Bincode => BincodeCodec.content_type(),
            Self::Json => JsonCodec.content_type(),
        }
    }
    fn encode<P: Serialize>(&self, envelope: &Envelope<P>) -> Result<Vec<u8>, CodecError> {
        match self {
            Self::Bincode => BincodeCodec.encode(envelope),
            Self::Json => JsonCodec.encode(envelope),
        }
    }
    fn decode<P: DeserializeOwned>(&self, bytes: &[u8]) -> Result<Envelope<P>, CodecError> {
        match self {
            Self::Bincode => BincodeCodec.decode(bytes),
            Self::Json => JsonCodec.decode(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    enum Payload {
        Created {
            amount: i64,
            currency: String,
            metadata: BTreeMap<String, String>,
        },
        Other(u32),
    }

    fn envelope(amount: i64, seq: u64, corr: Option<String>) -> Envelope<Payload> {
        Envelope {
            event_id: Uuid::now_v7(),
            event_type: "payment.created".into(),
            schema_version: 1,
            payment_id: "pay_1".into(),
            merchant_id: "mer_1".into(),
            sequence: seq,
            occurred_at_micros: 1_700_000_000_000_000,
            correlation_id: corr,
            payload: Payload::Created {
                amount,
                currency: "EUR".into(),
                metadata: BTreeMap::from([("k".to_string(), "v".to_string())]),
            },
        }
    }

    proptest! {
        #[test]
        fn both_codecs_round_trip(amount in 1i64..i64::MAX, seq in 1u64..u64::MAX, corr in proptest::option::of("[a-z0-9-]{0,20}")) {
            let env = envelope(amount, seq, corr);
            for kind in [CodecKind::Bincode, CodecKind::Json] {
                let bytes = kind.encode(&env).unwrap();
                let back: Envelope<Payload> = kind.decode(&bytes).unwrap();
                prop_assert_eq!(&back, &env);
            }
        }
    }

    #[test]
    fn content_type_names_the_codec() {
        for kind in [CodecKind::Bincode, CodecKind::Json] {
            assert_eq!(
                CodecKind::from_content_type(kind.content_type()).unwrap(),
                kind
            );
        }
        assert!(CodecKind::from_content_type("text/plain").is_err());
    }

    #[test]
    fn bincode_refuses_truncated_and_padded_input() {
        let bytes = BincodeCodec.encode(&envelope(5, 1, None)).unwrap();
        assert!(BincodeCodec
            .decode::<Payload>(&bytes[..bytes.len() - 1])
            .is_err());
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(BincodeCodec.decode::<Payload>(&padded).is_err());
        let _ = Payload::Other(1);
    }
}
