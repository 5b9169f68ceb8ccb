//! `TestCluster`: nodes in this process, each with a temporary data
//! directory, listeners on port 0 and development certificates; a manual
//! clock shared by all nodes; a fault seam on the Raft network that can
//! isolate a node or drop one direction of traffic; helpers to connect as
//! any example service and to wait on Raft metrics (never on time).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tessera::certs::{self, DevPki, DevPkiOptions};
use tessera::clock::{Clock, ManualClock};
use tessera::keys::{Kek, KeyRing};
use tessera::node::{self, Config, KekSource, Listeners, Node};
use tessera::pb::admin_service_client::AdminServiceClient;
use tessera::pb::token_service_client::TokenServiceClient;
use tessera::pb::{self, key_service_client::KeyServiceClient};
use tessera::raft::network::Faults;
use tessera::tls::TlsFiles;
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// The example policy the README tour uses.
pub const POLICY: &str = include_str!("../../deploy/policy/example.cedar");
/// A fixed test KEK (base64 of 32 bytes).
pub const KEK: &str = "dGVzc2VyYS10ZXN0LWtlay0zMi1ieXRlcy1sb25nISE=";
/// Trust-domain prefix of the example identities.
pub const TD: &str = "spiffe://tessera.dev";
/// A plausible start time for the manual clock (2026-11-26).
pub const T0: u64 = 1_795_000_000;
/// Bound on every wait in the tests: generous, because CI machines are slow;
/// a wait ends as soon as its event happens.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn id(name: &str) -> String {
    match name {
        "admin" => format!("{TD}/admin"),
        other => format!("{TD}/svc/{other}"),
    }
}

pub struct TestCluster {
    pub dir: TempDir,
    pub pki: DevPki,
    pub clock: Arc<ManualClock>,
    pub faults: Arc<Faults>,
    pub nodes: BTreeMap<u64, Node>,
    configs: BTreeMap<u64, Config>,
    /// Each node's Raft address, kept across restarts (the membership
    /// records it).
    raft_addrs: BTreeMap<u64, String>,
    /// The Raft addresses of stopped nodes, bound again (not listening:
    /// connections are still refused) as soon as they stopped, and
    /// listened on when they start: a port left free while a node is down
    /// can be taken by another test (a kernel-chosen port), and the restart
    /// would fail with `AddrInUse`.
    held: BTreeMap<u64, tokio::net::TcpSocket>,
    adjust: Arc<dyn Fn(&mut Config) + Send + Sync>,
}

static CRYPTO: std::sync::Once = std::sync::Once::new();

pub fn init_crypto() {
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

impl TestCluster {
    pub async fn start(n: u64) -> Self {
        Self::start_with(n, |_| {}).await
    }

    /// Like [`TestCluster::start`], with a hook to adjust each node's config.
    /// One node bootstraps itself; more are initialised through the admin
    /// API, like an operator would.
    pub async fn start_with(n: u64, adjust: impl Fn(&mut Config) + Send + Sync + 'static) -> Self {
        init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let opts = DevPkiOptions {
            nodes: 9,
            ..Default::default()
        };
        let pki = certs::init_dev_pki(&dir.path().join("certs"), &opts).unwrap();
        let mut c = Self::empty(dir, pki, Arc::new(adjust));
        for i in 1..=n {
            c.add_node(i, n == 1).await;
        }
        if n > 1 {
            let members: Vec<String> = c.raft_addrs.values().cloned().collect();
            c.admin(1)
                .await
                .init_cluster(pb::InitClusterRequest {
                    raft_addrs: members,
                })
                .await
                .unwrap();
        }
        c.wait_ready(&(1..=n).collect::<Vec<_>>()).await;
        c
    }

    /// No nodes yet: the manual clock at [`T0`], no faults.
    fn empty(dir: TempDir, pki: DevPki, adjust: Arc<dyn Fn(&mut Config) + Send + Sync>) -> Self {
        Self {
            dir,
            pki,
            clock: Arc::new(ManualClock::new(T0)),
            faults: Arc::new(Faults::default()),
            nodes: BTreeMap::new(),
            configs: BTreeMap::new(),
            raft_addrs: BTreeMap::new(),
            held: BTreeMap::new(),
            adjust,
        }
    }

    /// A one-node cluster on a copy of the data directory `data` (written
    /// earlier by a one-node cluster of these tests, with their KEK):
    /// upgrade and format tests.
    pub async fn start_on_copy_of(data: &std::path::Path) -> Self {
        init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let pki =
            certs::init_dev_pki(&dir.path().join("certs"), &DevPkiOptions::default()).unwrap();
        copy_dir(data, &dir.path().join("node1"));
        let mut c = Self::empty(dir, pki, Arc::new(|_| {}));
        c.add_node(1, false).await;
        c.wait_ready(&[1]).await;
        c
    }

    /// Starts node `i` (fresh data unless it ran before) without adding it
    /// to the cluster.
    pub async fn add_node(&mut self, i: u64, bootstrap: bool) {
        let files = self.pki.tls_files(&format!("node{i}")).unwrap();
        let mut config = Config::new(
            i,
            self.dir.path().join(format!("node{i}")),
            String::new(),
            files,
            KekSource::Text(KEK.into()),
        );
        config.initial_policy = Some(POLICY.to_string());
        config.audit = tessera::api::AuditSink::File(self.audit_path(i));
        config.clock = self.clock.clone();
        config.faults = Some(self.faults.clone());
        config.bootstrap = bootstrap;
        (self.adjust)(&mut config);
        self.configs.insert(i, config);
        self.boot(i).await;
    }

    /// Node `i`'s configuration, to change before it is (re)started.
    pub fn config_mut(&mut self, i: u64) -> &mut Config {
        self.configs.get_mut(&i).unwrap()
    }

    pub fn audit_path(&self, i: u64) -> PathBuf {
        self.dir.path().join(format!("audit-node{i}.jsonl"))
    }

    pub fn data_dir(&self, i: u64) -> PathBuf {
        self.configs
            .get(&i)
            .map(|c| c.data_dir.clone())
            .unwrap_or_else(|| self.dir.path().join(format!("node{i}")))
    }

    async fn boot(&mut self, i: u64) {
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // A restarted node listens where the membership says it is.
        let raft_at = self
            .raft_addrs
            .get(&i)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let raft = match self.held.remove(&i) {
            Some(s) => s.listen(1024).unwrap(),
            None => TcpListener::bind(&raft_at).await.unwrap(),
        };
        self.raft_addrs
            .insert(i, raft.local_addr().unwrap().to_string());
        let mut config = self.configs[&i].clone();
        config.advertise_addr = api.local_addr().unwrap().to_string();
        let http = Some(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let node = node::start(config, Listeners { api, raft, http })
            .await
            .unwrap();
        self.nodes.insert(i, node);
    }

    /// Picks the Raft address node `i` will listen on before it starts
    /// (a restore writes it into the membership): a port the system hands
    /// out for 127.0.0.1:0, held for the node (see `held`).
    pub async fn reserve_raft_addr(&mut self, i: u64) -> String {
        let s = hold("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = s.local_addr().unwrap().to_string();
        self.raft_addrs.insert(i, addr.clone());
        self.held.insert(i, s);
        addr
    }

    /// Makes node `i` (stopped) listen for Raft on a new port when it
    /// starts again, as if it had moved: the membership still names the old
    /// address.
    pub fn move_raft_addr(&mut self, i: u64) {
        assert!(!self.nodes.contains_key(&i), "node {i} is running");
        self.raft_addrs.remove(&i);
        self.held.remove(&i);
    }

    pub fn node(&self, i: u64) -> &Node {
        &self.nodes[&i]
    }

    pub fn raft_addr(&self, i: u64) -> String {
        self.raft_addrs[&i].clone()
    }

    /// Stops node `i` cleanly.
    pub async fn stop_node(&mut self, i: u64) {
        let node = self.nodes.remove(&i).unwrap();
        node.shutdown().await.unwrap();
        self.hold_raft_addr(i).await;
    }

    /// Cuts node `lagging` off (it stays cut off), has `n` revocations
    /// named `{prefix}-k` acknowledged through the others, and waits
    /// (bounded) until `leader` has purged its log past what `lagging`
    /// holds: it can catch up only with a snapshot. The burst, and the last
    /// log index `lagging` holds.
    pub async fn leave_behind_a_purged_log(
        &self,
        leader: u64,
        lagging: u64,
        prefix: &str,
        n: usize,
    ) -> (Burst, u64) {
        let rest: Vec<u64> = self
            .nodes
            .keys()
            .copied()
            .filter(|i| *i != lagging)
            .collect();
        self.faults.isolate(lagging);
        let b = revoke_burst(self, prefix, n, 4, &rest).await;
        assert!(b.failed.is_empty(), "{:?}", b.failed);
        let lag_last = self
            .node(lagging)
            .raft()
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0);
        self.node(leader)
            .raft()
            .wait(Some(WAIT))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index > lag_last),
                "log purged past the lagging node",
            )
            .await
            .unwrap();
        (b, lag_last)
    }

    /// Binds stopped node `i`'s Raft address again until it starts (see
    /// `held`); a node stopped another way may call it too.
    pub async fn hold_raft_addr(&mut self, i: u64) {
        if let Some(addr) = self.raft_addrs.get(&i) {
            if let Ok(s) = hold(addr.parse().unwrap()) {
                self.held.insert(i, s);
            }
        }
    }

    /// Starts a stopped node `i` again on its data.
    pub async fn start_node(&mut self, i: u64) {
        self.boot(i).await;
    }

    /// Stops node `i` cleanly and starts it again on the same data.
    pub async fn restart(&mut self, i: u64) {
        self.stop_node(i).await;
        self.boot(i).await;
    }

    pub fn files(&self, name: &str) -> TlsFiles {
        self.pki.tls_files(name).unwrap()
    }

    /// The `--endpoint`, `--ca`, `--cert` and `--key` arguments with which
    /// a command of the `tessera` binary reaches node `i` as `name`.
    pub fn cli_conn(&self, i: u64, name: &str) -> Vec<std::ffi::OsString> {
        let f = self.files(name);
        vec![
            "--endpoint".into(),
            self.node(i).api_addr().to_string().into(),
            "--ca".into(),
            f.ca.into(),
            "--cert".into(),
            f.cert.into(),
            "--key".into(),
            f.key.into(),
        ]
    }

    pub async fn channel_as(&self, i: u64, files: &TlsFiles) -> Channel {
        let addr = self.node(i).api_addr().to_string();
        tessera::client::connect(&addr, files).await.unwrap()
    }

    /// A TokenService client on node 1 presenting `name`'s certificate.
    pub async fn tokens(&self, name: &str) -> TokenServiceClient<Channel> {
        self.tokens_on(1, name).await
    }

    /// A TokenService client on node `i` presenting `name`'s certificate.
    /// A token `frontend` gets through node `i` for `orders`, scope
    /// `orders:write`.
    pub async fn issue_on(&self, i: u64) -> pb::TokenResponse {
        self.tokens_on(i, "frontend")
            .await
            .issue_token(issue_req("orders", &["orders:write"]))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn tokens_on(&self, i: u64, name: &str) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel_as(i, &self.files(name)).await)
    }

    pub async fn admin(&self, i: u64) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel_as(i, &self.files("admin")).await)
    }

    pub async fn keys(&self, name: &str) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(self.channel_as(1, &self.files(name)).await)
    }

    /// The cluster's current key ring, rebuilt from node 1's state: lets a
    /// test sign tokens with claims no handler would produce.
    pub fn key_ring(&self) -> KeyRing {
        let state = self.node(1).state();
        KeyRing::from_records(
            state.keys_version(),
            &state.keys(),
            &Kek::from_text(KEK).unwrap().into(),
        )
        .unwrap()
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Waits until every listed node knows a leader and holds a signing key
    /// and the policy.
    pub async fn wait_ready(&self, ids: &[u64]) {
        for i in ids {
            let node = self.node(*i);
            node.raft()
                .wait(Some(WAIT))
                .metrics(|m| m.current_leader.is_some(), "leader known")
                .await
                .unwrap();
            let state = node.state().clone();
            let mut rx = state.watch_revision();
            tokio::time::timeout(
                WAIT,
                rx.wait_for(|_| !state.keys().is_empty() && state.policy().is_some()),
            )
            .await
            .expect("keys and policy replicated")
            .unwrap();
            // Ready: a follower also needs its leader to have answered it
            // a read index (a round, within milliseconds of the leader
            // being known). Readiness changes without an event to wait on.
            let deadline = tokio::time::Instant::now() + WAIT;
            while !node.ready() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {i} never ready"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Waits until the listed nodes agree on a leader among them, and
    /// returns it.
    pub async fn agreed_leader(&self, ids: &[u64]) -> u64 {
        let first = ids[0];
        let set: BTreeSet<u64> = ids.iter().copied().collect();
        let m = self
            .node(first)
            .raft()
            .wait(Some(WAIT))
            .metrics(
                |m| m.current_leader.is_some_and(|l| set.contains(&l)),
                "leader among the set",
            )
            .await
            .unwrap();
        let leader = m.current_leader.unwrap();
        for i in &ids[1..] {
            self.node(*i)
                .raft()
                .wait(Some(WAIT))
                .current_leader(leader, "same leader")
                .await
                .unwrap();
        }
        leader
    }

    /// Waits until every listed node has applied everything the leader has
    /// in its log.
    pub async fn wait_converged(&self, ids: &[u64]) {
        let leader = self.agreed_leader(ids).await;
        // Let the leader commit what it has (a fresh read index). One round
        // can miss its quorum on a loaded machine (openraft waits one
        // heartbeat for the acknowledgements); retry within the bound.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.node(leader).raft().ensure_linearizable().await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "read index round failed; retrying");
                }
                Err(e) => panic!("leader {leader} could not confirm a read index: {e}"),
            }
        }
        let target = self
            .node(leader)
            .raft()
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0);
        for i in ids {
            self.node(*i)
                .raft()
                .wait(Some(WAIT))
                .applied_index_at_least(Some(target), "converged")
                .await
                .unwrap();
        }
    }

    pub fn revoked(&self, i: u64) -> BTreeSet<String> {
        self.node(i).state().revoked_jtis()
    }

    pub async fn stop(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for i in ids {
            self.stop_node(i).await;
        }
    }

    /// Stops every node (which flushes the audit writer) and hands node 1's
    /// audit log to `check`.
    pub async fn stop_audit_and_read(self, check: impl FnOnce(&str)) {
        let path = self.audit_path(1);
        let dir_guard = tempfile::tempdir().unwrap();
        let copy = dir_guard.path().join("audit");
        let TestCluster { dir, nodes, .. } = self;
        for (_, node) in nodes {
            node.shutdown().await.unwrap();
        }
        std::fs::copy(&path, &copy).unwrap();
        drop(dir);
        check(&std::fs::read_to_string(&copy).unwrap());
    }
}

/// Copies directory `from` to `to` (created), recursively.
/// A socket bound to `addr` and not listening: it keeps the port from
/// other sockets while connections to it are refused.
fn hold(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    Ok(s)
}

pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

pub const AT: &str = "urn:ietf:params:oauth:token-type:access_token";

pub fn issue_req(aud: &str, scopes: &[&str]) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        audience: vec![id(aud)],
        scope: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn exchange_req(subject: &str, aud: &str, scopes: &[&str]) -> pb::ExchangeTokenRequest {
    pb::ExchangeTokenRequest {
        grant_type: "urn:ietf:params:oauth:grant-type:token-exchange".into(),
        subject_token: subject.to_string(),
        subject_token_type: AT.into(),
        audience: vec![id(aud)],
        scope: scopes.iter().map(|s| s.to_string()).collect(),
        requested_token_type: AT.into(),
        ..Default::default()
    }
}

/// What is wrong with LOCAL answer `r`, given `at_least` ms after a
/// revocation was acknowledged at revision `rev`: it misses the revocation
/// yet claims to be fresher than that (`None`: nothing).
pub fn too_fresh(r: &pb::IntrospectResponse, rev: u64, at_least: u64) -> Option<String> {
    (r.revision < rev && r.max_staleness_ms < at_least).then(|| {
        format!(
            "LOCAL: active={} at revision {} (revocation acknowledged at {rev}, {at_least} ms before) with max_staleness_ms={}",
            r.active, r.revision, r.max_staleness_ms
        )
    })
}

pub fn introspect_req(token: &str) -> pb::IntrospectRequest {
    pb::IntrospectRequest {
        token: token.to_string(),
        min_revision: 0,
        consistency: 0,
    }
}

/// Revokes `target` through node `i` as the admin; returns the revision.
pub async fn revoke_on(c: &TestCluster, i: u64, target: pb::revoke_request::Target) -> u64 {
    c.tokens_on(i, "admin")
        .await
        .revoke(pb::RevokeRequest {
            target: Some(target),
        })
        .await
        .unwrap()
        .into_inner()
        .revision
}

pub fn revoke_jti(jti: &str) -> pb::RevokeRequest {
    pb::RevokeRequest {
        target: Some(pb::revoke_request::Target::Jti(jti.to_string())),
    }
}

/// The tour's chain: frontend -> orders -> payments -> ledger. Returns the
/// three tokens.
pub async fn chain_of_three(
    c: &TestCluster,
) -> (pb::TokenResponse, pb::TokenResponse, pb::TokenResponse) {
    let t1 = c
        .tokens("frontend")
        .await
        .issue_token(issue_req(
            "orders",
            &["orders:write", "payments:charge", "ledger:write"],
        ))
        .await
        .unwrap()
        .into_inner();
    let t2 = c
        .tokens("orders")
        .await
        .exchange_token(exchange_req(
            &t1.access_token,
            "payments",
            &["payments:charge", "ledger:write"],
        ))
        .await
        .unwrap()
        .into_inner();
    let t3 = c
        .tokens("payments")
        .await
        .exchange_token(exchange_req(&t2.access_token, "ledger", &["ledger:write"]))
        .await
        .unwrap()
        .into_inner();
    (t1, t2, t3)
}

/// Outcome of a burst of revocations.
#[derive(Debug, Default)]
pub struct Burst {
    /// Acknowledged: jti and revision.
    pub acked: Vec<(String, u64)>,
    /// Failed (outcome unknown): jti and status.
    pub failed: Vec<(String, tonic::Code)>,
}

impl Burst {
    pub fn acked_set(&self) -> BTreeSet<String> {
        self.acked.iter().map(|(j, _)| j.clone()).collect()
    }
}

/// Sends `n` revocations of fresh jtis (`{prefix}-{k}`) from `workers`
/// concurrent admin clients spread over `on` nodes.
pub async fn revoke_burst(
    c: &TestCluster,
    prefix: &str,
    n: usize,
    workers: usize,
    on: &[u64],
) -> Burst {
    let mut clients = Vec::new();
    for (k, i) in on.iter().cycle().take(workers).enumerate() {
        let _ = k;
        clients.push(c.tokens_on(*i, "admin").await);
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for mut client in clients {
        let next = next.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut out = Burst::default();
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if k >= n {
                    return out;
                }
                let jti = format!("{prefix}-{k}");
                // UNAVAILABLE (outcome unknown: a leader change, a timeout on
                // a loaded machine) is retried a few times, as a client
                // would: revocations are idempotent.
                let mut attempts = 0;
                loop {
                    match client.revoke(revoke_jti(&jti)).await {
                        Ok(r) => out.acked.push((jti, r.into_inner().revision)),
                        Err(s) if s.code() == tonic::Code::Unavailable && attempts < 20 => {
                            attempts += 1;
                            continue;
                        }
                        Err(s) => out.failed.push((jti, s.code())),
                    }
                    break;
                }
            }
        }));
    }
    let mut all = Burst::default();
    for t in tasks {
        let b = t.await.unwrap();
        all.acked.extend(b.acked);
        all.failed.extend(b.failed);
    }
    all
}
