//! `TestCluster`: nodes in this process, each with a temporary data
//! directory, a listener on port 0 and development certificates; a manual
//! clock shared by all nodes; helpers to connect as any example service.

use std::path::PathBuf;
use std::sync::Arc;

use tempfile::TempDir;
use tessera::certs::{self, DevPki, DevPkiOptions};
use tessera::clock::{Clock, ManualClock};
use tessera::keys::{Kek, KeyRing};
use tessera::node::{self, Config, KekSource, Listeners, Node};
use tessera::pb::token_service_client::TokenServiceClient;
use tessera::pb::{self, key_service_client::KeyServiceClient};
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
    pub nodes: Vec<Option<Node>>,
    configs: Vec<Config>,
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
    pub async fn start_with(n: u64, adjust: impl Fn(&mut Config)) -> Self {
        init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let opts = DevPkiOptions {
            nodes: n as u32,
            ..Default::default()
        };
        let pki = certs::init_dev_pki(&dir.path().join("certs"), &opts).unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let mut c = Self {
            dir,
            pki,
            clock,
            nodes: Vec::new(),
            configs: Vec::new(),
        };
        for i in 1..=n {
            let files = c.pki.tls_files(&format!("node{i}")).unwrap();
            let mut config = Config::new(
                i,
                c.dir.path().join(format!("node{i}")),
                String::new(),
                files,
                KekSource::Text(KEK.into()),
            );
            config.initial_policy = Some(POLICY.to_string());
            config.audit = tessera::api::AuditSink::File(c.audit_path(i));
            config.clock = c.clock.clone();
            adjust(&mut config);
            c.configs.push(config);
            c.nodes.push(None);
            c.boot(i).await;
        }
        c
    }

    pub fn audit_path(&self, i: u64) -> PathBuf {
        self.dir.path().join(format!("audit-node{i}.jsonl"))
    }

    async fn boot(&mut self, i: u64) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = self.configs[(i - 1) as usize].clone();
        config.advertise_addr = listener.local_addr().unwrap().to_string();
        config.bootstrap = true;
        let raft = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = node::start(config, Listeners { api: listener, raft })
            .await
            .unwrap();
        self.nodes[(i - 1) as usize] = Some(node);
    }

    pub fn node(&self, i: u64) -> &Node {
        self.nodes[(i - 1) as usize].as_ref().unwrap()
    }

    /// Stops node `i` cleanly and starts it again on the same data.
    pub async fn restart(&mut self, i: u64) {
        let node = self.nodes[(i - 1) as usize].take().unwrap();
        node.shutdown().await.unwrap();
        self.boot(i).await;
    }

    pub fn files(&self, name: &str) -> TlsFiles {
        self.pki.tls_files(name).unwrap()
    }

    pub async fn channel_as(&self, i: u64, files: &TlsFiles) -> Channel {
        let addr = self.node(i).api_addr().to_string();
        tessera::client::connect(&addr, files).await.unwrap()
    }

    /// A TokenService client on node 1 presenting `name`'s certificate.
    pub async fn tokens(&self, name: &str) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel_as(1, &self.files(name)).await)
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
            &Kek::from_text(KEK).unwrap(),
        )
        .unwrap()
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    pub async fn stop(mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(node) = n.take() {
                node.shutdown().await.unwrap();
            }
        }
    }
}

pub const AT: &str = "urn:ietf:params:oauth:token-type:access_token";

pub fn issue_req(aud: &str, scopes: &[&str]) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        audience: vec![id(aud)],
        scope: scopes.iter().map(|s| s.to_string()).collect(),
        lifetime_seconds: 0,
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

pub fn introspect_req(token: &str) -> pb::IntrospectRequest {
    pb::IntrospectRequest {
        token: token.to_string(),
        min_revision: 0,
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
