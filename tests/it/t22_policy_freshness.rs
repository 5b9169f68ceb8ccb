//! Permissions follow the acknowledged policy: a node behind its leader
//! does not decide on a policy the cluster has replaced, and an open
//! revocation stream ends when a new policy withdraws its permission.

use tessera::pb;
use tessera::pb::admin_service_client::AdminServiceClient;
use tessera::pb::revocation_service_client::RevocationServiceClient;
use tessera::pb::watch_event::Kind;
use tonic::Code;

use crate::cluster::*;

/// The example policy plus a temporary admin grant for `orders`.
fn with_orders_admin() -> String {
    format!(
        "{POLICY}\n@id(\"ops-orders\")\npermit (principal == Tessera::Service::\"{}\", action == Tessera::Action::\"admin\", resource == Tessera::Cluster::\"tessera\");\n",
        id("orders")
    )
}

/// The example policy, where `frontend` may no longer revoke anything.
fn frontend_may_not_revoke() -> String {
    format!(
        "{POLICY}\n@id(\"no-frontend-revoke\")\nforbid (principal == Tessera::Service::\"{}\", action == Tessera::Action::\"revoke\", resource);\n",
        id("frontend")
    )
}

/// Puts `text` through node `on` as `who`; the new version.
async fn put_policy(
    c: &TestCluster,
    on: u64,
    who: &str,
    text: String,
) -> Result<u64, tonic::Status> {
    AdminServiceClient::new(c.channel_as(on, &c.files(who)).await)
        .put_policy(pb::PutPolicyRequest {
            text,
            expected_version: None,
        })
        .await
        .map(|r| r.into_inner().version)
}

/// An operator withdraws `orders`' admin grant (PutPolicy acknowledged by
/// the leader). Through a follower that has not applied it yet, `orders`
/// is still an admin: it puts a policy that gives itself admin again, and
/// the leader commits it. Likewise a revocation the acknowledged policy
/// forbids is accepted through that follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_admin_regranted_itself_through_a_lagging_follower() {
    let c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let f = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    put_policy(&c, leader, "admin", with_orders_admin())
        .await
        .unwrap();
    let t = c
        .tokens_on(leader, "frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap()
        .into_inner();
    c.wait_converged(&[1, 2, 3]).await;

    // The follower falls behind (it still hears heartbeats).
    c.faults.hold_entries(f);
    // Withdraw orders' admin grant and frontend's right to revoke.
    let v2 = put_policy(&c, leader, "admin", frontend_may_not_revoke())
        .await
        .unwrap();
    // Acknowledged: the leader refuses orders now.
    let e = put_policy(&c, leader, "orders", with_orders_admin())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = c
        .tokens_on(leader, "frontend")
        .await
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Token(t.access_token.clone())),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Through the lagging follower.
    let regrant = put_policy(&c, f, "orders", with_orders_admin()).await;
    let revoke = c
        .tokens_on(f, "frontend")
        .await
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Token(t.access_token.clone())),
        })
        .await;
    let stored = c.node(leader).state().policy().unwrap();
    let still_active = c
        .tokens_on(leader, "orders")
        .await
        .introspect(introspect_req(&t.access_token))
        .await
        .unwrap()
        .into_inner()
        .active;
    c.faults.release_entries(f);
    assert!(
        regrant.is_err() && revoke.is_err(),
        "after policy version {v2} was acknowledged, the follower still decided on the old one: \
         orders' PutPolicy -> {:?} (leader now holds version {} with ops-orders: {}); \
         frontend's forbidden Revoke -> {:?}",
        regrant,
        stored.0,
        stored.1.contains("ops-orders"),
        revoke.map(|r| r.into_inner()),
    );
    assert_eq!(stored.0, v2, "nothing was written through the follower");
    assert!(still_active, "the forbidden revocation was not written");
    // Caught up, the follower refuses both for what they are.
    c.wait_converged(&[1, 2, 3]).await;
    let e = put_policy(&c, f, "orders", with_orders_admin())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    c.stop().await;
}

/// A subscriber whose `introspect` permission (which also governs the
/// revocation stream) is withdrawn keeps receiving every revocation on the
/// stream it opened before, although a new subscription is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_kept_streaming_after_policy_withdrew_its_permission() {
    let c = TestCluster::start(1).await;
    let mut old = RevocationServiceClient::new(c.channel_as(1, &c.files("ledger")).await)
        .watch_revocations(pb::WatchRequest {
            from_revision: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let no_ledger = format!(
        "{POLICY}\n@id(\"no-ledger-introspect\")\nforbid (principal == Tessera::Service::\"{}\", action == Tessera::Action::\"introspect\", resource);\n",
        id("ledger")
    );
    put_policy(&c, 1, "admin", no_ledger).await.unwrap();
    // New subscriptions are refused...
    let e = RevocationServiceClient::new(c.channel_as(1, &c.files("ledger")).await)
        .watch_revocations(pb::WatchRequest {
            from_revision: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // ...but the open stream keeps delivering revocations made afterwards.
    let rev = revoke_on(
        &c,
        1,
        pb::revoke_request::Target::Jti("after-withdrawal".into()),
    )
    .await;
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match old.message().await {
                Ok(Some(ev)) => {
                    if let Some(Kind::Revoked(rs)) = &ev.kind {
                        if ev.revision >= rev {
                            return Ok(rs.revocations.clone());
                        }
                    }
                }
                Ok(None) => return Err("ended".to_string()),
                Err(s) => return Err(format!("{s:?}")),
            }
        }
    })
    .await
    .expect("neither an event nor an end");
    assert!(
        got.is_err(),
        "ledger lost the introspect permission but still received revocation {rev}: {got:?}"
    );
    c.stop().await;
}

/// `GetPolicy` passed the read barrier of the other admin calls, so the
/// survivor of a lost majority — the one place the policy's text is left,
/// which CLUSTER.md "Losing a majority" says to carry over — refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivor_of_a_lost_majority_refused_to_hand_out_its_policy() {
    let mut c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    c.wait_converged(&[1, 2, 3]).await;
    let held = c.node(leader).state().policy().unwrap();
    for i in (1..=3).filter(|&i| i != leader) {
        c.stop_node(i).await;
    }
    let got = AdminServiceClient::new(c.channel_as(leader, &c.files("admin")).await)
        .get_policy(pb::GetPolicyRequest::default())
        .await
        .expect("the survivor hands out its policy")
        .into_inner();
    assert_eq!((got.version, got.text), held);
    c.stop().await;
}

/// Gets node `on`'s policy as the admin, waiting for `min_revision`.
async fn get_policy(
    c: &TestCluster,
    on: u64,
    min_revision: u64,
) -> Result<pb::GetPolicyResponse, tonic::Status> {
    AdminServiceClient::new(c.channel_as(on, &c.files("admin")).await)
        .get_policy(pb::GetPolicyRequest { min_revision })
        .await
        .map(|r| r.into_inner())
}

/// Puts `text` through node `on` as the admin, only over `expected`.
async fn put_policy_if(
    c: &TestCluster,
    on: u64,
    text: String,
    expected: u64,
) -> Result<u64, tonic::Status> {
    AdminServiceClient::new(c.channel_as(on, &c.files("admin")).await)
        .put_policy(pb::PutPolicyRequest {
            text,
            expected_version: Some(expected),
        })
        .await
        .map(|r| r.into_inner().version)
}

/// Found by review: `PutPolicy` had no compare-and-set, so two admins who
/// read the same version and each put their edit overwrote each other
/// without a word. With `expected_version`, exactly one of them wins and
/// the other is told to merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_editing_the_same_policy_version_overwrote_each_other() {
    let c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let f = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    c.wait_converged(&[1, 2, 3]).await;
    let read = get_policy(&c, leader, 0).await.unwrap().version;
    assert!(read > 0, "the cluster starts with a policy");

    let edit = |who: &str| {
        format!("{POLICY}\n@id(\"edit-{who}\")\nforbid (principal == Tessera::Service::\"{}\", action, resource);\n", id(who))
    };
    let (a, b) = tokio::join!(
        put_policy_if(&c, leader, edit("alice"), read),
        put_policy_if(&c, leader, edit("bob"), read),
    );
    let (won, lost, text) = match (a, b) {
        (Ok(v), Err(s)) => (v, s, edit("alice")),
        (Err(s), Ok(v)) => (v, s, edit("bob")),
        other => panic!("exactly one edit of version {read} must win: {other:?}"),
    };
    assert_eq!(lost.code(), Code::FailedPrecondition, "{lost:?}");
    assert!(
        lost.message()
            .contains(&format!("no longer at version {read} but at {won}")),
        "{lost:?}"
    );
    for i in [1, 2, 3] {
        let got = get_policy(&c, i, won).await.unwrap();
        assert_eq!(
            (got.version, got.text.as_str()),
            (won, text.as_str()),
            "node {i}"
        );
    }

    // Decided on the leader: elsewhere UNAVAILABLE with its address.
    let e = put_policy_if(&c, f, edit("carol"), won).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e
        .metadata()
        .get(tessera::api::error::LEADER_METADATA)
        .is_some());
    // The winner's retry (its answer lost) is no conflict with itself; a
    // stale version with other text is.
    assert_eq!(
        put_policy_if(&c, leader, text.clone(), read).await.unwrap(),
        won
    );
    let e = put_policy_if(&c, leader, edit("carol"), read)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let next = put_policy_if(&c, leader, edit("carol"), won).await.unwrap();
    assert!(next > won);
    // A put without a version is unconditional, through any node.
    put_policy(&c, f, "admin", POLICY.to_string())
        .await
        .unwrap();
    c.stop().await;
}

/// Found by review: `GetPolicy` answers the node's applied policy, so an
/// operator who put a policy through the leader and checked it on a
/// follower a moment later could see the old version. `min_revision`
/// makes the follower wait for the version it was told (bounded by
/// `read_wait_max`: `DEADLINE_EXCEEDED`, never the old text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_showed_the_old_policy_right_after_a_put() {
    let c = TestCluster::start_with(3, |cfg| {
        cfg.read_wait_max = std::time::Duration::from_millis(500);
    })
    .await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let f = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    c.wait_converged(&[1, 2, 3]).await;
    let old = get_policy(&c, f, 0).await.unwrap();

    c.faults.hold_entries(f);
    let v = put_policy(&c, leader, "admin", with_orders_admin())
        .await
        .unwrap();
    // The scenario: without a revision the follower shows the old policy.
    assert_eq!(get_policy(&c, f, 0).await.unwrap().version, old.version);
    let e = get_policy(&c, f, v).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");

    c.faults.release_entries(f);
    let got = get_policy(&c, f, v).await.unwrap();
    assert_eq!((got.version, got.text), (v, with_orders_admin()));
    c.stop().await;
}

/// Runs `tessera cluster policy … ARGS` against node `i` as the admin.
async fn policy_cli(c: &TestCluster, i: u64, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(["cluster", "policy"])
        .args(c.cli_conn(i, "admin"))
        .args(args)
        .env_remove("TESSERA_LOG")
        .env_remove("TESSERA_LOG_FORMAT")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("the command did not finish")
        .unwrap()
}

/// Found in use: `policy get` printed a `// version N` line above the
/// document, so a file saved from it and put back unchanged was another
/// document: each round trip stored a new version, one such line longer.
/// The document goes to stdout exactly as stored, its version to stderr;
/// and a conditional put of the text already stored writes nothing, also
/// at its own version (it used to take a new version for the same text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_saved_by_policy_get_and_put_back_grew_a_version_line() {
    let c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    c.wait_converged(&[1, 2, 3]).await;
    let stored = get_policy(&c, leader, 0).await.unwrap();

    let out = policy_cli(&c, leader, &["get"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("policy version {}", stored.version)),
        "{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), stored.text);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.cedar");
    std::fs::write(&file, &out.stdout).unwrap();
    let version = stored.version.to_string();
    let out = policy_cli(
        &c,
        leader,
        &["put", "--if-version", &version, file.to_str().unwrap()],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), format!("policy version {version}"));
    let now = get_policy(&c, leader, 0).await.unwrap();
    assert_eq!((now.version, now.text), (stored.version, stored.text));
    c.stop().await;
}
