//! How a Raft log entry is stored in the log: MessagePack behind a
//! one-byte format tag, and the JSON that earlier versions wrote.
//!
//! Every entry is encoded once per node and decoded several times on the
//! leader (once per follower it is replicated to, once more to apply it),
//! so the format is on the write path. MessagePack is the encoding the Raft
//! messages already use on the wire ([`crate::raft::codec`], structs as
//! maps: a field added later with a default still decodes); it is about
//! two thirds the size of the JSON and cheaper to read.
//!
//! A stored entry starts with [`BINARY`] and continues with MessagePack.
//! Anything else is read as JSON, so a node upgraded in place reads the log
//! it wrote before. JSON text never starts with byte 1 (serde_json writes no
//! leading whitespace, and JSON whitespace is never byte 1), and neither
//! does a chunk manifest (byte 0, see [`super::chunk`]), which is resolved
//! before the bytes get here. A node downgraded to a version that only
//! reads JSON cannot read entries written in this format: downgrades go
//! through a backup restore.

use super::db::{self, T_LOG};
use super::StoreError;
use crate::raft::{codec, Entry};

/// First byte of an entry stored as MessagePack.
const BINARY: u8 = 1;

/// Encodes `entry` for the log (tag, then MessagePack).
pub(crate) fn encode(entry: &Entry) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::with_capacity(128);
    buf.push(BINARY);
    codec::encode_to(&mut buf, entry).map_err(StoreError::EncodeEntry)?;
    Ok(buf)
}

/// Decodes an entry read from the log, in either format.
pub(crate) fn decode(bytes: &[u8]) -> Result<Entry, StoreError> {
    match bytes.split_first() {
        Some((&BINARY, rest)) => codec::decode(rest).map_err(|e| StoreError::Corrupt {
            tree: T_LOG,
            reason: e.to_string(),
        }),
        // Written by a version that stored entries as JSON.
        _ => db::decode(T_LOG, bytes),
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use openraft::{EntryPayload, Membership};

    use super::*;
    use crate::raft::{Command, NodeInfo, Op, RevokedJti};

    fn entries() -> Vec<Entry> {
        let node = NodeInfo {
            raft_addr: "127.0.0.1:7001".into(),
            api_addr: "127.0.0.1:8001".into(),
            incarnation: 7,
        };
        let jtis = (0..40)
            .map(|i| RevokedJti {
                jti: format!("jti-{i:018}-ü"),
                until: 1_800_000_000 + i,
            })
            .collect();
        let members = std::collections::BTreeMap::from([(1, node)]);
        vec![
            Entry {
                log_id: log_id(1, 1, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(1, 1, 2),
                payload: EntryPayload::Membership(Membership::new(
                    vec![std::collections::BTreeSet::from([1])],
                    members,
                )),
            },
            Entry {
                log_id: log_id(2, 1, 3),
                payload: EntryPayload::Normal(Command {
                    at: 1_799_999_000,
                    op: Op::RevokeJtis { jtis },
                }),
            },
        ]
    }

    #[test]
    fn entries_round_trip_in_the_binary_format() {
        for e in entries() {
            let bytes = encode(&e).unwrap();
            assert_eq!(bytes[0], BINARY);
            let back = decode(&bytes).unwrap();
            assert_eq!(
                serde_json::to_value(&back).unwrap(),
                serde_json::to_value(&e).unwrap()
            );
        }
    }

    // A node upgraded in place reads the JSON entries it wrote before.
    #[test]
    fn entries_stored_as_json_by_earlier_versions_still_decode() {
        for e in entries() {
            let json = serde_json::to_vec(&e).unwrap();
            let back = decode(&json).unwrap();
            assert_eq!(
                serde_json::to_value(&back).unwrap(),
                serde_json::to_value(&e).unwrap()
            );
        }
    }

    #[test]
    fn the_binary_format_is_smaller_than_json() {
        let e = entries().pop().unwrap();
        let binary = encode(&e).unwrap().len();
        let json = serde_json::to_vec(&e).unwrap().len();
        assert!(binary < json, "{binary} bytes binary against {json} JSON");
    }

    #[test]
    fn damaged_entries_are_corrupt_not_panics() {
        for bad in [&[BINARY][..], &[BINARY, 0xc1], b"{\"log_id\"", b""] {
            assert!(
                matches!(decode(bad), Err(StoreError::Corrupt { tree: T_LOG, .. })),
                "{bad:?}"
            );
        }
    }
}
