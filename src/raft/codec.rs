//! The binary encoding of Raft messages on the wire: MessagePack of
//! openraft's own serde types (and of forwarded commands).
//!
//! MessagePack is self-describing, so every serde shape openraft uses
//! (enums, options, nested errors carrying `AnyError`) round-trips without a
//! schema of our own. Structs are encoded as maps with field names
//! (`to_vec_named`): a few bytes more per message, but a field added in a
//! later openraft release fails loudly instead of shifting positions.
//!
//! The size of what is decoded is bounded before it gets here: the gRPC
//! layer refuses messages larger than [`super::MAX_MESSAGE_SIZE`].

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Errors encoding or decoding a Raft message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be encoded (a bug: every type sent is plain data).
    #[error("cannot encode a Raft message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The bytes are not a valid encoding of the expected type.
    #[error("cannot decode a Raft message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// Encodes `value` as MessagePack (structs as maps, `Vec<u8>` as binary).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::new();
    encode_to(&mut buf, value)?;
    Ok(buf)
}

/// [`encode`], appending to `buf` (the log store puts a format tag first).
pub fn encode_to<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> Result<(), CodecError> {
    let mut ser = rmp_serde::Serializer::new(buf)
        .with_struct_map()
        .with_bytes(rmp_serde::config::BytesMode::ForceIterables);
    value.serialize(&mut ser)?;
    Ok(())
}

/// Decodes a MessagePack value produced by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::error::{
        ClientWriteError, Fatal, ForwardToLeader, InstallSnapshotError, RaftError, SnapshotMismatch,
    };
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft::testing::log_id;
    use openraft::{EntryPayload, Membership, SnapshotMeta, StoredMembership, Vote};

    use super::*;
    use crate::raft::{
        Command, CommandResponse, Entry, KeyRecord, KeyState, NodeId, NodeInfo, Op, RevokedJti,
        TypeConfig,
    };

    fn node(i: u64) -> NodeInfo {
        NodeInfo {
            raft_addr: format!("127.0.0.1:{}", 7000 + i),
            api_addr: format!("127.0.0.1:{}", 8000 + i),
            incarnation: 0x1234_5678_9abc_def0 + i,
        }
    }

    fn every_op() -> Vec<Op> {
        vec![
            Op::RevokeJtis {
                jtis: vec![
                    RevokedJti {
                        jti: "j1".into(),
                        until: 10,
                    },
                    RevokedJti {
                        jti: "ü-ñ".into(),
                        until: u64::MAX,
                    },
                ],
            },
            Op::RevokeSubject {
                subject: "alice".into(),
                cutoff: 5,
                until: 6,
            },
            Op::RevokeClient {
                client: "spiffe://td/svc/orders".into(),
                cutoff: 7,
                until: 8,
            },
            Op::PutPolicy {
                text: "permit(principal, action, resource);".into(),
            },
            Op::AddKey {
                key: KeyRecord {
                    kid: "k1".into(),
                    alg: "EdDSA".into(),
                    public_key: vec![0, 1, 255],
                    sealed_private_key: vec![7; 100],
                    kek_id: "kek".into(),
                    state: KeyState::Pending,
                    created_at: 3,
                    times: Default::default(),
                },
            },
            Op::SetKeyState {
                kid: "k1".into(),
                state: KeyState::Retired,
            },
            Op::Purge,
            Op::AddPendingKey {
                key: KeyRecord {
                    kid: "k2".into(),
                    alg: "ES256".into(),
                    public_key: vec![4; 65],
                    sealed_private_key: vec![8; 90],
                    kek_id: "kek".into(),
                    state: KeyState::Pending,
                    created_at: 3,
                    times: crate::raft::KeyTimes {
                        activate_after: 603,
                        activated_at: None,
                        retired_at: Some(9),
                        remove_after: Some(10),
                    },
                },
                expected_version: 7,
            },
            Op::ActivateKey {
                kid: "k2".into(),
                retire_grace: 3660,
                early: true,
            },
            Op::RemoveKey { kid: "k1".into() },
            Op::ResealKeys {
                keys: vec![crate::raft::ResealedKey {
                    kid: "k2".into(),
                    sealed_private_key: vec![1; 90],
                    kek_id: "kek2".into(),
                }],
                expected_version: 9,
            },
        ]
    }

    /// A blank entry, `membership`, then one entry per command.
    fn entries_with_every_op(membership: Membership<NodeId, NodeInfo>) -> Vec<Entry> {
        let mut entries: Vec<Entry> = vec![
            Entry {
                log_id: log_id(1, 1, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(1, 1, 2),
                payload: EntryPayload::Membership(membership),
            },
        ];
        for (i, op) in every_op().into_iter().enumerate() {
            entries.push(Entry {
                log_id: log_id(2, 3, 3 + i as u64),
                payload: EntryPayload::Normal(Command { at: 99, op }),
            });
        }
        entries
    }

    fn round_trip<T>(value: &T) -> T
    where
        T: Serialize + DeserializeOwned,
    {
        decode(&encode(value).unwrap()).unwrap()
    }

    #[test]
    fn append_entries_with_every_op_and_membership_round_trips() {
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let nodes = (1..=4).map(|i| (i, node(i)));
        let membership = Membership::new(
            vec![members],
            nodes.collect::<std::collections::BTreeMap<_, _>>(),
        );
        let entries = entries_with_every_op(membership);
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 3),
            prev_log_id: Some(log_id(1, 1, 0)),
            leader_commit: None,
            entries,
        };
        let back = round_trip(&req);
        assert_eq!(back.vote, req.vote);
        assert_eq!(back.prev_log_id, req.prev_log_id);
        assert_eq!(back.leader_commit, req.leader_commit);
        assert_eq!(back.entries, req.entries);
        assert_eq!(back.entries.len(), 2 + every_op().len());
    }

    #[test]
    fn vote_messages_round_trip() {
        let req = VoteRequest::<NodeId>::new(Vote::new(5, 2), Some(log_id(4, 1, 77)));
        assert_eq!(round_trip(&req), req);
        let resp = VoteResponse::<NodeId> {
            vote: Vote::new(5, 2),
            vote_granted: true,
            last_log_id: None,
        };
        assert_eq!(round_trip(&resp), resp);
    }

    #[test]
    fn install_snapshot_request_round_trips() {
        let mut nodes = std::collections::BTreeMap::new();
        nodes.insert(1, node(1));
        let membership = Membership::new(vec![[1].into()], nodes);
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(3, 1, 40)),
                last_membership: StoredMembership::new(Some(log_id(1, 1, 1)), membership),
                snapshot_id: "3-40-abc".into(),
            },
            offset: 4 << 20,
            data: (0..=255u8).cycle().take(70_000).collect(),
            done: false,
        };
        let back = round_trip(&req);
        assert_eq!(back.vote, req.vote);
        assert_eq!(back.meta, req.meta);
        assert_eq!(back.offset, req.offset);
        assert_eq!(back.data, req.data);
        assert_eq!(back.done, req.done);
        // Bytes travel as a MessagePack binary, not an array of numbers.
        let bytes = encode(&req).unwrap();
        assert!(bytes.len() < req.data.len() + 1024, "{}", bytes.len());
    }

    #[test]
    fn replies_with_results_round_trip() {
        type AppendReply = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
        for r in [
            Ok(AppendEntriesResponse::Success),
            Ok(AppendEntriesResponse::Conflict),
            Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(1, 2, 3)))),
            Ok(AppendEntriesResponse::HigherVote(Vote::new(9, 3))),
            Err(RaftError::Fatal(Fatal::Stopped)),
            Err(RaftError::Fatal(Fatal::Panicked)),
        ] {
            let r: AppendReply = r;
            assert_eq!(round_trip(&r), r);
        }

        type SnapReply =
            Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;
        for r in [
            Ok(InstallSnapshotResponse {
                vote: Vote::new(1, 1),
            }),
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
                SnapshotMismatch {
                    expect: openraft::SnapshotSegmentId {
                        id: "a".into(),
                        offset: 0,
                    },
                    got: openraft::SnapshotSegmentId {
                        id: "b".into(),
                        offset: 5,
                    },
                },
            ))),
        ] {
            let r: SnapReply = r;
            assert_eq!(round_trip(&r), r);
        }

        type WriteReply =
            Result<CommandResponse, RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>>;
        for r in [
            Ok(CommandResponse {
                revision: 12,
                changed: 1,
                ..Default::default()
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
                ForwardToLeader::new(2, node(2)),
            ))),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
                ForwardToLeader::empty(),
            ))),
        ] {
            let r: WriteReply = r;
            assert_eq!(round_trip(&r), r);
        }
        let cmd = Command {
            at: 1,
            op: every_op().remove(0),
        };
        assert_eq!(round_trip(&cmd), cmd);
    }

    /// The file of wire messages as a release encoded them: one line per
    /// message, its name and its bytes in hex.
    const WIRE_FIXTURE: &str = "tests/fixtures/wire-2026-12-01.txt";

    fn to_hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// One message of each kind nodes send each other, every command and
    /// error shape included, under a stable name.
    /// A message's name, its bytes, and a function that decodes bytes as
    /// its type and encodes them again.
    type Golden = (&'static str, Vec<u8>, fn(&[u8]) -> Vec<u8>);

    fn wire_messages() -> Vec<Golden> {
        fn again<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Vec<u8> {
            encode(&decode::<T>(bytes).unwrap()).unwrap()
        }
        type AppendReply = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
        type SnapReply =
            Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;
        type WriteReply =
            Result<CommandResponse, RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>>;
        let nodes: std::collections::BTreeMap<NodeId, NodeInfo> =
            (1..=4).map(|i| (i, node(i))).collect();
        let joint = Membership::new(vec![[1, 2, 3].into(), [2, 3, 4].into()], nodes.clone());
        let entries = entries_with_every_op(joint.clone());
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 3),
            prev_log_id: Some(log_id(1, 1, 0)),
            leader_commit: Some(log_id(1, 1, 2)),
            entries,
        };
        let snapshot = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(3, 1, 40)),
                last_membership: StoredMembership::new(Some(log_id(1, 1, 2)), joint),
                snapshot_id: "3-40-7".into(),
            },
            offset: 4 << 20,
            data: (0..=255u8).collect(),
            done: true,
        };
        let mut out: Vec<Golden> = Vec::new();
        macro_rules! add {
            ($name:expr, $ty:ty, $value:expr) => {{
                let v: $ty = $value;
                out.push(($name, encode(&v).unwrap(), again::<$ty>));
            }};
        }
        add!("append_entries", AppendEntriesRequest<TypeConfig>, append);
        add!(
            "install_snapshot",
            InstallSnapshotRequest<TypeConfig>,
            snapshot
        );
        add!(
            "vote",
            VoteRequest<NodeId>,
            VoteRequest::new(Vote::new(5, 2), Some(log_id(4, 1, 77)))
        );
        add!(
            "vote_reply",
            VoteResponse<NodeId>,
            VoteResponse {
                vote: Vote::new(5, 2),
                vote_granted: true,
                last_log_id: Some(log_id(4, 1, 77)),
            }
        );
        for (name, r) in [
            ("append_ok", Ok(AppendEntriesResponse::Success)),
            ("append_conflict", Ok(AppendEntriesResponse::Conflict)),
            (
                "append_partial",
                Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(1, 2, 3)))),
            ),
            (
                "append_higher_vote",
                Ok(AppendEntriesResponse::HigherVote(Vote::new(9, 3))),
            ),
            ("append_stopped", Err(RaftError::Fatal(Fatal::Stopped))),
        ] {
            add!(name, AppendReply, r);
        }
        add!(
            "snapshot_ok",
            SnapReply,
            Ok(InstallSnapshotResponse {
                vote: Vote::new(1, 1),
            })
        );
        add!(
            "write_ok",
            WriteReply,
            Ok(CommandResponse {
                revision: 12,
                changed: 1,
                ..Default::default()
            })
        );
        add!(
            "write_forward",
            WriteReply,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
                ForwardToLeader::new(2, node(2)),
            )))
        );
        add!(
            "command",
            Command,
            Command {
                at: 1,
                op: every_op().remove(0),
            }
        );
        out
    }

    /// Nodes of two releases talk during a rolling upgrade: what one
    /// release sent must decode in the next. This pins the encoding of
    /// every Raft message to the bytes of the fixture; a deliberate change
    /// adds a fixture of its own (and keeps decoding the old one). Write
    /// the fixture with `TESSERA_WRITE_FIXTURE=1` when it does not exist.
    #[test]
    fn wire_messages_encode_as_the_release_of_2026_12_01_did() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(WIRE_FIXTURE);
        let messages = wire_messages();
        if !path.exists() && std::env::var_os("TESSERA_WRITE_FIXTURE").is_some() {
            let text: String = messages
                .iter()
                .map(|(name, bytes, _)| format!("{name} {}\n", to_hex(bytes)))
                .collect();
            std::fs::write(&path, text).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let fixture: std::collections::BTreeMap<&str, Vec<u8>> = text
            .lines()
            .map(|l| {
                let (name, hex) = l.split_once(' ').unwrap();
                (name, from_hex(hex))
            })
            .collect();
        assert_eq!(fixture.len(), messages.len(), "one line per message");
        for (name, bytes, again) in &messages {
            let old = &fixture[name];
            assert_eq!(
                again(old),
                *old,
                "{name}: the release's bytes no longer decode to the same message"
            );
            assert_eq!(
                bytes, old,
                "{name}: encoded differently than the release did"
            );
        }
    }

    #[test]
    fn garbage_and_wrong_types_are_decode_errors() {
        assert!(matches!(
            decode::<VoteRequest<NodeId>>(b"\xc1garbage"),
            Err(CodecError::Decode(_))
        ));
        assert!(matches!(
            decode::<VoteRequest<NodeId>>(&[]),
            Err(CodecError::Decode(_))
        ));
        let bytes = encode(&CommandResponse {
            revision: 1,
            changed: 0,
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            decode::<AppendEntriesRequest<TypeConfig>>(&bytes),
            Err(CodecError::Decode(_))
        ));
        // A truncated message never panics.
        let full = encode(&Command {
            at: 5,
            op: every_op().remove(4),
        })
        .unwrap();
        for n in 0..full.len() {
            assert!(decode::<Command>(&full[..n]).is_err(), "prefix {n}");
        }
    }
}
