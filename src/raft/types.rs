//! The replicated data model: openraft's type configuration, the commands the
//! leader proposes and what applying them answers.
//!
//! This file is data only (no I/O) so that `store` can implement openraft's
//! storage traits for it without depending on the network or the services.

use serde::{Deserialize, Serialize};

/// A node's id in the Raft group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft type configuration for Tessera.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What the cluster knows about a member: where to reach it and which
/// incarnation of its data it is.
///
/// The incarnation is a random number a node draws when it creates its
/// database. A node whose data was wiped comes back with a new one; its
/// peers then refuse its votes and acknowledgements (they no longer speak
/// for the state it had promised), until an operator removes it and adds it
/// again as a fresh learner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Address of the node's Raft listener (host:port).
    pub raft_addr: String,
    /// Address of the node's public API (host:port), for leader hints.
    pub api_addr: String,
    /// Incarnation of the node's data.
    pub incarnation: u64,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "raft {} api {} incarnation {:016x}",
            self.raft_addr, self.api_addr, self.incarnation
        )
    }
}

/// A Raft log id for this type configuration.
pub type LogId = openraft::LogId<NodeId>;
/// A Raft log entry for this type configuration.
pub type Entry = openraft::Entry<TypeConfig>;
/// Membership as stored alongside the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
/// A snapshot of the state machine.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// openraft's storage error for this configuration.
pub type StorageError = openraft::StorageError<NodeId>;

/// One replicated command. `at` is the leader's clock (unix seconds) at the
/// time it proposed the command: applying a command never reads the local
/// clock, so every replica computes the same state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Leader wall-clock time in unix seconds when the command was proposed.
    pub at: u64,
    /// What to do.
    pub op: Op,
}

/// The operations the state machine understands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Revoke tokens by `jti`. Every token whose own `jti` or any ancestor
    /// `jti` is listed becomes inactive. `until` is when the entry may be
    /// purged: no token it can match is still valid after it.
    RevokeJtis {
        /// The revoked `jti`s with their purge times.
        jtis: Vec<RevokedJti>,
    },
    /// Every token of `subject` minted by a node that had not applied this
    /// entry (its `tsr_rev` is below the entry's log index) is inactive; a
    /// token without `tsr_rev` is, if issued at or before `cutoff`.
    RevokeSubject {
        /// The token `sub` claim value.
        subject: String,
        /// Tokens without `tsr_rev` and with `iat <= cutoff` are inactive.
        cutoff: u64,
        /// When the entry may be purged.
        until: u64,
    },
    /// Every token whose `client_id` is `client` minted below the entry's
    /// log index (`tsr_rev`) is inactive; a token without `tsr_rev` is, if
    /// issued at or before `cutoff`.
    RevokeClient {
        /// The token `client_id` claim value (the caller identity it was issued to).
        client: String,
        /// Tokens without `tsr_rev` and with `iat <= cutoff` are inactive.
        cutoff: u64,
        /// When the entry may be purged.
        until: u64,
    },
    /// Store a new version of the policy document. The version is the log
    /// index the command is applied at.
    PutPolicy {
        /// Cedar policy text, validated against the schema before proposal.
        text: String,
    },
    /// Add a signing key to the key ring.
    AddKey {
        /// The key record (private part sealed with the cluster KEK).
        key: KeyRecord,
    },
    /// Change a key's lifecycle state. Kept for logs written before the
    /// guarded key commands below existed; nothing proposes it any more.
    SetKeyState {
        /// Key id.
        kid: String,
        /// New state.
        state: KeyState,
    },
    /// Start a rotation: add `key` as pending. Applied only if the key ring
    /// is still at `expected_version` (its `keys_version` when the leader
    /// decided) and holds no pending key: of concurrent or repeated
    /// rotations exactly one adds a key, the others change nothing.
    AddPendingKey {
        /// The new key, state `Pending`, sealed under the leader's KEK.
        key: KeyRecord,
        /// The key-ring version the rotation was decided on.
        expected_version: u64,
    },
    /// Make a pending key the one active key: applied only if `kid` is
    /// pending and its `activate_after` has passed at the command's time
    /// (or `early` is set).
    /// Every other active key is retired in the same step, and may be
    /// removed `retire_grace` seconds later.
    ActivateKey {
        /// The pending key.
        kid: String,
        /// Seconds a retired key stays published: the longest token
        /// lifetime plus leeway plus clock skew, as the leader computed it.
        retire_grace: u64,
        /// Emergency rotation: activate before `activate_after`.
        #[serde(default)]
        early: bool,
    },
    /// Drop a retired key from the ring (and the JWKS): applied only if it
    /// is retired and its `remove_after` has passed at the command's time.
    RemoveKey {
        /// The retired key.
        kid: String,
    },
    /// KEK rotation: replace every key's sealed private key in one step.
    /// Applied only if the ring is still at `expected_version` and `keys`
    /// names exactly the keys it holds, so no key stays behind under the
    /// old KEK.
    ResealKeys {
        /// Each key re-sealed.
        keys: Vec<ResealedKey>,
        /// The key-ring version the re-sealing was computed from.
        expected_version: u64,
    },
    /// Drop revocation entries whose `until` is before `at`.
    Purge,
    /// Several revocations proposed as one log entry (the proposer batches
    /// concurrent writes). Applied in order; each answers its own `changed`.
    Batch {
        /// The revocations, never a nested batch.
        ops: Vec<Op>,
    },
}

/// A revoked `jti` and when it may be forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedJti {
    /// The token id.
    pub jti: String,
    /// Unix seconds after which no token carrying this `jti` can be valid.
    pub until: u64,
}

/// One key's private part sealed under a new KEK ([`Op::ResealKeys`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResealedKey {
    /// Key id.
    pub kid: String,
    /// Nonce followed by the AES-256-GCM ciphertext under the new KEK.
    pub sealed_private_key: Vec<u8>,
    /// Id of the new KEK.
    pub kek_id: String,
}

impl std::fmt::Debug for ResealedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResealedKey")
            .field("kid", &self.kid)
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

/// Lifecycle of a signing key. Pending keys are published but never sign;
/// active keys sign; retired keys are published until their
/// `remove_after` so that the tokens they signed still verify; then the key
/// is removed from the ring ([`Op::RemoveKey`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// Published in JWKS, not yet signing.
    Pending,
    /// Signs new tokens.
    Active,
    /// No longer signs; published until every token it signed has expired.
    Retired,
}

/// A signing key as replicated. The private key never travels or rests in
/// the clear: `sealed_private_key` is AES-256-GCM under the cluster KEK.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Key id (`kid`).
    pub kid: String,
    /// JWS algorithm, `EdDSA` or `ES256`.
    pub alg: String,
    /// Raw public key bytes (32 bytes for Ed25519, SEC1 uncompressed for P-256).
    pub public_key: Vec<u8>,
    /// Nonce followed by the AES-256-GCM ciphertext of the PKCS#8 private key.
    pub sealed_private_key: Vec<u8>,
    /// Id of the KEK that sealed it (a hash prefix, never the KEK itself).
    pub kek_id: String,
    /// Lifecycle state.
    pub state: KeyState,
    /// Unix seconds when the key was created.
    pub created_at: u64,
    /// Lifecycle times (absent in records written before they existed).
    #[serde(default)]
    pub times: KeyTimes,
}

/// When a key may, and did, change state. Unix seconds, leader-stamped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyTimes {
    /// Earliest time the key may become active: its creation plus the
    /// publish-ahead window (its creation for an emergency rotation).
    #[serde(default)]
    pub activate_after: u64,
    /// When it became active.
    #[serde(default)]
    pub activated_at: Option<u64>,
    /// When it was retired.
    #[serde(default)]
    pub retired_at: Option<u64>,
    /// Earliest time a retired key may be removed: every token it signed
    /// has expired, plus leeway and clock skew.
    #[serde(default)]
    pub remove_after: Option<u64>,
}

impl std::fmt::Debug for KeyRecord {
    // The sealed key is not secret without the KEK, but it has no business in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("state", &self.state)
            .field("kek_id", &self.kek_id)
            .field("created_at", &self.created_at)
            .field("times", &self.times)
            .finish_non_exhaustive()
    }
}

/// What applying a command answers. `revision` is the log index the command
/// was applied at: the state machine's revision after it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// Log index at which the command took effect.
    pub revision: u64,
    /// How many entries the command changed (0 for an idempotent repeat).
    pub changed: u64,
    /// For a [`Op::Batch`]: each operation's `changed`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_each: Vec<u64>,
}
