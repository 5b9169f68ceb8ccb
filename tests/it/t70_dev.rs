//! `tessera dev` end to end: the real binary starts three node processes on
//! kernel-chosen ports, initialises the cluster, serves writes on any node
//! and reads-your-writes on another, and on SIGINT stops every node and
//! exits 0.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera::pb;
use tessera::pb::token_service_client::TokenServiceClient;
use tessera::tls::TlsFiles;

use crate::cluster::*;

/// Generous: the whole suite runs in parallel on two cores.
const START_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// One node as `tessera dev` prints it.
#[derive(Debug)]
struct DevNode {
    id: u32,
    pid: u32,
    api: String,
}

/// A running `tessera dev`. Dropping it (a failed test) asks it to stop
/// and, as a last resort, kills the nodes it printed.
struct Dev {
    pid: u32,
    stdout: mpsc::Receiver<String>,
    exit: mpsc::Receiver<ExitStatus>,
    stderr: Arc<Mutex<String>>,
    node_pids: Vec<u32>,
    exited: bool,
}

fn kill(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl Dev {
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// [`Dev::start`] with more options for `tessera dev`.
    fn start_with(dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("dev")
            .arg("--dir")
            .arg(dir)
            .args(["--base-port", "0", "--raft-base-port", "0", "--timeout"])
            .arg(START_TIMEOUT.as_secs().to_string())
            .args(extra)
            .env("TESSERA_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let (line_tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (exit_tx, exit) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(s) = child.wait() {
                let _ = exit_tx.send(s);
            }
        });
        Self {
            pid,
            stdout,
            exit,
            stderr,
            node_pids: Vec::new(),
            exited: false,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Reads stdout until `cluster ready` (bounded) and returns the nodes.
    fn wait_ready(&mut self) -> Vec<DevNode> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut nodes = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.stdout.recv_timeout(left) {
                Ok(l) => l,
                Err(e) => panic!(
                    "no `cluster ready` from tessera dev ({e}); stderr:\n{}",
                    self.stderr()
                ),
            };
            if line == "cluster ready" {
                return nodes;
            }
            // node {id} pid {pid} api {api} raft {raft} data {dir} log {file}
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() >= 8 && w[0] == "node" && w[2] == "pid" && w[4] == "api" && w[6] == "raft" {
                let n = DevNode {
                    id: w[1].parse().unwrap(),
                    pid: w[3].parse().unwrap(),
                    api: w[5].to_string(),
                };
                self.node_pids.push(n.pid);
                nodes.push(n);
            }
        }
    }

    /// Sends SIGINT and waits (bounded) for the exit status.
    fn interrupt(&mut self) -> ExitStatus {
        kill("INT", self.pid);
        match self.exit.recv_timeout(STOP_TIMEOUT) {
            Ok(s) => {
                self.exited = true;
                s
            }
            Err(e) => panic!(
                "tessera dev did not exit after SIGINT ({e}); stderr:\n{}",
                self.stderr()
            ),
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if !self.exited {
            kill("TERM", self.pid);
            if self.exit.recv_timeout(STOP_TIMEOUT).is_err() {
                kill("KILL", self.pid);
            }
        }
        for &pid in &self.node_pids {
            if alive(pid) {
                kill("KILL", pid);
            }
        }
    }
}

fn files(dir: &Path, name: &str) -> TlsFiles {
    let certs: PathBuf = dir.join("certs");
    TlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("{name}.pem")),
        key: certs.join(format!("{name}.key")),
    }
}

async fn tokens(
    dir: &Path,
    node: &DevNode,
    who: &str,
) -> TokenServiceClient<tonic::transport::Channel> {
    TokenServiceClient::new(
        tessera::client::connect(&node.api, &files(dir, who))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_serves_on_every_node_and_stops_on_sigint() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut dev = Dev::start(&dir);
    let nodes = dev.wait_ready();
    assert_eq!(
        nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "stderr:\n{}",
        dev.stderr()
    );
    for n in &nodes {
        assert!(alive(n.pid), "node {} (pid {}) is running", n.id, n.pid);
        let pid_file = std::fs::read_to_string(dir.join(format!("node{}.pid", n.id))).unwrap();
        assert_eq!(
            pid_file.trim(),
            n.pid.to_string(),
            "pid file of node {}",
            n.id
        );
    }

    // Writes on node 2 (a follower or the leader: either must work).
    let mut frontend = tokens(&dir, &nodes[1], "frontend").await;
    let revoked = frontend
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap()
        .into_inner();
    let kept = frontend
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap()
        .into_inner();
    let mut admin = tokens(&dir, &nodes[1], "admin").await;
    let r = admin
        .revoke(revoke_jti(&revoked.jti))
        .await
        .unwrap()
        .into_inner();
    assert!(r.revision > 0);

    // Read-your-writes on node 3.
    let mut ledger = tokens(&dir, &nodes[2], "orders").await;
    for (t, active) in [(&revoked, false), (&kept, true)] {
        let i = ledger
            .introspect(pb::IntrospectRequest {
                token: t.access_token.clone(),
                min_revision: r.revision,
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(i.active, active, "jti {}", t.jti);
        assert!(i.revision >= r.revision);
    }
    drop((frontend, admin, ledger));

    let status = dev.interrupt();
    assert!(status.success(), "exit {status}; stderr:\n{}", dev.stderr());
    for n in &nodes {
        assert!(
            !alive(n.pid),
            "node {} (pid {}) outlived tessera dev",
            n.id,
            n.pid
        );
        assert!(!dir.join(format!("node{}.pid", n.id)).exists());
    }
    assert!(!dir.join("dev.pid").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_learners_join_without_promotion_and_serve_linearizable_reads() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut dev = Dev::start_with(&dir, &["--nodes", "3", "--learners", "1"]);
    let nodes = dev.wait_ready();
    assert_eq!(
        nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "stderr:\n{}",
        dev.stderr()
    );
    let learner = &nodes[3];
    let mut admin = tessera::pb::admin_service_client::AdminServiceClient::new(
        tessera::client::connect(&learner.api, &files(&dir, "admin"))
            .await
            .unwrap(),
    );
    let s = admin
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let roles: Vec<(u64, String)> = s
        .nodes
        .iter()
        .map(|n| (n.node_id, n.role.clone()))
        .collect();
    assert_eq!(
        roles,
        vec![
            (1, "voter".to_string()),
            (2, "voter".to_string()),
            (3, "voter".to_string()),
            (4, "learner".to_string())
        ]
    );
    assert_eq!(s.state, "learner");

    // Revoked through node 1, inactive on the learner right after the ack.
    let mut frontend = tokens(&dir, &nodes[0], "frontend").await;
    let t = frontend
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap()
        .into_inner();
    let r = tokens(&dir, &nodes[0], "admin")
        .await
        .revoke(revoke_jti(&t.jti))
        .await
        .unwrap()
        .into_inner();
    let i = tokens(&dir, learner, "orders")
        .await
        .introspect(introspect_req(&t.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(!i.active && i.linearizable && i.revision >= r.revision);
    drop((frontend, admin));

    let status = dev.interrupt();
    assert!(status.success(), "exit {status}; stderr:\n{}", dev.stderr());
    for n in &nodes {
        assert!(!alive(n.pid), "node {} outlived tessera dev", n.id);
    }
}

/// The example configurations under deploy/config parse (an unknown key
/// would be refused as "config file …"); they stop at the TLS files, which
/// do not exist on this machine.
#[test]
fn example_node_configs_parse() {
    for i in 1..=3 {
        let path = format!("{}/deploy/config/node{i}.toml", env!("CARGO_MANIFEST_DIR"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
        cmd.args(["serve", "--config", &path]);
        // Only the file speaks: the environment would override it.
        for (k, _) in std::env::vars() {
            if k.starts_with("TESSERA_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{path}: {err}");
        assert!(
            err.contains("/etc/tessera/tls/ca.pem does not exist"),
            "{path}: {err}"
        );
    }
}
