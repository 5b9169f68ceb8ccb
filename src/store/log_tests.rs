//! Tests of the log store: acknowledgement after fsync, reopen, purge,
//! the committed id in the log, and the upgrade from a log kept in sled.

use openraft::storage::RaftLogReaderExt;
use openraft::testing::{blank_ent, log_id};

use super::*;

fn open(dir: &std::path::Path) -> LogStore {
    LogStore::new(Arc::new(Db::open(dir).unwrap()))
}

#[test]
fn index_bounds_cover_every_bound_kind() {
    assert_eq!(index_bounds(&(3..7)), Some((3, Some(7))));
    assert_eq!(index_bounds(&(3..=7)), Some((3, Some(8))));
    assert_eq!(index_bounds(&(3..3)), None);
    assert_eq!(
        index_bounds(&(Bound::Included(5), Bound::Excluded(3))),
        None
    );
    assert_eq!(index_bounds(&(..)), Some((0, None)));
    assert_eq!(index_bounds(&(0..=u64::MAX)), Some((0, None)));
    assert_eq!(
        index_bounds(&(Bound::Excluded(u64::MAX), Bound::Unbounded)),
        None
    );
    assert_eq!(
        index_bounds(&(Bound::Excluded(2), Bound::Included(2))),
        None
    );
}

// The acknowledgement of an append must never precede the fsync that
// makes it durable: the callback records how many fsyncs had completed
// when it ran, and a whole batch costs exactly one.
#[tokio::test]
async fn append_acknowledges_only_after_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let before = store.fsync_count();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let db = store.db.clone();
    let entries: Vec<Entry> = (1..=5).map(|i| blank_ent(1, 1, i)).collect();
    store
        .append_then(entries, move |r| {
            // The fsync count as the acknowledgement runs.
            let _ = tx.send(r.map(|_| db.fsync_count()));
        })
        .await
        .unwrap();
    let at_ack = rx.await.expect("callback ran").unwrap();
    assert_eq!(at_ack, before + 1, "acknowledged after exactly one fsync");
    assert_eq!(store.fsync_count(), before + 1);
    // Readable once append returned.
    let got = store.try_get_log_entries(1..=5).await.unwrap();
    assert_eq!(got.len(), 5);
}

#[tokio::test]
async fn vote_and_truncate_and_purge_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let n = store.fsync_count();
    store.save_vote(&Vote::new(3, 1)).await.unwrap();
    assert_eq!(store.fsync_count(), n + 1);
    let entries: Vec<Entry> = (1..=4).map(|i| blank_ent(1, 1, i)).collect();
    store.append_then(entries, |r| r.unwrap()).await.unwrap();
    store.truncate(log_id(1, 1, 4)).await.unwrap();
    store.purge(log_id(1, 1, 1)).await.unwrap();
    // Vote, append, truncation, and the purge's mark: one fsync each
    // (the purge's file removals fsync the directory, not a file).
    assert_eq!(store.fsync_count(), n + 4);
    let st = store.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 1)));
    assert_eq!(st.last_log_id, Some(log_id(1, 1, 3)));
    // Purging backwards is a no-op.
    store.purge(log_id(0, 1, 0)).await.unwrap();
    let st = store.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 1)));
}

#[tokio::test]
async fn purging_thousands_of_entries_leaves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    const PURGE_BATCH: usize = 256;
    let n = 3 * PURGE_BATCH as u64 + 7;
    let entries: Vec<Entry> = (1..=n).map(|i| blank_ent(1, 1, i)).collect();
    store.append_then(entries, |r| r.unwrap()).await.unwrap();
    let upto = 2 * PURGE_BATCH as u64 + 3;
    store.purge(log_id(1, 1, upto)).await.unwrap();
    let st = store.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, upto)));
    assert_eq!(st.last_log_id, Some(log_id(1, 1, n)));
    let got = store.try_get_log_entries(..).await.unwrap();
    let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(idx, (upto + 1..=n).collect::<Vec<_>>());
}

// A crash between the purge mark and the removals leaves entries at or
// below the mark: nothing reads them and the next purge removes them.
#[tokio::test]
async fn a_purge_cut_short_after_its_mark_leaves_no_hole() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let entries: Vec<Entry> = (1..=6).map(|i| blank_ent(1, 1, i)).collect();
    store.append_then(entries, |r| r.unwrap()).await.unwrap();
    // What a purge up to 3 leaves if it stops right after its mark.
    store
        .db
        .log_meta
        .insert(K_LAST_PURGED, db::encode(&Some(log_id(1, 1, 3))).unwrap())
        .unwrap();
    drop(store);
    let mut store = open(dir.path());
    let st = store.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 3)));
    assert_eq!(st.last_log_id, Some(log_id(1, 1, 6)));
    let got = store.try_get_log_entries(4..).await.unwrap();
    assert_eq!(got.len(), 3);
    store.purge(log_id(1, 1, 4)).await.unwrap();
    let got = store.try_get_log_entries(..).await.unwrap();
    let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(idx, [5, 6]);
}

// An earlier version saved the committed id in sled without an fsync
// of its own: after an upgrade it can be ahead of what the log holds.
// The store must then start from the end of what it holds, not refuse
// to open (or apply entries it does not have).
#[tokio::test]
async fn a_committed_id_saved_ahead_of_the_log_is_cut_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        // From index 0, as openraft's first entry is.
        let entries: Vec<Entry> = (0..=6).map(|i| blank_ent(1, 1, i)).collect();
        store.append_then(entries, |r| r.unwrap()).await.unwrap();
        store
            .db
            .log_meta
            .insert(K_COMMITTED, db::encode(&Some(log_id(1, 1, 6))).unwrap())
            .unwrap();
        store.db.durable_flush().unwrap();
    }
    // What a power loss could leave: entries 5 and 6 never reached the
    // disk.
    {
        let store = open(dir.path());
        store.db.raftlog.truncate_from(5).unwrap();
    }
    let (mut store, _sm, view) = super::super::open(dir.path()).unwrap();
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 4)));
    assert_eq!(view.revision(), 4, "replayed up to the end of the log");
    let st = store.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id, Some(log_id(1, 1, 4)));
    // And with nothing left at all, nothing is committed.
    drop((store, _sm, view));
    {
        let store = open(dir.path());
        store.db.raftlog.truncate_from(0).unwrap();
    }
    let mut store = open(dir.path());
    assert_eq!(store.read_committed().await.unwrap(), None);
}

#[tokio::test]
async fn limited_reads_are_bounded_but_never_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let n = MAX_ENTRIES_PER_READ as u64 + 10;
    let entries: Vec<Entry> = (1..=n).map(|i| blank_ent(1, 1, i)).collect();
    store.append_then(entries, |r| r.unwrap()).await.unwrap();
    let mut reader = store.get_log_reader().await;
    let got = reader.limited_get_log_entries(1, n + 1).await.unwrap();
    assert_eq!(got.len(), MAX_ENTRIES_PER_READ);
    assert_eq!(got[0].log_id.index, 1);
    let got = reader.limited_get_log_entries(n, n + 1).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        reader.try_get_log_entries(..).await.unwrap().len(),
        n as usize
    );
    assert_eq!(reader.get_log_id(n).await.unwrap(), log_id(1, 1, n));
}

#[test]
fn incarnation_is_stable_across_reopen_and_fresh_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).incarnation();
    assert_ne!(first, 0);
    assert_eq!(open(dir.path()).incarnation(), first);
    let other = tempfile::tempdir().unwrap();
    let second = open(other.path()).incarnation();
    assert_ne!(second, 0);
    assert_ne!(second, first);
    // Wiping the data means a new incarnation.
    std::fs::remove_dir_all(dir.path()).unwrap();
    let third = open(dir.path()).incarnation();
    assert_ne!(third, 0);
    assert_ne!(third, first);
}

// A node upgraded in place finds its log in sled's `log` tree, in JSON
// (the format before `entry_format`) or MessagePack, an entry larger
// than a sled chunk stored in chunks: opening moves every entry above
// the purge point into segment files and empties the tree.
#[tokio::test]
async fn a_log_kept_in_sled_by_an_earlier_version_moves_into_segments() {
    let dir = tempfile::tempdir().unwrap();
    let big = big_entry(3, 4000);
    {
        let db = Db::open(dir.path()).unwrap();
        let legacy = db.tree(db::T_LOG.as_bytes());
        let mut batch = sled::Batch::default();
        for (e, json) in [
            (blank_ent(1, 1, 1), true),
            (blank_ent(1, 1, 2), false),
            (big.clone(), true),
            (blank_ent(1, 1, 4), false),
        ] {
            let bytes = if json {
                serde_json::to_vec(&e).unwrap()
            } else {
                entry_format::encode(&e).unwrap()
            };
            chunk::put(&mut batch, &db::index_key(e.log_id.index), &bytes, 0);
        }
        legacy.apply_batch(batch).unwrap();
        assert!(chunk::stored_chunks(&legacy, &db::index_key(3)).unwrap() > 0);
        db.log_meta
            .insert(K_LAST_PURGED, db::encode(&Some(log_id(1, 1, 1))).unwrap())
            .unwrap();
        db.durable_flush().unwrap();
    }
    // As the earlier version left it: no segment directory.
    std::fs::remove_dir_all(dir.path().join(seglog::DIR)).unwrap();
    {
        let mut store = open(dir.path());
        assert!(store.db.tree(db::T_LOG.as_bytes()).is_empty());
        let st = store.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 1)));
        assert_eq!(st.last_log_id, Some(log_id(1, 1, 4)));
        store
            .append_then(vec![blank_ent(1, 1, 5)], |r| r.unwrap())
            .await
            .unwrap();
    }
    let mut store = open(dir.path());
    let got = store.try_get_log_entries(..).await.unwrap();
    let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(idx, [2, 3, 4, 5]);
    assert_eq!(got[1], big);
}

fn big_entry(index: u64, n: usize) -> Entry {
    Entry {
        log_id: log_id(1, 1, index),
        payload: openraft::EntryPayload::Normal(crate::raft::Command {
            at: 5,
            op: crate::raft::Op::RevokeJtis {
                jtis: (0..n)
                    .map(|i| crate::raft::RevokedJti {
                        jti: format!("jti-{index}-{i:014}"),
                        until: 9,
                    })
                    .collect(),
            },
        }),
    }
}

// An entry larger than sled's blob threshold (which sled wrote to an
// unsynced file of its own) next to small ones reads back whole, before
// and after a reopen.
#[tokio::test]
async fn a_large_entry_appended_next_to_small_ones_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let big = big_entry(2, 4000);
    assert!(entry_format::encode(&big).unwrap().len() > 128 * 1024);
    {
        let mut store = open(dir.path());
        let entries = vec![blank_ent(1, 1, 1), big.clone(), blank_ent(1, 1, 3)];
        store.append_then(entries, |r| r.unwrap()).await.unwrap();
        let got = store.try_get_log_entries(2..=2).await.unwrap();
        assert_eq!(got, vec![big.clone()]);
    }
    let mut store = open(dir.path());
    let got = store.try_get_log_entries(1..=3).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[1], big);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

// The committed id rides with the next append: durable with it, and
// lagging by one append after a crash; a clean close writes it; a
// truncation that cuts its record off does not lose it.
#[tokio::test]
async fn the_committed_id_is_written_with_the_next_append() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("live");
    let image = tmp.path().join("image");
    {
        let mut store = open(&dir);
        let entries: Vec<Entry> = (0..=3).map(|i| blank_ent(1, 1, i)).collect();
        store.append_then(entries, |r| r.unwrap()).await.unwrap();
        store.save_committed(Some(log_id(1, 1, 2))).await.unwrap();
        let entries: Vec<Entry> = (4..=5).map(|i| blank_ent(1, 1, i)).collect();
        store.append_then(entries, |r| r.unwrap()).await.unwrap();
        store.save_committed(Some(log_id(1, 1, 5))).await.unwrap();
        // A crash now (no clean close) leaves the id the last append
        // carried.
        copy_dir(&dir, &image);
    }
    let mut crashed = open(&image);
    assert_eq!(
        crashed.read_committed().await.unwrap(),
        Some(log_id(1, 1, 2))
    );
    let mut store = open(&dir);
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 5)));
    drop(store);
    // Commit 3 rides ahead of entry 6, so after entry 5; a truncation
    // of the uncommitted 5 and 6 cuts its record off, and the next
    // append writes it again.
    let other = tmp.path().join("other");
    {
        let mut store = open(&other);
        let entries: Vec<Entry> = (0..=5).map(|i| blank_ent(1, 1, i)).collect();
        store.append_then(entries, |r| r.unwrap()).await.unwrap();
        store.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
        store
            .append_then(vec![blank_ent(1, 1, 6)], |r| r.unwrap())
            .await
            .unwrap();
        store.truncate(log_id(1, 1, 5)).await.unwrap();
        store
            .append_then(vec![blank_ent(2, 1, 5)], |r| r.unwrap())
            .await
            .unwrap();
        copy_dir(&other, &tmp.path().join("image2"));
    }
    let mut store = open(&tmp.path().join("image2"));
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 3)));
    let got = store.try_get_log_entries(..).await.unwrap();
    assert_eq!(got.len(), 6, "commit records are not entries");
}

#[tokio::test]
async fn reopen_keeps_log_vote_committed_and_purge_point() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        let entries: Vec<Entry> = (1..=6).map(|i| blank_ent(2, 1, i)).collect();
        store.append_then(entries, |r| r.unwrap()).await.unwrap();
        store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        store.save_committed(Some(log_id(2, 1, 5))).await.unwrap();
        // The next append carries the committed id.
        store
            .append_then(vec![blank_ent(2, 1, 7)], |r| r.unwrap())
            .await
            .unwrap();
        store.purge(log_id(2, 1, 2)).await.unwrap();
    }
    let mut store = open(dir.path());
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 1))
    );
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 1, 5)));
    let st = store.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(2, 1, 2)));
    assert_eq!(st.last_log_id, Some(log_id(2, 1, 7)));
    let got = store.try_get_log_entries(..).await.unwrap();
    let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(idx, [3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn a_rotation_cut_short_hides_no_acknowledged_entry_from_openraft() {
    // A new segment file whose first write a power cut took: openraft
    // was once told the log ended at the purge point (and the committed
    // id was cut back to it), so the node denied entries it had
    // acknowledged.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        let entries: Vec<Entry> = (1..=7).map(|i| blank_ent(2, 1, i)).collect();
        store.append_then(entries, |r| r.unwrap()).await.unwrap();
        store.save_committed(Some(log_id(2, 1, 5))).await.unwrap();
        store
            .append_then(vec![blank_ent(2, 1, 8)], |r| r.unwrap())
            .await
            .unwrap();
        store.purge(log_id(2, 1, 2)).await.unwrap();
    }
    let newest = dir.path().join(seglog::DIR).join(format!("{:020}.seg", 9));
    std::fs::File::create(&newest).unwrap();
    let mut store = open(dir.path());
    let st = store.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id, Some(log_id(2, 1, 8)));
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 1, 5)));
    let got = store.try_get_log_entries(3..).await.unwrap();
    assert_eq!(got.len(), 6);
}
