//! Signing-key lifecycle and KEK rotation on three nodes: rotation under
//! load, exactly one key per rotation under concurrent requests and
//! partitions, and KEK rotation followed by a restart with only the new
//! KEK. Time moves only through the shared manual clock; every wait is on
//! replicated state, bounded by `WAIT`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tessera::api::LEADER_METADATA;
use tessera::node::{self, Config, KekSource, Listeners};
use tessera::pb;
use tessera::raft::{KeyRecord, KeyState};
use tessera::token::{KeySet, VerifyParams};
use tokio::net::TcpListener;
use tonic::Code;

use crate::cluster::*;

const ISSUER: &str = "https://tessera.dev";
/// The publish-ahead window the tests run with (the default).
const AHEAD: i64 = 600;
/// The clock skew tolerated between nodes (the default `max_clock_skew`).
const SKEW: i64 = 30;
/// From a key's creation to its first signature: a JWKS copy cached just
/// before the key was published has expired by then on any clock within
/// the tolerated skew.
const ACTIVATES: i64 = AHEAD + SKEW;
/// A second test KEK.
const NEW_KEK: &str = "bmV3LXRlc3Qta2VrLXRoaXJ0eS10d28tYnl0ZXMhISE=";

/// Key duties checked often, so a test waits little after moving the clock.
fn fast_keys(cfg: &mut Config) {
    cfg.keys.check_interval = Duration::from_millis(50);
}

fn b64_json(part: &str) -> serde_json::Value {
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// A token's `kid`, `iat` and `exp` (read without verification).
fn kid_iat_exp(token: &str) -> (String, u64, u64) {
    let mut parts = token.split('.');
    let header = b64_json(parts.next().unwrap());
    let claims = b64_json(parts.next().unwrap());
    (
        header["kid"].as_str().unwrap().to_string(),
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    )
}

async fn jwks_on(c: &TestCluster, i: u64) -> KeySet {
    let mut k = tessera::pb::key_service_client::KeyServiceClient::new(
        c.channel_as(i, &c.files("ledger")).await,
    );
    let r = k
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.max_age_seconds, AHEAD as u64,
        "max-age is the publish-ahead window"
    );
    KeySet::from_jwks_json(&r.jwks_json).unwrap()
}

/// Verifies `token`'s signature with `set` (at its own `iat`, so that only
/// the key decides).
fn verifies(token: &str, set: &KeySet) -> Result<(), String> {
    let (_, iat, _) = kid_iat_exp(token);
    let params = VerifyParams::new(ISSUER, iat).with_audience(id("orders"));
    tessera::token::verify(token, set, &params)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn issue_on(c: &TestCluster, i: u64) -> String {
    c.tokens_on(i, "frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap()
        .into_inner()
        .access_token
}

fn node_of(c: &TestCluster, api_addr: &str) -> Option<u64> {
    c.nodes
        .iter()
        .find(|(_, n)| n.api_addr().to_string() == api_addr)
        .map(|(i, _)| *i)
}

/// `RotateSigningKey` sent to node `start`, following the leader hint of
/// an `UNAVAILABLE` answer as the CLI does.
async fn rotate_via(
    c: &TestCluster,
    start: u64,
    algorithm: &str,
    now: bool,
) -> Result<pb::RotateSigningKeyResponse, tonic::Status> {
    let mut at = start;
    let mut last = None;
    for _ in 0..5 {
        let req = pb::RotateSigningKeyRequest {
            algorithm: algorithm.into(),
            now,
        };
        match c.admin(at).await.rotate_signing_key(req).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if s.code() == Code::Unavailable => {
                let hint = s
                    .metadata()
                    .get(LEADER_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|a| node_of(c, a));
                match hint {
                    Some(i) if i != at => at = i,
                    _ => return Err(s),
                }
                last = Some(s);
            }
            Err(s) => return Err(s),
        }
    }
    Err(last.unwrap())
}

/// Waits until node `i`'s key ring satisfies `pred`.
async fn wait_keys(c: &TestCluster, i: u64, what: &str, pred: impl Fn(&[KeyRecord]) -> bool) {
    let state = c.node(i).state().clone();
    let mut rx = state.watch_revision();
    tokio::time::timeout(WAIT, rx.wait_for(|_| pred(&state.keys())))
        .await
        .unwrap_or_else(|_| panic!("node {i}: {what}: {:?}", state.keys()))
        .unwrap();
}

async fn wait_all(c: &TestCluster, what: &str, pred: impl Fn(&[KeyRecord]) -> bool + Copy) {
    for i in [1, 2, 3] {
        wait_keys(c, i, what, pred).await;
    }
}

fn state_of(keys: &[KeyRecord], kid: &str) -> Option<KeyState> {
    keys.iter().find(|k| k.kid == kid).map(|k| k.state)
}

fn active(keys: &[KeyRecord]) -> Vec<String> {
    keys.iter()
        .filter(|k| k.state == KeyState::Active)
        .map(|k| k.kid.clone())
        .collect()
}

/// Every node holds the same key ring; returns it.
async fn same_ring(c: &TestCluster) -> Vec<KeyRecord> {
    c.wait_converged(&[1, 2, 3]).await;
    let ring = c.node(1).state().keys();
    for i in [2, 3] {
        assert_eq!(
            c.node(i).state().keys(),
            ring,
            "node {i}'s key ring differs"
        );
    }
    ring
}

/// Tokens issued in the background, round robin over the nodes, each
/// verified at once with the JWKS of another node fetched after its issue.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    tokens: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<Vec<String>>>,
    /// How many tokens were issued so far.
    issued: tokio::sync::watch::Receiver<usize>,
}

impl Load {
    async fn start(c: &TestCluster) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut issuers = Vec::new();
        let mut jwks = Vec::new();
        for i in [1u64, 2, 3] {
            issuers.push(c.tokens_on(i, "frontend").await);
            jwks.push(tessera::pb::key_service_client::KeyServiceClient::new(
                c.channel_as(i, &c.files("ledger")).await,
            ));
        }
        let (s, t, f) = (stop.clone(), tokens.clone(), failures.clone());
        let (count, issued) = tokio::sync::watch::channel(0usize);
        let task = tokio::spawn(async move {
            let mut k = 0usize;
            while !s.load(Ordering::SeqCst) {
                let issued = issuers[k % 3]
                    .issue_token(issue_req("orders", &["orders:write"]))
                    .await;
                let token = match issued {
                    Ok(r) => r.into_inner().access_token,
                    Err(e) => {
                        f.lock().unwrap().push(format!("issue: {e}"));
                        k += 1;
                        continue;
                    }
                };
                match jwks[(k + 1) % 3].get_jwks(pb::GetJwksRequest {}).await {
                    Ok(r) => {
                        let set = KeySet::from_jwks_json(&r.into_inner().jwks_json).unwrap();
                        if let Err(e) = verifies(&token, &set) {
                            f.lock().unwrap().push(format!("verify: {e}"));
                        }
                    }
                    Err(e) => f.lock().unwrap().push(format!("jwks: {e}")),
                }
                let n = {
                    let mut t = t.lock().unwrap();
                    t.push(token);
                    t.len()
                };
                count.send_replace(n);
                k += 1;
            }
        });
        Self {
            stop,
            task,
            tokens,
            failures,
            issued,
        }
    }

    /// Waits (bounded) until `n` more tokens were issued.
    async fn more(&self, n: usize) {
        let mut rx = self.issued.clone();
        let target = *rx.borrow() + n;
        tokio::time::timeout(WAIT, rx.wait_for(|c| *c >= target))
            .await
            .expect("tokens keep being issued")
            .unwrap();
    }

    async fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let tokens = self.tokens.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (tokens, failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_keeps_every_token_verifiable_until_it_expires() {
    let c = TestCluster::start_with(3, fast_keys).await;
    let k0 = active(&same_ring(&c).await).pop().unwrap();
    let load = Load::start(&c).await;
    load.more(10).await;

    // Rotation 1: the new key is published on every node before it signs.
    let r1 = rotate_via(&c, 1, "", false).await.unwrap();
    assert!(r1.created);
    let k1 = r1.key.unwrap().kid;
    let ring = same_ring(&c).await;
    assert_eq!(state_of(&ring, &k1), Some(KeyState::Pending));
    for i in [1, 2, 3] {
        assert!(
            jwks_on(&c, i).await.get(&k1).is_some(),
            "pending key published"
        );
    }
    load.more(10).await;
    let before: BTreeSet<String> = load
        .tokens
        .lock()
        .unwrap()
        .iter()
        .map(|t| kid_iat_exp(t).0)
        .collect();
    assert_eq!(
        before,
        BTreeSet::from([k0.clone()]),
        "the pending key signs nothing"
    );

    // Publish-ahead passes: the leader activates k1 and retires k0.
    c.clock.advance(ACTIVATES);
    wait_all(&c, "k1 active", |k| {
        state_of(k, &k1) == Some(KeyState::Active) && state_of(k, &k0) == Some(KeyState::Retired)
    })
    .await;
    load.more(10).await;

    // Rotation 2, with ES256.
    let r2 = rotate_via(&c, 2, "ES256", false).await.unwrap();
    let k2 = r2.key.unwrap().kid;
    wait_all(&c, "k2 pending", |k| {
        state_of(k, &k2) == Some(KeyState::Pending)
    })
    .await;
    load.more(10).await;
    c.clock.advance(ACTIVATES);
    wait_all(&c, "k2 active", |k| {
        state_of(k, &k2) == Some(KeyState::Active) && state_of(k, &k1) == Some(KeyState::Retired)
    })
    .await;
    load.more(10).await;
    let ring = same_ring(&c).await;
    assert_eq!(active(&ring), vec![k2.clone()], "one active key");
    assert_eq!(
        ring.len(),
        3,
        "k0 is still published: its tokens may be live"
    );

    // ListKeys shows the lifecycle times.
    let listed = c
        .admin(3)
        .await
        .list_keys(pb::ListKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let info: BTreeMap<String, pb::KeyInfo> = listed
        .keys
        .into_iter()
        .map(|k| (k.kid.clone(), k))
        .collect();
    assert_eq!(info[&k0].state, "retired");
    assert_eq!(info[&k2].algorithm, "ES256");
    assert_eq!(info[&k1].activated_at, info[&k0].retired_at);
    // Not the max-age alone: a leader whose clock runs up to the skew ahead
    // of the one that created k1 would activate it while a JWKS cached just
    // before k1 was published is still fresh (its verifier refuses k1's
    // tokens: unknown kid).
    assert_eq!(
        info[&k1].activate_after,
        info[&k1].created_at + ACTIVATES as u64,
        "a new key signs only once a JWKS cached before it was published has expired on every clock"
    );
    assert_eq!(listed.retire_grace_seconds, 3600 + 30 + 30);
    let k0_removal = info[&k0].remove_after;
    let k1_removal = info[&k1].remove_after;
    assert_eq!(
        k0_removal,
        info[&k0].retired_at + listed.retire_grace_seconds
    );

    // Up to its removal time, k0 stays; then the leader removes it.
    c.clock.advance(k0_removal as i64 - c.now() as i64 - 1);
    assert!(jwks_on(&c, 1).await.get(&k0).is_some());
    c.clock.advance(1);
    wait_all(&c, "k0 removed", |k| state_of(k, &k0).is_none()).await;
    load.more(10).await;
    c.clock.advance(k1_removal as i64 - c.now() as i64);
    wait_all(&c, "k1 removed", |k| state_of(k, &k1).is_none()).await;
    load.more(5).await;

    let (tokens, failures) = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
    let leeway = 30;
    let mut by_kid: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tokens {
        let (kid, _, exp) = kid_iat_exp(t);
        *by_kid.entry(kid.clone()).or_default() += 1;
        // Every token signed by a removed key had expired (plus leeway)
        // before its key was removed.
        if kid == k0 {
            assert!(exp + leeway <= k0_removal, "a k0 token outlived its key");
        }
        if kid == k1 {
            assert!(exp + leeway <= k1_removal, "a k1 token outlived its key");
        }
    }
    assert!(by_kid.contains_key(&k0) && by_kid.contains_key(&k1) && by_kid.contains_key(&k2));
    assert_eq!(by_kid.len(), 3, "{by_kid:?}");
    // The newest tokens (ES256) verify with the JWKS of every node now.
    let last = tokens.last().unwrap();
    assert_eq!(kid_iat_exp(last).0, k2);
    for i in [1, 2, 3] {
        verifies(last, &jwks_on(&c, i).await).unwrap();
    }
    eprintln!(
        "rotation under load: {} tokens, by key {by_kid:?}",
        tokens.len()
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_on_every_node_add_exactly_one_key() {
    let c = Arc::new(TestCluster::start_with(3, fast_keys).await);
    for round in 0..2 {
        let before = same_ring(&c).await;
        let mut tasks = Vec::new();
        for k in 0..9u64 {
            let c = c.clone();
            let alg = if round == 0 { "EdDSA" } else { "ES256" };
            tasks.push(tokio::spawn(async move {
                rotate_via(&c, k % 3 + 1, alg, false).await
            }));
        }
        let mut kids = BTreeSet::new();
        let mut created = 0;
        for t in tasks {
            let r = t.await.unwrap().unwrap();
            created += usize::from(r.created);
            kids.insert(r.key.unwrap().kid);
        }
        assert_eq!(created, 1, "round {round}: one call created the key");
        assert_eq!(
            kids.len(),
            1,
            "round {round}: every call names the same key"
        );
        let ring = same_ring(&c).await;
        assert_eq!(
            ring.len(),
            before.len() + 1,
            "round {round}: exactly one new key"
        );
        let kid = kids.into_iter().next().unwrap();
        assert_eq!(state_of(&ring, &kid), Some(KeyState::Pending));
        c.clock.advance(ACTIVATES);
        wait_all(&c, "the new key active", |k| active(k) == [kid.clone()]).await;
    }
    // The ES256 key signs, and its tokens verify with the JWKS.
    let token = issue_on(&c, 2).await;
    let header = b64_json(token.split('.').next().unwrap());
    assert_eq!(header["alg"], "ES256");
    verifies(&token, &jwks_on(&c, 3).await).unwrap();
    // A bad algorithm is refused before anything happens.
    let e = c
        .admin(1)
        .await
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            algorithm: "HS256".into(),
            now: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Not for everyone.
    let e = tessera::pb::admin_service_client::AdminServiceClient::new(
        c.channel_as(1, &c.files("frontend")).await,
    )
    .rotate_signing_key(pb::RotateSigningKeyRequest::default())
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    Arc::try_unwrap(c).ok().unwrap().stop().await;
}

/// `keys rotate --now --algorithm ES256` with an EdDSA rotation pending
/// activated the EdDSA key: the operator got a key of an algorithm they
/// had not asked for, signing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_es256_emergency_rotation_activated_the_pending_eddsa_key() {
    let c = TestCluster::start_with(1, fast_keys).await;
    let pending = rotate_via(&c, 1, "EdDSA", false).await.unwrap();
    assert!(pending.created);
    let kid = pending.key.unwrap().kid;
    let before = c.node(1).state().keys();
    for now in [true, false] {
        let e = rotate_via(&c, 1, "ES256", now).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains(&kid), "{e:?}");
    }
    assert_eq!(
        c.node(1).state().keys(),
        before,
        "nothing changed on a refused rotation"
    );
    // Asking for the pending key's algorithm, or for none, takes it.
    let r = rotate_via(&c, 1, "EdDSA", false).await.unwrap();
    assert!(!r.created);
    assert_eq!(r.key.unwrap().kid, kid);
    let r = rotate_via(&c, 1, "", true).await.unwrap();
    assert!(r.activated);
    assert_eq!(r.key.unwrap().kid, kid);
    assert_eq!(active(&c.node(1).state().keys()), [kid]);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_on_an_isolated_minority_fails_and_the_majority_commits_one_key() {
    let c = TestCluster::start_with(3, fast_keys).await;
    let before = same_ring(&c).await;
    let old = c.agreed_leader(&[1, 2, 3]).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    c.faults.isolate(old);

    // The isolated (old) leader cannot commit a key, even in an emergency.
    let e = c
        .admin(old)
        .await
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            algorithm: "EdDSA".into(),
            now: true,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{e:?}"
    );

    // The majority elects a leader and rotates.
    let new = c.agreed_leader(&others).await;
    let r = rotate_via(&c, new, "EdDSA", false).await.unwrap();
    assert!(r.created);
    let kid = r.key.unwrap().kid;

    c.faults.heal();
    c.node(old)
        .raft()
        .wait(Some(WAIT))
        .current_leader(new, "the old leader follows")
        .await
        .unwrap();
    let ring = same_ring(&c).await;
    assert_eq!(
        ring.len(),
        before.len() + 1,
        "only the majority's key: {ring:?}"
    );
    assert_eq!(state_of(&ring, &kid), Some(KeyState::Pending));
    c.clock.advance(ACTIVATES);
    wait_all(&c, "one active key", |k| active(k) == [kid.clone()]).await;
    let ring = same_ring(&c).await;
    assert_eq!(active(&ring), vec![kid.clone()]);
    assert_eq!(kid_iat_exp(&issue_on(&c, old).await).0, kid);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotation_then_restart_with_only_the_new_kek() {
    let mut c = TestCluster::start_with(3, fast_keys).await;
    let old_id = tessera::keys::Kek::from_text(KEK).unwrap().id().to_string();
    let new_id = tessera::keys::Kek::from_text(NEW_KEK)
        .unwrap()
        .id()
        .to_string();
    // Two keys: the active one and a pending ES256 one.
    rotate_via(&c, 1, "ES256", false).await.unwrap();
    let t_old = issue_on(&c, 1).await;

    // Step 1: every node gets the new KEK, keeping the old as previous.
    for i in [1, 2, 3] {
        let cfg = c.config_mut(i);
        cfg.kek = KekSource::Text(NEW_KEK.into());
        cfg.previous_kek = Some(KekSource::Text(KEK.into()));
        c.restart(i).await;
        c.wait_ready(&[1, 2, 3]).await;
    }
    // A KEK id the leader does not hold is refused.
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let e = c
        .admin(leader)
        .await
        .rotate_kek(pb::RotateKekRequest {
            expected_kek_id: old_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // Step 2: one command re-seals every key.
    let r = c
        .admin(leader)
        .await
        .rotate_kek(pb::RotateKekRequest {
            expected_kek_id: new_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.resealed, 2);
    assert_eq!(r.kek_id, new_id);
    let ring = same_ring(&c).await;
    assert!(ring.iter().all(|k| k.kek_id == new_id), "{ring:?}");

    // Step 3: every node restarts with only the new KEK.
    for i in [1, 2, 3] {
        c.stop_node(i).await;
    }
    for i in [1, 2, 3] {
        c.config_mut(i).previous_kek = None;
        c.start_node(i).await;
    }
    c.wait_ready(&[1, 2, 3]).await;
    same_ring(&c).await;
    let t_new = issue_on(&c, 2).await;
    c.clock.advance(ACTIVATES);
    wait_all(&c, "the ES256 key active", |k| {
        k.iter()
            .any(|r| r.alg == "ES256" && r.state == KeyState::Active)
    })
    .await;
    let t_es = issue_on(&c, 3).await;
    for i in [1, 2, 3] {
        let set = jwks_on(&c, i).await;
        for t in [&t_old, &t_new, &t_es] {
            verifies(t, &set).unwrap();
        }
    }

    // A node holding only the old KEK refuses to start and names the KEK
    // it needs (never a KEK).
    c.stop_node(3).await;
    let mut cfg = c.config_mut(3).clone();
    cfg.kek = KekSource::Text(KEK.into());
    let listeners = Listeners {
        api: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        raft: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        http: None,
    };
    let err = match node::start(cfg, listeners).await {
        Ok(_) => panic!("a node without the current KEK started"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&new_id), "{err}");
    assert!(err.contains(&old_id), "names the KEK it holds: {err}");
    assert!(!err.contains(KEK) && !err.contains(NEW_KEK));
    // With the right KEK it starts again on the same data.
    c.start_node(3).await;
    c.wait_ready(&[3]).await;
    c.stop().await;
}

/// Runs the `tessera` binary as the admin against node 1.
async fn cli(c: &TestCluster, args: &[&str]) -> std::process::Output {
    let files = c.files("admin");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args)
        .arg("--endpoint")
        .arg(c.node(1).api_addr().to_string())
        .arg("--ca")
        .arg(&files.ca)
        .arg("--cert")
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .env_remove("TESSERA_KEK");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_rotates_lists_and_warns_about_now() {
    let c = TestCluster::start(1).await;
    let out = cli(&c, &["keys", "rotate", "--algorithm", "ES256", "--now"]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("signs now"), "{stdout}");
    assert!(
        stdout.contains("refuse its tokens until they refresh"),
        "{stdout}"
    );
    assert!(stderr.contains("warning: --now"), "{stderr}");

    let out = cli(&c, &["keys", "list", "--json"]).await;
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = v["keys"].as_array().unwrap();
    let states: Vec<(&str, &str)> = keys
        .iter()
        .map(|k| {
            (
                k["algorithm"].as_str().unwrap(),
                k["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(states, [("EdDSA", "retired"), ("ES256", "active")]);
    assert_eq!(v["publish_ahead_seconds"], AHEAD);
    let out = cli(&c, &["keys", "list"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("retired"));

    // `kek id` names a KEK file by its id; `kek rotate` with the KEK the
    // cluster already uses has nothing to do.
    let f = c.dir.path().join("kek.txt");
    std::fs::write(&f, KEK).unwrap();
    let id = tessera::keys::Kek::from_text(KEK).unwrap().id().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["kek", "id", "--kek-file", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    let out = cli(
        &c,
        &["kek", "rotate", "--new-kek-file", f.to_str().unwrap()],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("already sealed"));
    c.stop().await;
}

/// A node midway through a KEK rotation (step 1 not yet done on it) cannot
/// open a key activated by a leader that already holds the new KEK. It used
/// to fail its whole key ring, and Introspect took that for an invalid
/// token: a definitive `active=false` for a valid, unrevoked one. Verifying
/// needs only public keys: the node must still verify (it only cannot sign).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_active_keys_kek_still_says_a_valid_token_is_active() {
    let mut c = TestCluster::start(3).await;
    let token = issue_on(&c, 1).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let stale = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != stale).collect();
    for &i in &others {
        let cfg = c.config_mut(i);
        cfg.kek = KekSource::Text(NEW_KEK.into());
        cfg.previous_kek = Some(KekSource::Text(KEK.into()));
        c.restart(i).await;
        c.wait_ready(&[1, 2, 3]).await;
    }
    // The leader must hold the new KEK: move leadership off `stale`.
    let mut leader = c.agreed_leader(&[1, 2, 3]).await;
    if leader == stale {
        c.faults.isolate(stale);
        leader = c.agreed_leader(&others).await;
        c.faults.heal();
        c.node(stale)
            .raft()
            .wait(Some(WAIT))
            .current_leader(leader, "the stale node follows")
            .await
            .unwrap();
    }
    // An emergency rotation: the new key is sealed under the new KEK.
    let rev = c
        .admin(leader)
        .await
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            algorithm: "EdDSA".into(),
            now: true,
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    for i in [leader, stale] {
        let mut req = introspect_req(&token);
        req.min_revision = rev;
        let r = c
            .tokens_on(i, "admin")
            .await
            .introspect(req)
            .await
            .unwrap_or_else(|s| panic!("node {i}: {s:?}"))
            .into_inner();
        assert!(
            r.active,
            "node {i} says a valid, unrevoked token is inactive"
        );
    }
    // It still cannot sign, and says so.
    let e = c
        .tokens_on(stale, "frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    c.stop().await;
}
