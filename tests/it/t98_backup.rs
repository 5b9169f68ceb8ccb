//! Backup and restore: a backup taken from a follower under write load
//! holds every revocation acknowledged up to its revision; a restore from it
//! starts a working one-node cluster on which no token issued before the
//! restore is active, not even one revoked after the backup (whose
//! revocation the backup cannot hold); a damaged file is refused.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tessera::keys::{self, Kek};
use tessera::pb;
use tessera::raft::{KeyState, NodeInfo};
use tessera::store::backup::{self, BackupHeader};
use tokio_stream::StreamExt;

use crate::cluster::*;

/// Streams a backup from node `i` into `path`, as `tessera cluster backup`
/// does, and returns its header.
async fn backup_from(c: &TestCluster, i: u64, path: &std::path::Path) -> BackupHeader {
    let mut stream = c
        .admin(i)
        .await
        .backup(pb::BackupRequest {})
        .await
        .unwrap()
        .into_inner();
    let header = match stream.next().await.unwrap().unwrap().part {
        Some(pb::backup_chunk::Part::Header(h)) => BackupHeader {
            cluster_id: h.cluster_id,
            revision: h.revision,
            node_id: h.node_id,
            created_at: h.created_at,
            length: h.length,
            sha256: h.sha256,
            revocations: h.revocations,
            keys: h.keys,
        },
        other => panic!("first message is not a header: {other:?}"),
    };
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(backup::header_line(&header).unwrap().as_bytes())
        .unwrap();
    while let Some(chunk) = stream.next().await {
        match chunk.unwrap().part {
            Some(pb::backup_chunk::Part::Data(d)) => file.write_all(&d).unwrap(),
            other => panic!("unexpected message: {other:?}"),
        }
    }
    file.sync_all().unwrap();
    header
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_keeps_every_revocation_and_revives_no_token() {
    let mut c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();

    // Tokens from before the backup: one stays live, one is revoked after
    // the backup.
    let mut frontend = c.tokens_on(leader, "frontend").await;
    let live = frontend
        .issue_token(issue_req("orders", &["orders:read"]))
        .await
        .unwrap()
        .into_inner();
    let doomed = frontend
        .issue_token(issue_req("orders", &["orders:read"]))
        .await
        .unwrap()
        .into_inner();

    // Write load on every node while the follower takes the backup.
    let before = revoke_burst(&c, "pre", 50, 4, &[1, 2, 3]).await;
    assert!(before.failed.is_empty(), "{:?}", before.failed);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let mut admin = c.tokens_on(leader, "admin").await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for k in 0..2_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let jti = format!("during-{k}");
                if let Ok(r) = admin.revoke(revoke_jti(&jti)).await {
                    acked.push((jti, r.into_inner().revision));
                }
            }
            acked
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    let header = backup_from(&c, follower, &file).await;
    stop.store(true, Ordering::SeqCst);
    let during = load.await.unwrap();
    assert_eq!(header.node_id, follower);
    assert!(!header.cluster_id.is_empty());
    // The backup waited for everything acknowledged before it was asked.
    let last_before = before.acked.iter().map(|(_, r)| *r).max().unwrap();
    assert!(header.revision >= last_before, "{header:?}");

    // Acknowledged after the backup: not in it.
    let late = c
        .tokens_on(leader, "admin")
        .await
        .revoke(revoke_jti(&doomed.jti))
        .await
        .unwrap()
        .into_inner();
    assert!(late.revision > header.revision);

    // Offline check; a flipped byte anywhere is refused.
    assert_eq!(backup::verify_file(&file).unwrap(), header);
    let bytes = std::fs::read(&file).unwrap();
    for at in [bytes.len() / 2, bytes.len() - 1, 20] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        let damaged = dir.path().join(format!("damaged-{at}"));
        std::fs::write(&damaged, &bad).unwrap();
        let err = backup::verify_file(&damaged).expect_err("a damaged backup verifies");
        assert!(
            matches!(err, tessera::store::StoreError::Backup(_)),
            "{err:?}"
        );
    }
    let short = dir.path().join("short");
    std::fs::write(&short, &bytes[..bytes.len() - 10]).unwrap();
    assert!(backup::verify_file(&short).is_err());

    // Restore as node 4, a one-node cluster of its own.
    let raft_addr = c.reserve_raft_addr(4).await;
    let kek = Kek::from_text(KEK).unwrap();
    let now = c.now();
    let key = keys::new_ed25519_record(&kek, KeyState::Active, now).unwrap();
    let restored = backup::restore(
        &file,
        &c.data_dir(4),
        4,
        NodeInfo {
            raft_addr,
            api_addr: String::new(),
            incarnation: 0,
        },
        key,
        now,
    )
    .unwrap();
    assert_eq!(restored.header, header);
    assert_ne!(restored.cluster_id, header.cluster_id);
    // Above any cursor the old cluster can have handed out.
    assert!(
        restored.revision > late.revision + (1 << 31),
        "{}",
        restored.revision
    );
    assert!(!restored.dropped_keys.is_empty());
    // Not twice into the same directory.
    let again = backup::restore(
        &file,
        &c.data_dir(4),
        4,
        NodeInfo {
            raft_addr: c.raft_addr(4),
            api_addr: String::new(),
            incarnation: 0,
        },
        keys::new_ed25519_record(&kek, KeyState::Active, now).unwrap(),
        now,
    );
    assert!(again.is_err());

    c.add_node(4, false).await;
    c.wait_ready(&[4]).await;

    // Every revocation acknowledged up to the backup's revision is there.
    let revoked = c.revoked(4);
    for (jti, rev) in before.acked.iter().chain(during.iter()) {
        if *rev <= header.revision {
            assert!(revoked.contains(jti), "{jti} (revision {rev}) is missing");
        }
    }
    assert!(!revoked.contains(&doomed.jti));

    // A subscriber resuming with a cursor from the old cluster is not
    // skipped past the restored cluster's events: it gets a full snapshot.
    let mut rc = pb::revocation_service_client::RevocationServiceClient::new(
        c.channel_as(4, &c.files("admin")).await,
    );
    let mut events = rc
        .watch_revocations(pb::WatchRequest {
            from_revision: late.revision,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let ev = tokio::time::timeout(WAIT, events.message())
            .await
            .expect("watch event in time")
            .unwrap()
            .expect("stream open");
        match ev.kind {
            Some(pb::watch_event::Kind::Snapshot(rs)) => {
                for r in rs.revocations {
                    if let Some(pb::revocation::Target::Jti(j)) = r.target {
                        seen.insert(j);
                    }
                }
            }
            Some(pb::watch_event::Kind::SnapshotEnd(_)) => break,
            other => {
                panic!("a resumed cursor from the old cluster got {other:?} before a snapshot")
            }
        }
    }
    for (jti, rev) in &before.acked {
        if *rev <= header.revision {
            assert!(seen.contains(jti), "{jti} missing from the resumed stream");
        }
    }

    // No token from before the restore is active: not the live one, and not
    // the one revoked after the backup.
    let mut admin4 = c.tokens_on(4, "admin").await;
    for t in [&live, &doomed] {
        let r = admin4
            .introspect(introspect_req(&t.access_token))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.active, "token {} is active after the restore", t.jti);
        let refused = c
            .tokens_on(4, "orders")
            .await
            .exchange_token(exchange_req(
                &t.access_token,
                "payments",
                &["payments:charge"],
            ))
            .await;
        assert!(
            refused.is_err(),
            "token {} exchanged after the restore",
            t.jti
        );
    }

    // Keys and policy work: a new token is issued, exchanged and active.
    let fresh = c
        .tokens_on(4, "frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write", "payments:charge"]))
        .await
        .unwrap()
        .into_inner();
    let exchanged = c
        .tokens_on(4, "orders")
        .await
        .exchange_token(exchange_req(
            &fresh.access_token,
            "payments",
            &["payments:charge"],
        ))
        .await
        .unwrap()
        .into_inner();
    let r = admin4
        .introspect(introspect_req(&exchanged.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(r.active);
    let p_old = c
        .admin(leader)
        .await
        .get_policy(pb::GetPolicyRequest::default())
        .await
        .unwrap()
        .into_inner();
    let p_new = c
        .admin(4)
        .await
        .get_policy(pb::GetPolicyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p_old.text, p_new.text);
    c.stop().await;
}

/// A restore took the old cluster's last leader id for its own entries,
/// and openraft orders log ids by leader before index: from a cluster
/// whose leader had changed (term 2 or more) the restored node, elected
/// in term 1, appended entries that sorted below its snapshot and never
/// committed a write (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_from_a_cluster_whose_leader_changed_takes_writes() {
    let mut c = TestCluster::start(3).await;
    let first = c.agreed_leader(&[1, 2, 3]).await;
    c.stop_node(first).await;
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != first).collect();
    let leader = c.agreed_leader(&rest).await;
    let term = c.node(leader).raft().metrics().borrow().current_term;
    assert!(term >= 2, "a new leader in a later term: {term}");
    let acked = revoke_burst(&c, "before", 5, 1, &[leader]).await;
    assert!(acked.failed.is_empty(), "{:?}", acked.failed);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    backup_from(&c, leader, &file).await;
    let raft_addr = c.reserve_raft_addr(4).await;
    let kek = Kek::from_text(KEK).unwrap();
    let now = c.now();
    backup::restore(
        &file,
        &c.data_dir(4),
        4,
        NodeInfo {
            raft_addr,
            api_addr: String::new(),
            incarnation: 0,
        },
        keys::new_ed25519_record(&kek, KeyState::Active, now).unwrap(),
        now,
    )
    .unwrap();
    c.add_node(4, false).await;
    c.wait_ready(&[4]).await;
    let r = tokio::time::timeout(
        WAIT,
        c.tokens_on(4, "admin")
            .await
            .revoke(revoke_jti("after-the-restore")),
    )
    .await
    .expect("the restored node committed no write")
    .unwrap()
    .into_inner();
    assert!(r.changed);
    assert!(c.revoked(4).contains("after-the-restore"));
    assert!(acked.acked_set().is_subset(&c.revoked(4)));
    c.stop().await;
}
