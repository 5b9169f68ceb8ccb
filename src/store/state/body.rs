//! The snapshot encoding of the state, also the body of a backup.
//!
//! # Format 2 (written)
//!
//! Binary, little-endian, streamed in both directions (never held whole):
//!
//! ```text
//! "TESSNAP\0"  u32 format = 2
//! u64 n, n bytes: JSON head (last applied, membership, keys, policy, ...)
//! subjects: u64 n, then n × (str name, u64 cutoff, u64 until, u64 revision)
//! clients:  the same
//! minted jtis: u64 n, then n × (16 bytes, u64 until), ascending
//! other jtis:  u64 n, then n × (str jti, u64 until), ascending
//! "TESSEND\0"
//! ```
//!
//! where `str` is a u32 length and UTF-8 bytes. Every section is sorted, so
//! equal states encode to equal bytes on every node. The few, structured
//! records (membership, keys, policy) stay JSON; the millions of
//! revocations cost 24 bytes each (a minted jti) instead of ~50 in JSON.
//!
//! # Format 1 (read only)
//!
//! `{"format":1,"state":{...}}`: the whole state as JSON, written before
//! format 2. Snapshots and backups taken by older nodes still load (a
//! leading `{` tells them apart).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};

use serde::{Deserialize, Serialize};

use super::jtis::{Id, IdShards, Other};
use super::{Cutoff, Policy, State};
use crate::raft::{KeyRecord, LogId, StoredMembership};
use crate::store::StoreError;

/// The format written.
pub(crate) const FORMAT: u32 = 2;
/// The first bytes of a format-2 body.
pub(crate) const MAGIC: &[u8; 8] = b"TESSNAP\0";
const END: &[u8; 8] = b"TESSEND\0";
/// Longest name or jti accepted when reading (the API's limits are far
/// below): a damaged length never becomes a huge allocation.
const MAX_STR: u32 = 1 << 20;
/// Longest head (policy, keys, membership): far above what a valid state
/// holds (a policy is at most 1 MiB), so that a damaged or hostile length
/// cannot make the reader buffer the rest of the file.
const MAX_HEAD: u64 = 64 << 20;
/// Entries reserved ahead when reading a section; more grow the map.
const MAX_RESERVE: u64 = 1 << 22;
/// Buffer size of reads.
const IO_BUF: usize = 256 * 1024;

/// The few, structured parts of the state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Head {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    keys: BTreeMap<String, KeyRecord>,
    keys_version: u64,
    policy: Option<Policy>,
    cluster_id: String,
}

/// A copy of the state taken under its read lock, written out after the
/// lock is released (so a snapshot or a backup of millions of revocations
/// holds up apply only for the copy).
pub(crate) struct Export {
    head: Head,
    subjects: Vec<(String, Cutoff)>,
    clients: Vec<(String, Cutoff)>,
    ids: IdShards,
    other: Vec<Other>,
}

impl State {
    /// Copies the state for [`Export::write`].
    pub(crate) fn export(&self) -> Export {
        let (ids, other) = self.jtis.export();
        Export {
            head: Head {
                last_applied: self.last_applied,
                last_membership: self.last_membership.clone(),
                keys: self.keys.clone(),
                keys_version: self.keys_version,
                policy: self.policy.clone(),
                cluster_id: self.cluster_id.clone(),
            },
            subjects: self.subjects.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            clients: self.clients.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            ids,
            other,
        }
    }
}

fn io_err(e: std::io::Error) -> StoreError {
    StoreError::Snapshot(e.to_string())
}

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    // Names come from the API, far below 4 GiB; longer ones are refused by
    // the reader, so refuse them here too rather than truncate.
    let len = u32::try_from(s.len())
        .ok()
        .filter(|n| *n <= MAX_STR)
        .ok_or_else(|| std::io::Error::other("a name is too long for a snapshot"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn put_cutoffs(w: &mut impl Write, list: &[(String, Cutoff)]) -> std::io::Result<()> {
    w.write_all(&(list.len() as u64).to_le_bytes())?;
    for (name, c) in list {
        put_str(w, name)?;
        for n in [c.cutoff, c.until, c.revision] {
            w.write_all(&n.to_le_bytes())?;
        }
    }
    Ok(())
}

impl Export {
    /// Last applied log id of the copied state.
    pub(crate) fn last_applied(&self) -> Option<LogId> {
        self.head.last_applied
    }

    /// Its last membership.
    pub(crate) fn last_membership(&self) -> &StoredMembership {
        &self.head.last_membership
    }

    /// Its cluster id.
    pub(crate) fn cluster_id(&self) -> &str {
        &self.head.cluster_id
    }

    /// Its revision (last applied index, 0 if none).
    pub(crate) fn revision(&self) -> u64 {
        self.head.last_applied.map_or(0, |l| l.index)
    }

    /// Its revocation entries of every kind.
    pub(crate) fn revocation_count(&self) -> usize {
        self.ids.iter().map(Vec::len).sum::<usize>()
            + self.other.len()
            + self.subjects.len()
            + self.clients.len()
    }

    /// Its signing keys.
    pub(crate) fn key_count(&self) -> usize {
        self.head.keys.len()
    }

    /// Writes the copy in format 2, sorting the jtis first (the minted ids
    /// shard by shard: shards are in byte order). Blocking.
    pub(crate) fn write(mut self, w: &mut impl Write) -> Result<(), StoreError> {
        for shard in &mut self.ids {
            shard.sort_unstable_by_key(|e| e.0);
        }
        self.other.sort_unstable();
        let head = serde_json::to_vec(&self.head).map_err(StoreError::Encode)?;
        let mut go = || -> std::io::Result<()> {
            w.write_all(MAGIC)?;
            w.write_all(&FORMAT.to_le_bytes())?;
            w.write_all(&(head.len() as u64).to_le_bytes())?;
            w.write_all(&head)?;
            put_cutoffs(w, &self.subjects)?;
            put_cutoffs(w, &self.clients)?;
            let ids = self.ids.iter().map(Vec::len).sum::<usize>();
            w.write_all(&(ids as u64).to_le_bytes())?;
            for (id, until) in self.ids.iter().flatten() {
                w.write_all(id)?;
                w.write_all(&until.to_le_bytes())?;
            }
            w.write_all(&(self.other.len() as u64).to_le_bytes())?;
            for (jti, until) in &self.other {
                put_str(w, jti)?;
                w.write_all(&until.to_le_bytes())?;
            }
            w.write_all(END)
        };
        go().map_err(io_err)
    }
}

/// Reads a state in either format, streamed. Blocking.
pub(crate) fn read(r: &mut impl Read) -> Result<State, StoreError> {
    let mut r = BufReader::with_capacity(IO_BUF, r);
    let first = r.fill_buf().map_err(io_err)?.first().copied();
    if first == Some(b'{') {
        return read_v1(&mut r);
    }
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| bad("not a snapshot (too short)"))?;
    if &magic != MAGIC {
        return Err(bad("not a snapshot (unknown leading bytes)"));
    }
    let format = u32::from_le_bytes(array(&mut r)?);
    if format != FORMAT {
        return Err(StoreError::Snapshot(format!(
            "unknown snapshot format {format}"
        )));
    }
    let len = u64::from_le_bytes(array(&mut r)?);
    if len > MAX_HEAD {
        return Err(bad(&format!(
            "a head of {len} bytes, more than the limit of {MAX_HEAD}"
        )));
    }
    let mut head = Vec::new();
    (&mut r).take(len).read_to_end(&mut head).map_err(io_err)?;
    if head.len() as u64 != len {
        return Err(bad("truncated head"));
    }
    let head: Head =
        serde_json::from_slice(&head).map_err(|e| bad(&format!("unreadable head: {e}")))?;
    let mut st = State {
        last_applied: head.last_applied,
        last_membership: head.last_membership,
        keys: head.keys,
        keys_version: head.keys_version,
        policy: head.policy,
        cluster_id: head.cluster_id,
        subjects: read_cutoffs(&mut r)?,
        clients: read_cutoffs(&mut r)?,
        ..Default::default()
    };
    let n = u64::from_le_bytes(array(&mut r)?);
    st.jtis.reserve_ids(n.min(MAX_RESERVE) as usize);
    let mut prev: Option<Id> = None;
    for _ in 0..n {
        let id: Id = array(&mut r)?;
        let until = u64::from_le_bytes(array(&mut r)?);
        // Strictly ascending: a repeat or a shuffle means damage.
        if prev.is_some_and(|p| p >= id) {
            return Err(bad("jtis out of order"));
        }
        prev = Some(id);
        st.jtis.insert_id(id, until);
    }
    let n = u64::from_le_bytes(array(&mut r)?);
    for _ in 0..n {
        let jti = read_str(&mut r)?;
        let until = u64::from_le_bytes(array(&mut r)?);
        st.jtis.raise(&jti, until);
    }
    let end: [u8; 8] = array(&mut r)?;
    if &end != END {
        return Err(bad("no end marker"));
    }
    if !r.fill_buf().map_err(io_err)?.is_empty() {
        return Err(bad("bytes after the end marker"));
    }
    Ok(st)
}

fn bad(reason: &str) -> StoreError {
    StoreError::Snapshot(format!("damaged snapshot: {reason}"))
}

fn array<const N: usize>(r: &mut impl Read) -> Result<[u8; N], StoreError> {
    let mut b = [0u8; N];
    r.read_exact(&mut b).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad("truncated"),
        _ => io_err(e),
    })?;
    Ok(b)
}

fn read_str(r: &mut impl Read) -> Result<String, StoreError> {
    let len = u32::from_le_bytes(array(r)?);
    if len > MAX_STR {
        return Err(bad("a name is too long"));
    }
    let mut b = vec![0u8; len as usize];
    r.read_exact(&mut b).map_err(|_| bad("truncated"))?;
    String::from_utf8(b).map_err(|_| bad("a name is not UTF-8"))
}

fn read_cutoffs(r: &mut impl Read) -> Result<BTreeMap<String, Cutoff>, StoreError> {
    let n = u64::from_le_bytes(array(r)?);
    let mut map = BTreeMap::new();
    for _ in 0..n {
        let name = read_str(r)?;
        let cutoff = u64::from_le_bytes(array(r)?);
        let until = u64::from_le_bytes(array(r)?);
        let revision = u64::from_le_bytes(array(r)?);
        map.insert(
            name,
            Cutoff {
                cutoff,
                until,
                revision,
            },
        );
    }
    Ok(map)
}

/// The state as format 1 held it.
#[derive(Deserialize, Default)]
#[serde(default)]
struct StateV1 {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    jtis: BTreeMap<String, u64>,
    subjects: BTreeMap<String, Cutoff>,
    clients: BTreeMap<String, Cutoff>,
    keys: BTreeMap<String, KeyRecord>,
    keys_version: u64,
    policy: Option<Policy>,
    cluster_id: String,
}

#[derive(Deserialize)]
struct BodyV1 {
    format: u32,
    state: StateV1,
}

fn read_v1(r: &mut impl Read) -> Result<State, StoreError> {
    let body: BodyV1 =
        serde_json::from_reader(r).map_err(|e| StoreError::Snapshot(e.to_string()))?;
    if body.format != 1 {
        return Err(StoreError::Snapshot(format!(
            "unknown snapshot format {}",
            body.format
        )));
    }
    let old = body.state;
    let mut st = State {
        last_applied: old.last_applied,
        last_membership: old.last_membership,
        subjects: old.subjects,
        clients: old.clients,
        keys: old.keys,
        keys_version: old.keys_version,
        policy: old.policy,
        cluster_id: old.cluster_id,
        ..Default::default()
    };
    for (jti, until) in old.jtis {
        st.jtis.raise(&jti, until);
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;

    use super::*;

    #[test]
    fn a_head_length_past_the_limit_is_refused_before_reading() {
        // A snapshot from a peer, or a backup with a flipped bit, once made
        // the reader buffer everything up to the length it claimed.
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT.to_le_bytes());
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        bytes.extend_from_slice(&[b'{'; 1024]);
        let err = read(&mut bytes.as_slice()).unwrap_err();
        assert!(err.to_string().contains("more than the limit"), "{err}");
    }

    fn sample() -> State {
        let mut st = State {
            last_applied: Some(log_id(3, 1, 42)),
            keys_version: 7,
            cluster_id: "abc".into(),
            policy: Some(Policy {
                version: 5,
                text: "permit(principal, action, resource);".into(),
            }),
            ..Default::default()
        };
        for i in 0..300u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
            st.jtis
                .raise(&super::super::jtis::encode_id(&id), 1_000 + u64::from(i));
            st.jtis.raise(&format!("custom-{i}"), 2_000);
        }
        st.subjects.insert(
            "alice".into(),
            Cutoff {
                cutoff: 1,
                until: 2,
                revision: 3,
            },
        );
        st.clients.insert(
            "svc".into(),
            Cutoff {
                cutoff: 4,
                until: 5,
                revision: 0,
            },
        );
        st
    }

    fn bytes(st: &State) -> Vec<u8> {
        let mut out = Vec::new();
        st.export().write(&mut out).unwrap();
        out
    }

    #[test]
    fn format_2_round_trips_and_is_deterministic() {
        let st = sample();
        let b = bytes(&st);
        assert!(b.starts_with(MAGIC));
        assert_eq!(read(&mut b.as_slice()).unwrap(), st);
        // Built in another order (another hash map layout): same bytes.
        let mut again = State {
            jtis: Default::default(),
            ..st.clone()
        };
        let mut all: Vec<_> = st.jtis.iter().collect();
        all.reverse();
        for (j, u) in all {
            again.jtis.raise(&j, u);
        }
        assert_eq!(bytes(&again), b);
        // 24 bytes per minted jti.
        let minted_only = State {
            jtis: {
                let mut j = super::super::Jtis::default();
                j.raise(&super::super::jtis::encode_id(&[9; 16]), 1);
                j
            },
            ..State::default()
        };
        assert_eq!(
            bytes(&minted_only).len(),
            bytes(&State::default()).len() + 24
        );
    }

    #[test]
    fn format_1_json_still_reads() {
        let json = br#"{"format":1,"state":{"last_applied":{"leader_id":{"term":3,"node_id":1},"index":42},
            "jtis":{"AAAAAAAAAAAAAAAAAAAAAA":9,"plain":10},
            "subjects":{"alice":{"cutoff":1,"until":2}},"clients":{},"keys":{},"keys_version":0,
            "policy":null,"cluster_id":"c"}}"#;
        let st = read(&mut json.as_slice()).unwrap();
        assert_eq!(st.revision(), 42);
        assert_eq!(st.jtis.get("AAAAAAAAAAAAAAAAAAAAAA"), Some(9));
        assert_eq!(st.jtis.get("plain"), Some(10));
        assert_eq!(st.subjects["alice"].revision, 0);
        assert_eq!(st.cluster_id, "c");
        assert!(read(&mut &br#"{"format":9,"state":{}}"#[..]).is_err());
    }

    #[test]
    fn damage_is_reported_never_panics() {
        let b = bytes(&sample());
        // Every truncation fails cleanly.
        for cut in [0, 3, 8, 12, 20, b.len() / 2, b.len() - 1] {
            assert!(read(&mut &b[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = b.clone();
        extra.push(0);
        assert!(read(&mut extra.as_slice()).is_err());
        let mut wrong = b.clone();
        wrong[8] = 3;
        assert!(read(&mut wrong.as_slice())
            .unwrap_err()
            .to_string()
            .contains("unknown snapshot format 3"));
        assert!(read(&mut &b"garbage!garbage!"[..]).is_err());
        // A huge announced name length is refused, not allocated.
        let mut huge = bytes(&State::default());
        let head_len = u64::from_le_bytes(huge[12..20].try_into().unwrap()) as usize;
        let at = 20 + head_len;
        huge.truncate(at);
        huge.extend_from_slice(&1u64.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read(&mut huge.as_slice())
            .unwrap_err()
            .to_string()
            .contains("too long"));
    }
}
