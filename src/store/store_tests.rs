//! Unit tests of the store: opening, applying, snapshots, purges and the
//! views the API reads.

use std::collections::BTreeSet;
use std::io::SeekFrom;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{blank_ent, log_id, membership_ent, StoreBuilder, Suite};
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder, Vote};
use tempfile::TempDir;

use super::*;
use crate::raft::{Command, Entry, KeyRecord, KeyState, Op, RevokedJti, StorageError, TypeConfig};

struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm, _view) = open(dir.path()).unwrap();
        Ok((dir, log, sm))
    }
}

/// The whole content of a snapshot's file.
async fn bytes_of(snap: &mut crate::raft::Snapshot) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    snap.snapshot.seek(SeekFrom::Start(0)).await.unwrap();
    let mut out = Vec::new();
    snap.snapshot.read_to_end(&mut out).await.unwrap();
    out
}

/// A file `sm` began receiving, holding `bytes`, as openraft hands it
/// to `install_snapshot`.
async fn received(sm: &mut StateMachine, bytes: &[u8]) -> Box<tokio::fs::File> {
    use tokio::io::AsyncWriteExt;
    let mut f = sm.begin_receiving_snapshot().await.unwrap();
    f.write_all(bytes).await.unwrap();
    f
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(TempStoreBuilder).unwrap();
}

fn cmd(index: u64, at: u64, op: Op) -> Entry {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(Command { at, op }),
    }
}

fn revoke(jti: &str, until: u64) -> Op {
    Op::RevokeJtis {
        jtis: vec![RevokedJti {
            jti: jti.into(),
            until,
        }],
    }
}

fn key(kid: &str) -> KeyRecord {
    KeyRecord {
        kid: kid.into(),
        alg: "EdDSA".into(),
        public_key: vec![7; 32],
        sealed_private_key: vec![9; 60],
        kek_id: "kek".into(),
        state: KeyState::Pending,
        created_at: 1,
        times: Default::default(),
    }
}

/// A mix of every command, ending at index 10.
fn workload() -> Vec<Entry> {
    vec![
        membership_ent(1, 1, 1, vec![BTreeSet::from([1, 2, 3])]),
        cmd(2, 100, revoke("j-old", 150)),
        cmd(3, 100, revoke("j-live", 900)),
        cmd(
            4,
            100,
            Op::RevokeSubject {
                subject: "alice".into(),
                cutoff: 100,
                until: 120,
            },
        ),
        cmd(
            5,
            100,
            Op::RevokeClient {
                client: "svc-a".into(),
                cutoff: 90,
                until: 900,
            },
        ),
        cmd(
            6,
            100,
            Op::PutPolicy {
                text: "permit(principal, action, resource);".into(),
            },
        ),
        cmd(7, 100, Op::AddKey { key: key("k1") }),
        cmd(
            8,
            100,
            Op::SetKeyState {
                kid: "k1".into(),
                state: KeyState::Active,
            },
        ),
        cmd(9, 200, Op::Purge),
        blank_ent(1, 1, 10),
    ]
}

fn assert_workload_state(view: &StateView) {
    assert_eq!(view.revision(), 10);
    assert!(view.is_revoked(&["j-live"], "x", &["y"], 1, None));
    assert!(!view.is_revoked(&["j-old"], "x", &["y"], 1, None), "purged");
    assert!(!view.is_revoked(&[], "alice", &["y"], 1, None), "purged");
    assert!(view.is_revoked(&[], "bob", &["svc-a"], 90, None));
    // The client cut-off was applied at revision 5: tokens minted below
    // it are revoked whatever their iat (also after a snapshot install
    // or a reopen: the revision is part of the state).
    assert!(view.is_revoked(&[], "bob", &["svc-a"], 1_000, Some(4)));
    assert!(!view.is_revoked(&[], "bob", &["svc-a"], 0, Some(5)));
    assert_eq!(view.revocation_count(), 2);
    assert_eq!(view.policy().map(|p| p.0), Some(6));
    assert_eq!(view.keys_version(), 8);
    let keys = view.keys();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].state, KeyState::Active);
}

#[tokio::test]
async fn apply_answers_and_view_and_watch_follow() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, view) = open(dir.path()).unwrap();
    let mut watch = view.watch_revision();
    assert_eq!(view.revision(), 0);
    assert_eq!(*watch.borrow_and_update(), 0);
    let responses = sm.apply(workload()).await.unwrap();
    let changed: Vec<u64> = responses.iter().map(|r| r.changed).collect();
    assert_eq!(changed, [0, 1, 1, 1, 1, 1, 1, 1, 2, 0]);
    let revisions: Vec<u64> = responses.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, (1..=10).collect::<Vec<_>>());
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), 10);
    assert_workload_state(&view);
    // Idempotent repeat of a revocation.
    let r = sm
        .apply([cmd(11, 300, revoke("j-live", 900))])
        .await
        .unwrap();
    assert_eq!(r[0].changed, 0);
    assert_eq!(view.revision(), 11);
    assert_eq!(sm.apply(Vec::new()).await.unwrap(), Vec::new());
}

/// Waits (bounded) until a store's database has closed: once its last
/// handle, the log flusher's included, is gone, not at the drop.
async fn wait_closed(mut closed: tokio::sync::watch::Receiver<()>) {
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while closed.changed().await.is_ok() {}
    })
    .await
    .expect("the store closes");
}

/// Runs `f` (an open of a store whose previous handles were just
/// dropped) until sled gets its file lock, bounded: see [`reopen`].
async fn when_unlocked<T>(mut f: impl FnMut() -> Result<T, StoreError>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match f() {
            Ok(t) => return t,
            Err(StoreError::Open { source, .. })
                if source.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open: {e}"),
        }
    }
}

/// Opens the store in `dir` again once the previous one closed. sled's
/// own flusher thread may hold the file lock a moment after the last
/// handle is gone (it looks at its shutdown flag between flushes) and
/// says nothing when it lets go: retry a refused lock, bounded.
async fn reopen(
    closed: tokio::sync::watch::Receiver<()>,
    dir: &Path,
) -> (LogStore, StateMachine, StateView) {
    wait_closed(closed).await;
    when_unlocked(|| open(dir)).await
}

/// What openraft does when a node starts: re-apply the committed log
/// after the state machine's applied id (the snapshot's).
async fn start_like_raft(log: &mut LogStore, sm: &mut StateMachine) {
    openraft::storage::StorageHelper::new(log, sm)
        .get_initial_state()
        .await
        .unwrap();
}

// Applying writes nothing: a reopened store holds the last snapshot's
// state, and the committed log after it is re-applied at start-up.
#[tokio::test]
async fn reopen_keeps_log_and_vote_and_replays_the_log_after_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let closed = {
        let (mut log, mut sm, _view) = open(dir.path()).unwrap();
        // openraft's logs start at index 0.
        log.blocking_append([blank_ent(0, 0, 0)]).await.unwrap();
        log.blocking_append(workload()).await.unwrap();
        log.save_vote(&Vote::new(4, 2)).await.unwrap();
        log.save_committed(Some(log_id(1, 1, 10))).await.unwrap();
        sm.apply(workload()[..5].to_vec()).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        sm.apply(workload()[5..].to_vec()).await.unwrap();
        log.closed_signal()
    };
    let (mut log, mut sm, view) = reopen(closed, dir.path()).await;
    // The snapshot's state plus the committed log after it, before Raft
    // starts...
    assert_workload_state(&view);
    assert_eq!(*view.watch_revision().borrow(), 10);
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 10)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1, 1)));
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 1, 10))
    );
    let entries = log.try_get_log_entries(1..).await.unwrap();
    assert_eq!(entries, workload());
    // ...and Raft finds nothing left to re-apply.
    start_like_raft(&mut log, &mut sm).await;
    assert_workload_state(&view);
    assert_eq!(*view.watch_revision().borrow(), 10);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 1, 10)));
}

// The log is purged only behind a durable snapshot (as openraft does
// with `max_in_snapshot_log_to_keep`); a node restarted after a purge
// still has every acknowledged (committed) entry: from the snapshot up
// to it, from the log after it.
#[tokio::test]
async fn a_node_restarted_after_a_purge_keeps_everything_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut later = Vec::new();
    for i in 0..40u64 {
        later.push(cmd(11 + i, 300, revoke(&format!("later-{i}"), 900)));
    }
    let closed = {
        let (mut log, mut sm, _view) = open(dir.path()).unwrap();
        log.blocking_append(workload()).await.unwrap();
        sm.apply(workload()).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        log.purge(log_id(1, 1, 8)).await.unwrap();
        log.blocking_append(later.clone()).await.unwrap();
        log.save_committed(Some(log_id(1, 1, 50))).await.unwrap();
        sm.apply(later.clone()).await.unwrap();
        log.closed_signal()
    };
    let (mut log, mut sm, view) = reopen(closed, dir.path()).await;
    assert_eq!(view.revision(), 50);
    start_like_raft(&mut log, &mut sm).await;
    assert_eq!(view.revision(), 50);
    assert!(view.is_revoked(&["j-live"], "x", &["y"], 1, None));
    for i in 0..40 {
        assert!(view.is_revoked(&[&format!("later-{i}")], "x", &["y"], 1, None));
    }
    assert_eq!(view.revocation_count(), 42);
    assert_eq!(
        log.get_log_state().await.unwrap().last_purged_log_id,
        Some(log_id(1, 1, 8))
    );
}

#[tokio::test]
async fn snapshot_round_trip_between_nodes() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (_la, mut sm_a, _va) = open(dir_a.path()).unwrap();
    let (_lb, mut sm_b, view_b) = open(dir_b.path()).unwrap();
    // b holds state that the snapshot must wipe out.
    sm_b.apply([
        cmd(1, 0, revoke("stale", 999)),
        cmd(2, 0, Op::AddKey { key: key("stale") }),
    ])
    .await
    .unwrap();
    sm_a.apply(workload()).await.unwrap();
    let snap = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 1, 10)));
    assert!(
        snap.meta.snapshot_id.starts_with("1-10-"),
        "{}",
        snap.meta.snapshot_id
    );

    let fsyncs = sm_b.fsync_count();
    let mut rx = view_b.watch_revision();
    let mut snap = snap;
    let a_bytes = bytes_of(&mut snap).await;
    let buf = received(&mut sm_b, &a_bytes).await;
    sm_b.install_snapshot(&snap.meta, buf).await.unwrap();
    assert!(sm_b.fsync_count() > fsyncs);
    assert_eq!(*rx.borrow_and_update(), 10);
    assert_workload_state(&view_b);
    assert!(!view_b.is_revoked(&["stale"], "", &[""], 0, None));
    assert_eq!(
        sm_b.applied_state().await.unwrap(),
        sm_a.applied_state().await.unwrap()
    );
    let mut cur = sm_b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, snap.meta);
    assert_eq!(bytes_of(&mut cur).await, a_bytes);

    // Equal state in memory and on disk: b's rebuilt snapshot holds the
    // same bytes as a's, also after b reopens.
    let b_bytes = bytes_of(
        &mut sm_b
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a_bytes, b_bytes);
    let closed = _lb.closed_signal();
    drop((_lb, sm_b, view_b));
    let (_lb, mut sm_b, view_b) = reopen(closed, dir_b.path()).await;
    assert_workload_state(&view_b);
    let b_bytes = bytes_of(
        &mut sm_b
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a_bytes, b_bytes);
}

#[tokio::test]
async fn install_rejects_snapshot_that_does_not_match_its_meta() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (_la, mut sm_a, _va) = open(dir_a.path()).unwrap();
    let (_lb, mut sm_b, view_b) = open(dir_b.path()).unwrap();
    sm_a.apply(workload()).await.unwrap();
    let snap = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut meta = snap.meta.clone();
    meta.last_log_id = Some(log_id(1, 1, 11));
    let mut snap = snap;
    let bytes = bytes_of(&mut snap).await;
    let data = received(&mut sm_b, &bytes).await;
    assert!(sm_b.install_snapshot(&meta, data).await.is_err());
    let garbage = received(&mut sm_b, b"not json").await;
    assert!(sm_b.install_snapshot(&snap.meta, garbage).await.is_err());
    // Neither left a file behind.
    let files = std::fs::read_dir(dir_b.path().join(snapfile::DIR))
        .unwrap()
        .count();
    assert_eq!(files, 0);
    assert_eq!(view_b.revision(), 0);
    assert!(sm_b.get_current_snapshot().await.unwrap().is_none());
}

// A data directory written by an older node: the state mirrored in
// per-revocation sled trees, and a snapshot stored in chunks of the
// snapshot tree. Open takes the newer of the two, writes it as a
// snapshot file if it came from the trees, and clears the trees.
#[tokio::test]
async fn a_data_directory_of_an_older_node_opens_with_its_state() {
    let src = tempfile::tempdir().unwrap();
    let (_la, mut sm_a, view_a) = open(src.path()).unwrap();
    sm_a.apply(workload()[..4].to_vec()).await.unwrap();
    let mut old_snap = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let old_bytes = bytes_of(&mut old_snap).await;
    sm_a.apply(workload()[4..].to_vec()).await.unwrap();
    let full = sm::read(view_a.state()).clone();

    for trees_ahead in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = db::Db::open(dir.path()).unwrap();
            // The snapshot at 4, the way snapshots were stored before
            // they were files.
            let mut b = sled::Batch::default();
            b.insert("meta", serde_json::to_vec(&old_snap.meta).unwrap());
            b.insert("data", old_bytes.clone());
            db.snapshot.apply_batch(b).unwrap();
            // The trees at 10, or (a crash between storing a snapshot
            // and persisting the state) behind it at 2.
            let mut trees = full.clone();
            if !trees_ahead {
                trees = state::State::default();
                let mut t = state::Touched::default();
                for e in &workload()[..2] {
                    trees.apply(e, &mut t);
                }
            }
            state::legacy::write(&db, &trees).unwrap();
        }
        let want = if trees_ahead { 10 } else { 4 };
        let (l, mut sm, view) = open(dir.path()).unwrap();
        assert_eq!(view.revision(), want);
        if trees_ahead {
            assert_workload_state(&view);
        }
        let cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta.last_log_id, Some(log_id(1, 1, want)));
        let closed = l.closed_signal();
        drop((l, sm, view));
        wait_closed(closed).await;
        {
            let db = when_unlocked(|| db::Db::open(dir.path())).await;
            assert!(!state::legacy::present(&db), "the old trees are cleared");
        }
        // A second open reads the snapshot file alone.
        let (_l, _sm, view) = when_unlocked(|| open(dir.path())).await;
        assert_eq!(view.revision(), want);
        if trees_ahead {
            assert_workload_state(&view);
        }
    }
}

#[tokio::test]
async fn each_build_gets_a_new_id_and_becomes_current() {
    let dir = tempfile::tempdir().unwrap();
    let (_l, mut sm, _v) = open(dir.path()).unwrap();
    sm.apply(workload()).await.unwrap();
    let mut builder = sm.get_snapshot_builder().await;
    let first = builder.build_snapshot().await.unwrap();
    let second = builder.build_snapshot().await.unwrap();
    assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
    assert_eq!(
        sm.get_current_snapshot().await.unwrap().unwrap().meta,
        second.meta
    );
}

// The seam the disk-full tests use: while on, every kind of write fails
// (with the injected error, or a received snapshot's chunks with a real
// ENOSPC); switched off, the same store works again.
#[tokio::test]
async fn injected_write_errors_fail_every_kind_of_write() {
    let dir = tempfile::tempdir().unwrap();
    let faults = StoreFaults::new();
    let (mut log, mut sm, view) =
        open_with(dir.path(), FeedSizes::default(), faults.clone()).unwrap();
    faults.fail_writes(true);
    let injected = |e: StorageError| {
        assert!(e.to_string().contains(INJECTED_ENOSPC), "{e}");
    };
    injected(log.save_vote(&Vote::new(1, 1)).await.unwrap_err());
    injected(log.blocking_append(workload()).await.unwrap_err());
    // openraft writes a received snapshot's chunks itself: they go to a
    // file where every write fails with ENOSPC, as on a full disk.
    let mut receiving = sm.begin_receiving_snapshot().await.unwrap();
    // tokio's file reports a failed write at the next operation.
    tokio::io::AsyncWriteExt::write_all(&mut *receiving, b"chunk")
        .await
        .unwrap();
    let full = tokio::io::AsyncWriteExt::flush(&mut *receiving)
        .await
        .unwrap_err();
    assert_eq!(full.raw_os_error(), Some(28), "{full}");
    injected(
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap_err(),
    );
    // Applying writes nothing (what it applies is durable in the log
    // already), so a full disk does not stop it.
    sm.apply(workload()).await.unwrap();
    assert_workload_state(&view);
    faults.fail_writes(false);
    log.save_vote(&Vote::new(1, 1)).await.unwrap();
    log.blocking_append(workload()).await.unwrap();
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
}

/// Every file under `dir/blobs` (sled's unsynced large-value files).
fn blob_files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir.join("blobs")) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

/// A batch entry revoking `n` jtis named `prefix-i`.
fn revoke_many(index: u64, prefix: &str, n: usize) -> Entry {
    let ops = (0..n)
        .map(|i| Op::RevokeJtis {
            jtis: vec![RevokedJti {
                jti: format!("{prefix}-{i:08}-0123456789abcdef"),
                until: 10_000 + i as u64,
            }],
        })
        .collect();
    cmd(index, 100, Op::Batch { ops })
}

// sled 0.34 writes values above ~128 KiB to unsynced files under
// `blobs/`: a multi-MB snapshot, a >200 KiB log entry and a large
// policy must be stored in chunks, and survive a reopen and an install.
#[tokio::test]
async fn large_values_never_reach_sled_blob_files() {
    // Control: a plain 200 KiB sled value does go to a blob file, so an
    // empty `blobs/` below means something.
    let control = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new().path(control.path()).open().unwrap();
        db.insert("big", vec![1u8; 200 * 1024]).unwrap();
        db.flush().unwrap();
    }
    assert!(
        !blob_files(control.path()).is_empty(),
        "control wrote no blob"
    );

    let dir = tempfile::tempdir().unwrap();
    let big = revoke_many(2, "big", 3_000);
    let big_len = serde_json::to_vec(&big).unwrap().len();
    assert!(big_len > 200 * 1024, "{big_len}");
    let policy = format!(
        "// {}\npermit(principal, action, resource);",
        "p".repeat(300 * 1024)
    );
    let mut entries = vec![membership_ent(1, 1, 1, vec![BTreeSet::from([1])]), big];
    // Many revocations for a multi-MB snapshot, in entries of 2000.
    for i in 0..30u64 {
        entries.push(revoke_many(3 + i, &format!("r{i}"), 2_000));
    }
    entries.push(cmd(
        33,
        100,
        Op::PutPolicy {
            text: policy.clone(),
        },
    ));
    let (snap_meta, snap_bytes) = {
        let (mut log, mut sm, view) = open(dir.path()).unwrap();
        log.blocking_append(entries.clone()).await.unwrap();
        sm.apply(entries.clone()).await.unwrap();
        assert_eq!(view.revocation_count(), 63_000);
        let mut snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let bytes = bytes_of(&mut snap).await;
        assert!(bytes.len() > 2 << 20, "{}", bytes.len());
        (snap.meta, bytes)
    };
    assert_eq!(blob_files(dir.path()), Vec::<PathBuf>::new());
    {
        let db = when_unlocked(|| db::Db::open(dir.path())).await;
        for name in db.db_tree_names() {
            let tree = db.tree(&name);
            for kv in tree.iter() {
                let (k, v) = kv.unwrap();
                assert!(v.len() <= chunk::CHUNK, "{name:?} {k:?}: {} bytes", v.len());
            }
        }
    }
    // Everything reads back whole.
    let (mut log, mut sm, view) = when_unlocked(|| open(dir.path())).await;
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);
    assert_eq!(view.policy(), Some((33, policy)));
    let mut cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, snap_meta);
    assert_eq!(bytes_of(&mut cur).await, snap_bytes);
    // Round trip: installed on a fresh store, the same state.
    let fresh = tempfile::tempdir().unwrap();
    let (_l2, mut sm2, view2) = open(fresh.path()).unwrap();
    let buf = received(&mut sm2, &snap_bytes).await;
    sm2.install_snapshot(&snap_meta, buf).await.unwrap();
    assert_eq!(view2.revoked_jtis(), view.revoked_jtis());
    assert_eq!(view2.policy(), view.policy());
    assert_eq!(
        sm2.applied_state().await.unwrap(),
        sm.applied_state().await.unwrap()
    );
    // The log shrinks cleanly: purging past the big entry leaves none
    // of its chunks behind.
    log.purge(log_id(1, 1, 2)).await.unwrap();
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries[2..]);
    drop((_l2, sm2, view2));
    assert_eq!(blob_files(fresh.path()), Vec::<PathBuf>::new());
}

// Benchmark, not a check (docs/BENCHMARKS.md): snapshot build and
// install time for 100k and 1M revocations (minted jtis), against a
// plain sled write of the same bytes in the same run.
//   cargo test --lib store::tests::bench_snapshot -- --ignored --nocapture
// TESSERA_BENCH_REVOCATIONS=100000,1000000 sets the sizes.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn bench_snapshot_build_and_install() {
    use std::time::Instant;
    let sizes: Vec<usize> = std::env::var("TESSERA_BENCH_REVOCATIONS")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    println!("| revocations | snapshot bytes | build | install | plain sled write of the bytes | build / plain | install / plain |");
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let (_l, mut sm, _v) = open(dir.path()).unwrap();
        let mut entries = vec![membership_ent(1, 1, 1, vec![BTreeSet::from([1])])];
        // jtis in the form Tessera mints (22 base64url characters).
        let per = 2_000;
        for (k, start) in (0..n).step_by(per).enumerate() {
            let ops = (start..n.min(start + per))
                .map(|i| {
                    let mut id = [0u8; 16];
                    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    id[8..].copy_from_slice(
                        &(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes(),
                    );
                    Op::RevokeJtis {
                        jtis: vec![RevokedJti {
                            jti: state::encode_id(&id),
                            until: 10_000 + i as u64,
                        }],
                    }
                })
                .collect();
            entries.push(cmd(2 + k as u64, 100, Op::Batch { ops }));
        }
        for chunk in entries.chunks(16) {
            sm.apply(chunk.to_vec()).await.unwrap();
        }
        let t = Instant::now();
        let mut snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let build = t.elapsed();
        let data = bytes_of(&mut snap).await;
        let bytes = data.len();

        let fresh = tempfile::tempdir().unwrap();
        let (_l2, mut sm2, v2) = open(fresh.path()).unwrap();
        // The transfer (writing the received file) is not timed.
        let buf = received(&mut sm2, &data).await;
        let t = Instant::now();
        sm2.install_snapshot(&snap.meta, buf).await.unwrap();
        let install = t.elapsed();
        assert_eq!(v2.revocation_count(), n);

        // Baseline: the same bytes in 4 KiB values, one batch, flushed
        // and fdatasynced.
        let plain = tempfile::tempdir().unwrap();
        let db = db::Db::open(plain.path()).unwrap();
        let t = Instant::now();
        let mut b = sled::Batch::default();
        for (i, piece) in data.chunks(chunk::CHUNK).enumerate() {
            b.insert(&(i as u64).to_be_bytes(), piece);
        }
        db.snapshot.apply_batch(b).unwrap();
        db.durable_flush().unwrap();
        let base = t.elapsed();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {n} | {:.1} MB | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} | {:.1} |",
            bytes as f64 / 1e6,
            ms(build),
            ms(install),
            ms(base),
            ms(build) / ms(base),
            ms(install) / ms(base)
        );
    }
}

#[test]
fn open_reports_a_path_that_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let err = open(&file).err().expect("open fails");
    assert!(
        matches!(err, StoreError::Io { .. } | StoreError::Open { .. }),
        "{err:?}"
    );
}
