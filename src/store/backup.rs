//! Backups of the replicated state, and restoring one into a new one-node
//! cluster.
//!
//! A backup file is one header line and a body:
//!
//! ```text
//! TESSERA-BACKUP 1 {"cluster_id":…,"revision":…,"length":…,"sha256":…,…}\n
//! <body: the state, in the snapshot encoding (src/store/state/body.rs)>
//! ```
//!
//! The header names the cluster, the revision the state is at, and the
//! body's length and SHA-256, so `tessera backup verify` checks a file
//! offline. The body is streamed, never held whole in memory.
//!
//! Restoring never makes a revoked token valid again: revocations
//! acknowledged after the backup are not in it, so the restored cluster
//! drops every signing key of the backup and signs with a new one. Every
//! token issued before the restore — by the old cluster, whatever it did
//! after the backup — then fails verification; services renew their tokens
//! (`TokenSource` does by itself).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

use super::db::Db;
use super::sm::{self, read};
use super::state::{body, State, Touched};
use super::{StateView, StoreError};
use crate::raft::{Command, Entry, KeyRecord, LogId, NodeId, NodeInfo, Op};

/// First word and version of a backup file's header line.
pub const MAGIC: &str = "TESSERA-BACKUP 1";

/// How far a restored cluster's revisions start above the backup's. The
/// old cluster may have gone on after the backup; a subscriber that
/// resumes with a cursor from it must not skip the restored cluster's
/// events as already seen. Above every cursor the old cluster could have
/// reached, such a cursor falls outside the retained window and the
/// subscriber gets a full snapshot.
pub const RESTORE_REVISION_GAP: u64 = 1 << 32;

/// Longest header line accepted when reading a file.
const MAX_HEADER: u64 = 4096;

/// What a backup's header says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The cluster the state comes from.
    pub cluster_id: String,
    /// The revision (last applied log index) the state is at.
    pub revision: u64,
    /// The node that wrote it.
    pub node_id: u64,
    /// When it was taken (Unix seconds, the node's clock).
    pub created_at: u64,
    /// Body length in bytes.
    pub length: u64,
    /// SHA-256 of the body, lowercase hex.
    pub sha256: String,
    /// Active revocation entries in the state.
    pub revocations: u64,
    /// Signing keys in the state.
    pub keys: u64,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The backup's header.
    pub header: BackupHeader,
    /// The restored cluster's id (derived from its new signing key).
    pub cluster_id: String,
    /// Signing keys of the backup that no longer verify anything.
    pub dropped_keys: Vec<String>,
    /// The revision the restored cluster starts at.
    pub revision: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    ctx: digest::Context,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl StateView {
    /// Writes the current state as a backup body to `out` (a consistent
    /// point: copied under the state's read lock, written after it) and
    /// returns its header. Blocking.
    pub fn write_backup(
        &self,
        out: &mut dyn Write,
        node_id: u64,
        now: u64,
    ) -> Result<BackupHeader, StoreError> {
        let export = read(self.state()).export();
        let mut w = Hashing {
            inner: BufWriter::with_capacity(256 * 1024, out),
            ctx: digest::Context::new(&digest::SHA256),
            len: 0,
        };
        let cluster_id = export.cluster_id().to_owned();
        let revision = export.revision();
        let revocations = export.revocation_count() as u64;
        let keys = export.key_count() as u64;
        export.write(&mut w)?;
        w.flush().map_err(|e| StoreError::Snapshot(e.to_string()))?;
        Ok(BackupHeader {
            cluster_id,
            revision,
            node_id,
            created_at: now,
            length: w.len,
            sha256: hex(w.ctx.finish().as_ref()),
            revocations,
            keys,
        })
    }
}

/// The header line of a backup file with `header`.
pub fn header_line(header: &BackupHeader) -> Result<String, StoreError> {
    let json = serde_json::to_string(header).map_err(StoreError::Encode)?;
    Ok(format!("{MAGIC} {json}\n"))
}

fn bad(reason: impl Into<String>) -> StoreError {
    StoreError::Backup(reason.into())
}

/// Reads and parses the header line of a backup file.
fn read_header(r: &mut impl BufRead) -> Result<BackupHeader, StoreError> {
    let mut line = String::new();
    r.take(MAX_HEADER)
        .read_line(&mut line)
        .map_err(|e| bad(format!("cannot read the header: {e}")))?;
    let rest = line
        .strip_suffix('\n')
        .and_then(|l| l.strip_prefix(MAGIC))
        .and_then(|l| l.strip_prefix(' '))
        .ok_or_else(|| {
            bad(format!(
                "not a Tessera backup (the first line must start with {MAGIC:?})"
            ))
        })?;
    serde_json::from_str(rest).map_err(|e| bad(format!("unreadable header: {e}")))
}

/// A reader of exactly the body, hashing it; `check` compares with the
/// header once everything was read.
struct Body<R> {
    inner: std::io::Take<R>,
    ctx: digest::Context,
    len: u64,
}

impl<R: Read> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

impl<R: Read> Body<R> {
    fn new(r: R, header: &BackupHeader) -> Self {
        Body {
            // One byte more than announced, to see a longer file.
            inner: r.take(header.length.saturating_add(1)),
            ctx: digest::Context::new(&digest::SHA256),
            len: 0,
        }
    }

    fn check(mut self, header: &BackupHeader) -> Result<(), StoreError> {
        // Whatever the decoder left unread still counts.
        std::io::copy(&mut self, &mut std::io::sink())
            .map_err(|e| bad(format!("cannot read the body: {e}")))?;
        if self.len != header.length {
            return Err(bad(format!(
                "the body is {} bytes, the header says {}: truncated or extended",
                self.len, header.length
            )));
        }
        let sha = hex(self.ctx.finish().as_ref());
        if sha != header.sha256 {
            return Err(bad(format!(
                "checksum mismatch: the body hashes to {sha}, the header says {}",
                header.sha256
            )));
        }
        Ok(())
    }
}

/// Reads a backup file: checks length and checksum, decodes the state and
/// checks it is the one the header describes. Blocking.
fn read_file(path: &Path) -> Result<(BackupHeader, State), StoreError> {
    let file = File::open(path).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let header = read_header(&mut r)?;
    let mut body = Body::new(r, &header);
    // A decode error is reported after the checksum: a damaged file says
    // so rather than showing a decoding error.
    let decoded = body::read(&mut body);
    body.check(&header)?;
    let state = decoded?;
    if state.revision() != header.revision || state.cluster_id != header.cluster_id {
        return Err(bad(format!(
            "the state is cluster {} at revision {}, the header says cluster {} at revision {}",
            state.cluster_id,
            state.revision(),
            header.cluster_id,
            header.revision
        )));
    }
    Ok((header, state))
}

/// Checks a backup file offline. Blocking.
pub fn verify_file(path: &Path) -> Result<BackupHeader, StoreError> {
    read_file(path).map(|(h, _)| h)
}

/// Restores the backup at `path` into the empty directory `store_dir` as a
/// one-node cluster whose only member is `node_id` at `info` (its
/// incarnation is the new database's). The backup's
/// signing keys are dropped and `new_key` (active) signs from now on; see
/// the module docs. Blocking.
pub fn restore(
    path: &Path,
    store_dir: &Path,
    node_id: NodeId,
    mut info: NodeInfo,
    new_key: KeyRecord,
    now: u64,
) -> Result<Restored, StoreError> {
    let (header, mut state) = read_file(path)?;
    if store_dir.join("db").exists() {
        return Err(bad(format!(
            "{} already holds a database: restore only into a new data directory",
            store_dir.display()
        )));
    }
    let Some(last) = state.last_applied else {
        return Err(bad("the backup holds no applied state"));
    };
    // Where the restored cluster's own entries go (checked before anything
    // is created: a crafted backup may name any revision).
    let first = last
        .index
        .checked_add(RESTORE_REVISION_GAP + 2)
        .ok_or_else(|| bad(format!("the backup's revision {} is too high", last.index)))?
        - 1;
    let db = Db::open_with(store_dir, Default::default())?;
    // The member is this database's incarnation.
    info.incarnation = db.incarnation;
    let dropped_keys: Vec<String> = state.keys.keys().cloned().collect();
    state.keys.clear();
    state.cluster_id.clear();
    // The new key and the new membership are applied like log entries
    // after the backup's last one (and RESTORE_REVISION_GAP above it), so
    // the restored state reads as if the log had continued there.
    let mut touched = Touched::default();
    // Term 0 of the new node: the restored node starts with no vote and
    // elects itself in term 1, and openraft orders log ids by leader
    // (term, node) before index; the old cluster's leader id (any term
    // above 1, or a higher node id) would sort every new entry below the
    // snapshot's last one, and no write would ever commit.
    let at = |index| LogId {
        leader_id: openraft::CommittedLeaderId::new(0, node_id),
        index,
    };
    state.apply(
        &Entry {
            log_id: at(first),
            payload: openraft::EntryPayload::Normal(Command {
                at: now,
                op: Op::AddKey { key: new_key },
            }),
        },
        &mut touched,
    );
    let membership = openraft::Membership::new(
        vec![std::collections::BTreeSet::from([node_id])],
        std::collections::BTreeMap::from([(node_id, info)]),
    );
    state.apply(
        &Entry {
            log_id: at(first + 1),
            payload: openraft::EntryPayload::Membership(membership),
        },
        &mut touched,
    );
    sm::restore_into(&db, &state)?;
    let restored = Restored {
        header,
        cluster_id: state.cluster_id.clone(),
        dropped_keys,
        revision: state.revision(),
    };
    drop(db);
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;

    use super::*;
    use crate::raft::KeyState;

    /// A backup file (checksum right: a checksum is no signature) of a
    /// state whose last entry is `last`.
    fn backup_at(dir: &Path, last: LogId) -> std::path::PathBuf {
        let st = State {
            last_applied: Some(last),
            cluster_id: "c0ffee".into(),
            ..Default::default()
        };
        let mut body = Vec::new();
        st.export().write(&mut body).unwrap();
        let header = BackupHeader {
            cluster_id: "c0ffee".into(),
            revision: last.index,
            node_id: 2,
            created_at: 1,
            length: body.len() as u64,
            sha256: hex(digest::digest(&digest::SHA256, &body).as_ref()),
            revocations: 0,
            keys: 0,
        };
        let path = dir.join("b.backup");
        let mut f = header_line(&header).unwrap().into_bytes();
        f.extend_from_slice(&body);
        std::fs::write(&path, f).unwrap();
        path
    }

    #[test]
    fn a_backup_at_a_revision_near_the_top_is_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let file = backup_at(dir.path(), log_id(1, 1, u64::MAX - 10));
        let key = KeyRecord {
            kid: "new".into(),
            alg: "EdDSA".into(),
            public_key: vec![1; 32],
            sealed_private_key: vec![2; 60],
            kek_id: "kek1".into(),
            state: KeyState::Active,
            created_at: 1,
            times: Default::default(),
        };
        let info = NodeInfo {
            raft_addr: "127.0.0.1:1".into(),
            api_addr: String::new(),
            incarnation: 0,
        };
        let r = restore(&file, &dir.path().join("n"), 1, info, key, 1);
        assert!(!dir.path().join("n").exists(), "nothing created");
        assert!(
            matches!(&r, Err(StoreError::Backup(m)) if m.contains("too high")),
            "{:?}",
            r.map(|r| r.revision)
        );
    }
}
