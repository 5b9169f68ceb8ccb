//! On-disk compatibility: a data directory written by an earlier release
//! opens in this one and serves exactly what it held.
//!
//! `tests/fixtures/data-2026-12-01/` is the data directory of a one-node
//! cluster of these tests (their KEK and manual clock), written by the
//! release of 2026-12-01: the Raft log in segment files, with a snapshot
//! and a purged log behind it, and entries after the snapshot; signing
//! keys of both algorithms, one rotated out of signing; revocations by
//! token (a chain), by `jti` and by client cut-off. `manifest.json` next to
//! it says what the node held and which tokens must (not) be active.
//! `tests/fixtures/data-sled-log/` is the same, written by the last version
//! that kept the Raft log in sled (22fe057, 2026-12-01 08:35).
//!
//! A change to any stored encoding (Raft entries and commands, the vote and
//! purge point, the snapshot file, the state machine's records, sled's own
//! files) that a node of this release could not read breaks this test. A
//! deliberate format change keeps this fixture readable (or documents the
//! upgrade path) and adds a fixture of its own, written by
//! `write_the_data_directory_fixture` below:
//!
//! ```text
//! TESSERA_WRITE_FIXTURE=tests/fixtures/data-YYYY-MM-DD \
//!   cargo test --test it t99_data_formats -- --ignored
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera::pb;

use crate::cluster::*;

/// The fixture's directory.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// What the node held when the fixture was written.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// The manual clock's reading (tokens are valid then).
    clock: u64,
    revision: u64,
    /// Raft: the snapshot's and the purge point's log index, and the last
    /// log index.
    snapshot_index: u64,
    purged_index: u64,
    last_log_index: u64,
    policy: (u64, String),
    keys: Vec<tessera::raft::KeyRecord>,
    revoked_jtis: BTreeSet<String>,
    revocation_count: usize,
    /// Tokens that must introspect as active, and as inactive.
    active: Vec<String>,
    inactive: Vec<String>,
}

fn remove_empty_dirs(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            remove_empty_dirs(&p);
            if std::fs::read_dir(&p).unwrap().next().is_none() {
                std::fs::remove_dir(&p).unwrap();
            }
        }
    }
}

async fn active(c: &TestCluster, token: &str) -> bool {
    c.tokens("admin")
        .await
        .introspect(introspect_req(token))
        .await
        .unwrap()
        .into_inner()
        .active
}

async fn issue(c: &TestCluster) -> pb::TokenResponse {
    c.tokens("frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write", "payments:charge"]))
        .await
        .unwrap()
        .into_inner()
}

fn raft_indexes(c: &TestCluster) -> (u64, u64, u64) {
    let m = c.node(1).raft().metrics().borrow().clone();
    (
        m.snapshot.map_or(0, |s| s.index),
        m.purged.map_or(0, |p| p.index),
        m.last_log_index.unwrap_or(0),
    )
}

/// Asserts that node 1 holds what `m` says, and answers for its tokens.
async fn check_holds(c: &TestCluster, m: &Manifest) {
    let state = c.node(1).state();
    assert!(state.revision() >= m.revision, "revision went back");
    assert_eq!(state.revoked_jtis(), m.revoked_jtis);
    assert_eq!(state.revocation_count(), m.revocation_count);
    assert_eq!(state.keys(), m.keys);
    assert_eq!(state.policy(), Some(m.policy.clone()));
    for (i, t) in m.active.iter().enumerate() {
        assert!(active(c, t).await, "token {i} of `active` is not");
    }
    for (i, t) in m.inactive.iter().enumerate() {
        assert!(!active(c, t).await, "token {i} of `inactive` is active");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_written_on_2026_12_01_opens_and_serves_what_it_held() {
    opens_and_serves_what_it_held("data-2026-12-01").await;
}

/// The upgrade across the Raft log's move out of sled: written by 22fe057,
/// the last version with the log in sled's `log` tree, which the first
/// open moves into segment files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_with_the_log_in_sled_is_upgraded_and_serves_what_it_held() {
    opens_and_serves_what_it_held("data-sled-log").await;
}

async fn opens_and_serves_what_it_held(name: &str) {
    let dir = fixture(name);
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut c = TestCluster::start_on_copy_of(&dir.join("node1")).await;
    c.clock.advance(m.clock as i64 - c.now() as i64);

    // The log still holds what it held: nothing was replayed away or lost.
    let (snapshot, purged, last) = raft_indexes(&c);
    assert_eq!(snapshot, m.snapshot_index, "snapshot index");
    assert_eq!(purged, m.purged_index, "purge point");
    assert!(last >= m.last_log_index, "log ends at {last}");
    check_holds(&c, &m).await;
    assert!(
        c.data_dir(1).join("raftlog").is_dir(),
        "the log in segment files"
    );

    // It takes new writes on top, and keeps them across a restart.
    let fresh = issue(&c).await;
    let rev = revoke_on(
        &c,
        1,
        pb::revoke_request::Target::Jti("after-upgrade".into()),
    )
    .await;
    assert!(rev > m.revision);
    c.restart(1).await;
    c.wait_ready(&[1]).await;
    assert!(c.revoked(1).contains("after-upgrade"));
    assert!(active(&c, &fresh.access_token).await);
    let mut expected = m;
    expected.revoked_jtis.insert("after-upgrade".into());
    expected.revocation_count += 1;
    check_holds(&c, &expected).await;
    c.stop().await;
}

/// Writes a fixture for the test above (not a test: run it by hand with
/// `TESSERA_WRITE_FIXTURE` set when the stored format changes on purpose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes a fixture; run by hand"]
async fn write_the_data_directory_fixture() {
    let Some(out) = std::env::var_os("TESSERA_WRITE_FIXTURE") else {
        return;
    };
    let out = PathBuf::from(out);
    assert!(!out.exists(), "{} exists; remove it first", out.display());
    let mut c = TestCluster::start_with(1, |cfg| {
        cfg.raft.snapshot_every = 20;
        cfg.raft.keep_logs = 5;
    })
    .await;
    let mut active_tokens = Vec::new();
    let mut inactive = Vec::new();

    // A chain: its middle token revoked (so the last one with it).
    let (t1, t2, t3) = chain_of_three(&c).await;
    revoke_on(&c, 1, pb::revoke_request::Target::Token(t2.access_token)).await;
    active_tokens.push(t1.access_token);
    inactive.push(t3.access_token);

    // A client cut-off: what `orders` minted so far goes.
    let t4 = issue(&c).await;
    let t6 = c
        .tokens("orders")
        .await
        .exchange_token(exchange_req(
            &t4.access_token,
            "payments",
            &["payments:charge"],
        ))
        .await
        .unwrap()
        .into_inner();
    revoke_on(&c, 1, pb::revoke_request::Target::Client(id("orders"))).await;
    active_tokens.push(t4.access_token);
    inactive.push(t6.access_token);

    // A second key of the other algorithm, signing from now on.
    c.admin(1)
        .await
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            algorithm: "ES256".into(),
            now: true,
        })
        .await
        .unwrap();
    let t5 = issue(&c).await;
    active_tokens.push(t5.access_token);
    let t7 = issue(&c).await;

    // Enough writes for a snapshot and a purged log behind it.
    let b = revoke_burst(&c, "fixture", 40, 2, &[1]).await;
    assert!(b.failed.is_empty(), "{:?}", b.failed);
    c.node(1)
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some(), "log purged behind a snapshot")
        .await
        .unwrap();
    // And a write after it, in the log only.
    revoke_on(&c, 1, pb::revoke_request::Target::Jti(t7.jti)).await;
    inactive.push(t7.access_token);

    let state = c.node(1).state();
    let (snapshot_index, purged_index, last_log_index) = raft_indexes(&c);
    assert!(snapshot_index > 0 && purged_index > 0 && last_log_index > snapshot_index);
    let m = Manifest {
        clock: c.now(),
        revision: state.revision(),
        snapshot_index,
        purged_index,
        last_log_index,
        policy: state.policy().unwrap(),
        keys: state.keys(),
        revoked_jtis: state.revoked_jtis(),
        revocation_count: state.revocation_count(),
        active: active_tokens,
        inactive,
    };
    assert_eq!(m.keys.len(), 2);
    check_holds(&c, &m).await;
    // A clean stop (as before an upgrade), then the copy: git keeps no
    // empty directories, so neither does the fixture.
    c.stop_node(1).await;
    copy_dir(&c.data_dir(1), &out.join("node1"));
    remove_empty_dirs(&out.join("node1"));
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}
