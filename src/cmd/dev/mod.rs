//! `tessera dev`: a local development cluster of N nodes (three by default),
//! each a separate `tessera serve` process on 127.0.0.1.
//!
//! This module owns the layout of the development directory (certificates,
//! KEK, policy, per-node data, logs, pid files and the record of the ports
//! the cluster was created with), the children's lifecycle (start, watch,
//! restart on SIGHUP, stop on Ctrl-C or SIGTERM) and the first
//! initialisation of the cluster through node 1's `AdminService`.
//!
//! Children run in their own process group so that a Ctrl-C in the terminal
//! reaches only this supervisor, which then stops them in order; otherwise
//! every node would see the signal at once and the supervisor could not
//! tell a requested stop from a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::{Deserialize, Serialize};
use tessera::pb::{self, admin_service_client::AdminServiceClient};
use tessera::tls::TlsFiles;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::CliError;

#[path = "dev_learners.rs"]
mod learners;

/// The example policy, written to `DIR/policy.cedar` on first start.
const EXAMPLE_POLICY: &str = include_str!("../../deploy/policy/example.cedar");
/// The line `tessera serve` prints on stderr once both listeners are bound.
const READY_PREFIX: &str = "tessera node ";
/// Lines of a node's log shown when it dies.
const LOG_TAIL_LINES: usize = 20;
/// How long nodes get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long to wait for the exit of a node that was sent SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Interval between ClusterStatus polls while waiting for a leader: an
/// interactive command, so a short poll is simpler than a watch stream.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Longest single admin RPC.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Events from the per-node log threads; a node sends at most two per
/// start (ready, exited), so this never fills up in practice.
const EVENT_CAPACITY: usize = 64;
/// The record of the options the cluster in a directory was created with.
const LAYOUT_FILE: &str = "dev.json";
/// The supervisor's own pid (for `scripts/restart-node.sh`).
const SUPERVISOR_PID_FILE: &str = "dev.pid";

/// Options of `tessera dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for certificates, the KEK, the policy, node data, logs and
    /// pid files (created if missing).
    #[arg(long, env = "TESSERA_DEV_DIR", default_value = ".tessera-dev")]
    dir: PathBuf,
    /// Number of voting nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    nodes: u32,
    /// Extra nodes added as non-voting learners (read replicas) after the
    /// voters: nodes `--nodes + 1` onwards. They serve reads and streams
    /// and never count towards the write quorum. At most 9 nodes in all.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=8))]
    learners: u32,
    /// API port of node 1; node i listens on base + i - 1. 0: every node
    /// listens on a port the kernel picks, for both listeners (the
    /// addresses are printed; such a cluster cannot be restarted).
    #[arg(long, default_value_t = 7443)]
    base_port: u16,
    /// Raft port of node 1; node i listens on raft-base + i - 1. 0: ports
    /// picked by the kernel.
    #[arg(long, default_value_t = 7543)]
    raft_base_port: u16,
    /// HTTPS (JWKS, OAuth metadata) port of node 1; node i listens on
    /// http-base + i - 1. 0: ports picked by the kernel (also when
    /// --base-port is 0). Not recorded: it may change between restarts.
    #[arg(long, default_value_t = 7643)]
    http_base_port: u16,
    /// Longest wait, seconds, for the nodes to start and the cluster to
    /// have a leader.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// The options that fix a cluster's addresses, recorded in `DIR/dev.json`:
/// Raft membership stores addresses, so a restart must reuse them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Layout {
    /// Every node, voters and learners.
    nodes: u32,
    base_port: u16,
    raft_base_port: u16,
    /// How many of the last nodes are learners (absent in the records of
    /// clusters made before learners existed: none).
    #[serde(default)]
    learners: u32,
}

impl Layout {
    /// Refuses port ranges that overflow or overlap.
    fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 || self.learners >= self.nodes {
            return Err("--nodes must be at least 1".into());
        }
        if self.nodes > 9 {
            return Err(format!(
                "at most 9 nodes in all: {} voters and {} learners",
                self.voters(),
                self.learners
            ));
        }
        let range = |base: u16, what: &str| -> Result<Option<(u32, u32)>, String> {
            if base == 0 {
                return Ok(None);
            }
            let last = u32::from(base) + self.nodes - 1;
            if last > u32::from(u16::MAX) {
                return Err(format!(
                    "{what} {base} leaves no room for {} nodes (last port {last})",
                    self.nodes
                ));
            }
            Ok(Some((u32::from(base), last)))
        };
        let api = range(self.base_port, "--base-port")?;
        let raft = if self.base_port == 0 {
            None
        } else {
            range(self.raft_base_port, "--raft-base-port")?
        };
        if let (Some((a0, a1)), Some((r0, r1))) = (api, raft) {
            if a0 <= r1 && r0 <= a1 {
                return Err(format!(
                    "API ports {a0}-{a1} and Raft ports {r0}-{r1} overlap; \
                     choose --base-port and --raft-base-port further apart"
                ));
            }
        }
        Ok(())
    }

    /// How many nodes vote (nodes 1 to this).
    fn voters(&self) -> u32 {
        self.nodes - self.learners
    }

    /// Whether some listener uses a port picked by the kernel.
    fn kernel_ports(&self) -> bool {
        self.base_port == 0 || self.raft_base_port == 0
    }

    /// The API listen address of node `i` (1-based).
    fn api_listen(&self, i: u32) -> String {
        let port = match self.base_port {
            0 => 0,
            base => u32::from(base) + i - 1,
        };
        format!("127.0.0.1:{port}")
    }

    /// The Raft listen address of node `i` (1-based).
    fn raft_listen(&self, i: u32) -> String {
        let port = if self.base_port == 0 || self.raft_base_port == 0 {
            0
        } else {
            u32::from(self.raft_base_port) + i - 1
        };
        format!("127.0.0.1:{port}")
    }
}

/// Decides whether the cluster in a directory may be (re)started with
/// `want`. `recorded` is `DIR/dev.json` if present; `has_data` whether any
/// node data directory exists. Returns a message for the operator if not.
fn check_restart(want: &Layout, recorded: Option<&Layout>, has_data: bool) -> Result<(), String> {
    if !has_data {
        return Ok(());
    }
    match recorded {
        None => Err("holds node data not created by `tessera dev` (perhaps by \
                     `tessera serve --dev`); use another --dir or remove that data"
            .into()),
        Some(r) if r.kernel_ports() => {
            Err("holds a cluster started with ports picked by the kernel \
                    (--base-port 0); its Raft addresses cannot be reused, so it \
                    cannot be restarted: remove the directory or use another --dir"
                .into())
        }
        Some(r) if r != want => Err(format!(
            "holds a cluster created with --nodes {} --learners {} --base-port {} --raft-base-port {}; \
             Raft membership records those addresses, so restart it with the same \
             options (or use another --dir)",
            r.voters(),
            r.learners,
            r.base_port,
            r.raft_base_port
        )),
        Some(_) => Ok(()),
    }
}

/// Parses the ready line of `tessera serve`:
/// `tessera node {id} listening on {api_addr} raft {raft_addr}`, with
/// ` http {http_addr}` when the HTTPS listener is on.
fn parse_ready(line: &str) -> Option<(u64, String, String, Option<String>)> {
    let rest = line.trim_end().strip_prefix(READY_PREFIX)?;
    let (id, rest) = rest.split_once(" listening on ")?;
    let (api, rest) = rest.split_once(" raft ")?;
    let (raft, http) = match rest.split_once(" http ") {
        Some((raft, http)) => (raft, Some(http)),
        None => (rest, None),
    };
    let id = id.parse().ok()?;
    let bad = |s: &str| s.is_empty() || s.contains(' ');
    if bad(api) || bad(raft) || http.is_some_and(bad) {
        return None;
    }
    Some((
        id,
        api.to_string(),
        raft.to_string(),
        http.map(str::to_string),
    ))
}

/// The HTTPS listen address of node `i` (1-based).
fn http_listen(layout: &Layout, http_base_port: u16, i: u32) -> String {
    let port = if layout.base_port == 0 || http_base_port == 0 {
        0
    } else {
        (u32::from(http_base_port) + i - 1).min(u32::from(u16::MAX))
    };
    format!("127.0.0.1:{port}")
}

/// The last `n` lines of a file, reading at most its last 64 KiB (node logs
/// grow without bound during a long session).
fn tail(path: &Path, n: usize) -> Vec<String> {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        // The first line is probably cut in the middle.
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    lines[skip..].iter().map(|l| l.to_string()).collect()
}

/// Whether `pid` names a live process that looks like a `tessera` binary
/// (Linux `/proc`; elsewhere nothing is detected).
fn tessera_alive(pid: u32) -> bool {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => String::from_utf8_lossy(&cmdline).contains("tessera"),
        Err(_) => false,
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends `sig` (`TERM`, `KILL`) to `pid` with kill(1): no extra dependency
/// and no `unsafe`.
fn send_signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// What the per-node log threads report.
#[derive(Debug)]
enum Event {
    Ready {
        node: u32,
        generation: u32,
        api: String,
        raft: String,
        http: Option<String>,
    },
    Exited {
        node: u32,
        generation: u32,
        status: String,
    },
}

/// One node as the supervisor sees it.
#[derive(Debug)]
struct NodeProc {
    id: u32,
    /// Incremented on each start so that events of a previous process are
    /// told apart from the current one's.
    generation: u32,
    /// Some while the process runs (from spawn until its exit is reported).
    pid: Option<u32>,
    api: Option<String>,
    raft: Option<String>,
    http: Option<String>,
}

/// The signals the supervisor handles, registered before any child starts
/// so that an early Ctrl-C cannot kill the supervisor and orphan them.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn register() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

/// Why waiting stopped early.
enum Stop {
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// Something failed; the children must be stopped.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Self {
        Stop::Failed(e)
    }
}

/// Starts, watches and stops the node processes.
struct Supervisor {
    exe: PathBuf,
    dir: PathBuf,
    layout: Layout,
    /// The nodes log in the format `tessera dev` was given.
    log_format: super::LogFormat,
    http_base_port: u16,
    nodes: Vec<NodeProc>,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
}

impl Supervisor {
    fn new(
        exe: PathBuf,
        dir: PathBuf,
        layout: Layout,
        log_format: super::LogFormat,
        http_base_port: u16,
    ) -> Self {
        let (tx, rx) = mpsc::channel(EVENT_CAPACITY);
        let nodes = (1..=layout.nodes)
            .map(|id| NodeProc {
                id,
                generation: 0,
                pid: None,
                api: None,
                raft: None,
                http: None,
            })
            .collect();
        Self {
            exe,
            dir,
            layout,
            log_format,
            http_base_port,
            nodes,
            tx,
            rx,
        }
    }

    fn node_dir(&self, i: u32) -> PathBuf {
        self.dir.join(format!("node{i}"))
    }

    fn log_path(&self, i: u32) -> PathBuf {
        self.dir.join(format!("node{i}.log"))
    }

    fn pid_path(&self, i: u32) -> PathBuf {
        self.dir.join(format!("node{i}.pid"))
    }

    fn node_mut(&mut self, i: u32) -> Option<&mut NodeProc> {
        self.nodes.get_mut(i as usize - 1)
    }

    fn running(&self) -> impl Iterator<Item = &NodeProc> {
        self.nodes.iter().filter(|n| n.pid.is_some())
    }

    /// Starts node `i` and a thread that copies its stderr to its log file,
    /// reports the ready line, and reports the exit.
    fn spawn(&mut self, i: u32) -> anyhow::Result<()> {
        let certs = self.dir.join("certs");
        let log_path = self.log_path(i);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        writeln!(log, "=== tessera dev: starting node {i} ===")
            .with_context(|| format!("writing {}", log_path.display()))?;
        let stdout = log
            .try_clone()
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve")
            .arg("--node-id")
            .arg(i.to_string())
            .arg("--listen")
            .arg(self.layout.api_listen(i))
            .arg("--raft-listen")
            .arg(self.layout.raft_listen(i))
            .arg("--http-listen")
            .arg(http_listen(&self.layout, self.http_base_port, i))
            .arg("--data-dir")
            .arg(self.node_dir(i))
            .arg("--ca")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join(format!("node{i}.pem")))
            .arg("--key")
            .arg(certs.join(format!("node{i}.key")))
            .arg("--kek-file")
            .arg(self.dir.join("kek"))
            .arg("--policy")
            .arg(self.dir.join("policy.cedar"))
            .arg("--audit-log")
            .arg(self.dir.join(format!("audit-node{i}.jsonl")))
            // A development cluster is where the benchmarks run, all from
            // one identity: per-caller rate limits would measure themselves.
            .arg("--rate-limit")
            .arg("all=off")
            .arg("--log-format")
            .arg(self.log_format.as_str());
        // The operator's TESSERA_* settings (an endpoint, a config file, an
        // advertised address) are meant for their own commands, not for the
        // nodes, and would override what is chosen here. The log filter is
        // the exception: it is how one asks the nodes for more detail.
        for (key, _) in std::env::vars_os() {
            if let Some(k) = key.to_str() {
                if k.starts_with("TESSERA_") && k != "TESSERA_LOG" {
                    cmd.env_remove(k);
                }
            }
        }
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting node {i} ({})", self.exe.display()))?;
        let pid = child.id();
        let pid_path = self.pid_path(i);
        if let Err(e) = fs::write(&pid_path, format!("{pid}\n")) {
            eprintln!("warning: cannot write {}: {e}", pid_path.display());
        }
        let Some(stderr) = child.stderr.take() else {
            // Cannot happen with Stdio::piped(); do not leave it running.
            send_signal(pid, "KILL");
            let _ = child.wait();
            anyhow::bail!("node {i}: no stderr pipe");
        };
        let node = self
            .node_mut(i)
            .context("node number out of range (a bug)")?;
        node.generation += 1;
        node.pid = Some(pid);
        node.api = None;
        node.raft = None;
        node.http = None;
        let generation = node.generation;
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("node{i}-log"))
            .spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    // A full disk must not stop the node: keep draining.
                    let _ = log.write_all(&line);
                    if let Some((_, api, raft, http)) = parse_ready(&String::from_utf8_lossy(&line))
                    {
                        let _ = tx.blocking_send(Event::Ready {
                            node: i,
                            generation,
                            api,
                            raft,
                            http,
                        });
                    }
                }
                let status = match child.wait() {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("unknown status ({e})"),
                };
                let _ = writeln!(log, "=== tessera dev: node {i} exited: {status} ===");
                let _ = tx.blocking_send(Event::Exited {
                    node: i,
                    generation,
                    status,
                });
            });
        if let Err(e) = spawned {
            send_signal(pid, "KILL");
            if let Some(n) = self.node_mut(i) {
                n.pid = None;
            }
            return Err(e).context("starting a log thread");
        }
        Ok(())
    }

    /// Applies an event to the node table. Returns the event if it concerns
    /// the current process of its node (stale ones are dropped).
    fn apply(&mut self, ev: Event) -> Option<Event> {
        let (i, generation) = match &ev {
            Event::Ready {
                node, generation, ..
            }
            | Event::Exited {
                node, generation, ..
            } => (*node, *generation),
        };
        let pid_path = self.pid_path(i);
        let n = self.node_mut(i)?;
        if n.generation != generation {
            return None;
        }
        match &ev {
            Event::Ready {
                api, raft, http, ..
            } => {
                n.api = Some(api.clone());
                n.raft = Some(raft.clone());
                n.http = http.clone();
            }
            Event::Exited { .. } => {
                n.pid = None;
                let _ = fs::remove_file(pid_path);
            }
        }
        Some(ev)
    }

    /// Explains a node's unexpected exit on stderr, with the tail of its log.
    fn report_exit(&self, i: u32, status: &str) {
        let log = self.log_path(i);
        eprintln!(
            "node {i} exited unexpectedly ({status}); last lines of {}:",
            log.display()
        );
        for l in tail(&log, LOG_TAIL_LINES) {
            eprintln!("  | {l}");
        }
    }

    /// Waits until every running node has printed its ready line.
    async fn wait_ready(&mut self, sig: &mut Signals, deadline: Instant) -> Result<(), Stop> {
        loop {
            let pending: Vec<u32> = self
                .running()
                .filter(|n| n.api.is_none())
                .map(|n| n.id)
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            tokio::select! {
                ev = self.rx.recv() => {
                    let Some(ev) = ev else { continue };
                    if let Some(Event::Exited { node, status, .. }) = self.apply(ev) {
                        self.report_exit(node, &status);
                        return Err(Stop::Failed(anyhow::anyhow!(
                            "node {node} exited during start-up ({status})"
                        )));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    for &i in &pending {
                        eprintln!("node {i} is not ready; last lines of {}:", self.log_path(i).display());
                        for l in tail(&self.log_path(i), LOG_TAIL_LINES) {
                            eprintln!("  | {l}");
                        }
                    }
                    return Err(Stop::Failed(anyhow::anyhow!(
                        "node(s) {pending:?} did not start in time (see --timeout)"
                    )));
                }
                _ = sig.int.recv() => return Err(Stop::Interrupted),
                _ = sig.term.recv() => return Err(Stop::Interrupted),
            }
        }
    }

    /// Waits out `pause` while still watching children and signals: a node
    /// dying here is fatal (start-up is not finished).
    async fn pause(
        &mut self,
        sig: &mut Signals,
        pause: Duration,
        deadline: Instant,
    ) -> Result<(), Stop> {
        let until = (Instant::now() + pause).min(deadline);
        loop {
            tokio::select! {
                ev = self.rx.recv() => {
                    let Some(ev) = ev else { continue };
                    if let Some(Event::Exited { node, status, .. }) = self.apply(ev) {
                        self.report_exit(node, &status);
                        return Err(Stop::Failed(anyhow::anyhow!(
                            "node {node} exited during start-up ({status})"
                        )));
                    }
                }
                _ = tokio::time::sleep_until(until) => return Ok(()),
                _ = sig.int.recv() => return Err(Stop::Interrupted),
                _ = sig.term.recv() => return Err(Stop::Interrupted),
            }
        }
    }

    /// Initialises the cluster if node 1 knows no members yet, then waits
    /// for a leader (and, after a fresh initialisation, for every node to
    /// be a voter). Returns the last status and whether it initialised.
    async fn ensure_cluster(
        &mut self,
        sig: &mut Signals,
        deadline: Instant,
    ) -> Result<(pb::ClusterStatusResponse, bool), Stop> {
        let certs = self.dir.join("certs");
        let admin = TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join("admin.pem"),
            key: certs.join("admin.key"),
        };
        let api1 = self.nodes[0]
            .api
            .clone()
            .context("node 1 has no address (a bug)")?;
        let channel = tessera::client::connect(&api1, &admin)
            .await
            .with_context(|| format!("connecting to node 1 at {api1} as admin"))?;
        let mut client = AdminServiceClient::new(channel);
        let mut last_err = String::new();
        let mut initialised = false;
        let mut asked_init = false;
        loop {
            if Instant::now() >= deadline {
                return Err(Stop::Failed(anyhow::anyhow!(
                    "the cluster has no leader after --timeout ({})",
                    if last_err.is_empty() {
                        "no error reported".to_string()
                    } else {
                        last_err
                    }
                )));
            }
            match status(&mut client).await {
                Ok(s) if !asked_init && s.leader_id == 0 && s.nodes.is_empty() => {
                    asked_init = true;
                    let raft_addrs: Vec<String> = self
                        .nodes
                        .iter()
                        .take(self.layout.voters() as usize)
                        .filter_map(|n| n.raft.clone())
                        .collect();
                    eprintln!("initialising the cluster with {} members", raft_addrs.len());
                    let req = pb::InitClusterRequest { raft_addrs };
                    // InitCluster returns once a leader has written the
                    // first signing key and the policy, which can take a
                    // while on a busy machine: bounded by the overall
                    // deadline, not by RPC_TIMEOUT.
                    let reply = tokio::select! {
                        r = tokio::time::timeout_at(deadline, client.init_cluster(req)) => r,
                        _ = sig.int.recv() => return Err(Stop::Interrupted),
                        _ = sig.term.recv() => return Err(Stop::Interrupted),
                    };
                    match reply {
                        Ok(Ok(_)) => initialised = true,
                        Ok(Err(s)) => {
                            return Err(Stop::Failed(anyhow::anyhow!(
                                "initialising the cluster on node 1: {:?}: {}",
                                s.code(),
                                s.message()
                            )))
                        }
                        Err(_) => last_err = "InitCluster did not return in time".into(),
                    }
                    continue;
                }
                Ok(s) if cluster_done(&s, self.layout.voters(), initialised) => {
                    return Ok((s, initialised));
                }
                Ok(s) => {
                    last_err = format!(
                        "leader {}, {} member(s)",
                        if s.leader_id == 0 {
                            "unknown".to_string()
                        } else {
                            s.leader_id.to_string()
                        },
                        s.nodes.len()
                    );
                }
                Err(e) => last_err = e,
            }
            self.pause(sig, POLL_INTERVAL, deadline).await?;
        }
    }

    /// Restarts every node that is not running (SIGHUP).
    fn restart_stopped(&mut self) {
        if self.layout.kernel_ports() {
            eprintln!("restarting nodes is not possible with --base-port 0 (their addresses would change)");
            return;
        }
        let stopped: Vec<u32> = self
            .nodes
            .iter()
            .filter(|n| n.pid.is_none())
            .map(|n| n.id)
            .collect();
        if stopped.is_empty() {
            eprintln!("SIGHUP: every node is running; nothing to restart");
        }
        for i in stopped {
            match self.spawn(i) {
                Ok(()) => eprintln!("restarting node {i}"),
                Err(e) => eprintln!("cannot restart node {i}: {e:#}"),
            }
        }
    }

    /// Runs until Ctrl-C or SIGTERM, reporting exits and restarts.
    async fn supervise(&mut self, sig: &mut Signals) {
        loop {
            tokio::select! {
                _ = sig.int.recv() => return,
                _ = sig.term.recv() => return,
                _ = sig.hup.recv() => self.restart_stopped(),
                ev = self.rx.recv() => {
                    let Some(ev) = ev else { continue };
                    match self.apply(ev) {
                        Some(Event::Exited { node, status, .. }) => {
                            self.report_exit(node, &status);
                            if self.running().next().is_none() {
                                eprintln!("every node has stopped");
                            }
                            eprintln!(
                                "the other nodes keep running; `kill -HUP {}` (or scripts/restart-node.sh {node}) restarts it",
                                std::process::id()
                            );
                        }
                        Some(Event::Ready { node, api, raft, http, .. }) => {
                            let pid = self.nodes[node as usize - 1].pid.unwrap_or(0);
                            let http = http.map(|h| format!(" http {h}")).unwrap_or_default();
                            eprintln!("node {node} is back: pid {pid} api {api} raft {raft}{http}");
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// Sends SIGTERM to every running node and waits for them (bounded),
    /// then SIGKILL for those still running. Returns the nodes that did not
    /// stop even then.
    async fn stop_all(&mut self) -> Vec<u32> {
        for n in self.running() {
            if let Some(pid) = n.pid {
                send_signal(pid, "TERM");
            }
        }
        self.wait_exits(STOP_GRACE).await;
        let stubborn: Vec<(u32, u32)> = self
            .running()
            .filter_map(|n| n.pid.map(|p| (n.id, p)))
            .collect();
        for &(i, pid) in &stubborn {
            eprintln!("node {i} (pid {pid}) did not stop within {STOP_GRACE:?}; killing it");
            send_signal(pid, "KILL");
        }
        if !stubborn.is_empty() {
            self.wait_exits(KILL_GRACE).await;
        }
        self.running().map(|n| n.id).collect()
    }

    async fn wait_exits(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.running().next().is_some() {
            tokio::select! {
                ev = self.rx.recv() => {
                    if let Some(Event::Exited { node, status, .. }) = ev.and_then(|ev| self.apply(ev)) {
                        eprintln!("node {node} stopped ({status})");
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

impl Drop for Supervisor {
    /// The safety net for early returns and panics: no node outlives the
    /// supervisor by accident.
    fn drop(&mut self) {
        for n in &self.nodes {
            if let Some(pid) = n.pid {
                send_signal(pid, "KILL");
            }
        }
    }
}

/// Whether the cluster is ready: a leader is known, and after a fresh
/// initialisation every one of the `n` nodes is a voter.
fn cluster_done(s: &pb::ClusterStatusResponse, n: u32, initialised: bool) -> bool {
    if s.leader_id == 0 {
        return false;
    }
    if !initialised {
        return true;
    }
    (1..=u64::from(n)).all(|id| s.nodes.iter().any(|m| m.node_id == id && m.role == "voter"))
}

async fn status(
    client: &mut AdminServiceClient<Channel>,
) -> Result<pb::ClusterStatusResponse, String> {
    match tokio::time::timeout(
        RPC_TIMEOUT,
        client.cluster_status(pb::ClusterStatusRequest {}),
    )
    .await
    {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("ClusterStatus: {:?}: {}", s.code(), s.message())),
        Err(_) => Err("ClusterStatus timed out".into()),
    }
}

/// Creates what the nodes need in `dir`, refusing anything inconsistent.
fn prepare(dir: &Path, layout: &Layout) -> Result<(), CliError> {
    let usage = |m: String| CliError::Usage(m);
    fs::create_dir_all(dir).map_err(|e| usage(format!("creating {}: {e}", dir.display())))?;
    if let Some(pid) = read_pid(&dir.join(SUPERVISOR_PID_FILE)) {
        if pid != std::process::id() && tessera_alive(pid) {
            return Err(usage(format!(
                "a `tessera dev` (pid {pid}) is already running in {}",
                dir.display()
            )));
        }
    }
    let layout_path = dir.join(LAYOUT_FILE);
    let recorded: Option<Layout> = match fs::read_to_string(&layout_path) {
        Ok(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| usage(format!("{}: {e}", layout_path.display())))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(usage(format!("{}: {e}", layout_path.display()))),
    };
    let max_nodes = recorded.map_or(layout.nodes, |r| r.nodes.max(layout.nodes));
    // Nodes left behind by a supervisor that was killed (-9) still hold
    // their ports and databases; new ones would only fail obscurely.
    let orphans: Vec<String> = (1..=max_nodes)
        .filter_map(|i| {
            let pid = read_pid(&dir.join(format!("node{i}.pid")))?;
            tessera_alive(pid).then(|| format!("node {i} (pid {pid})"))
        })
        .collect();
    if !orphans.is_empty() {
        return Err(usage(format!(
            "{} of an earlier `tessera dev` in {} still running; stop them first \
             (kill <pid>)",
            orphans.join(", "),
            dir.display()
        )));
    }
    let has_data = (1..=max_nodes).any(|i| dir.join(format!("node{i}")).exists());
    check_restart(layout, recorded.as_ref(), has_data)
        .map_err(|m| usage(format!("{} {m}", dir.display())))?;

    let certs = dir.join("certs");
    if !certs.join("ca.pem").exists() {
        let opts = tessera::certs::DevPkiOptions {
            nodes: layout.nodes,
            ..Default::default()
        };
        tessera::certs::init_dev_pki(&certs, &opts)
            .map_err(|e| usage(format!("creating development certificates: {e}")))?;
        eprintln!("created development certificates in {}", certs.display());
    }
    let mut needed: Vec<String> = (1..=layout.nodes).map(|i| format!("node{i}")).collect();
    needed.push("admin".into());
    for name in needed {
        for ext in ["pem", "key"] {
            let p = certs.join(format!("{name}.{ext}"));
            if !p.exists() {
                return Err(usage(format!(
                    "{} is missing; recreate the certificates with \
                     `tessera certs init --dir {} --nodes {} --force`",
                    p.display(),
                    certs.display(),
                    layout.nodes
                )));
            }
        }
    }
    tessera::keys::Kek::load_or_generate(&dir.join("kek"))
        .map_err(|e| usage(format!("key-encryption key: {e}")))?;
    let policy = dir.join("policy.cedar");
    if !policy.exists() {
        fs::write(&policy, EXAMPLE_POLICY)
            .map_err(|e| usage(format!("writing {}: {e}", policy.display())))?;
    }
    let json = serde_json::to_string_pretty(layout)
        .map_err(|e| usage(format!("encoding {}: {e}", layout_path.display())))?;
    fs::write(&layout_path, json + "\n")
        .map_err(|e| usage(format!("writing {}: {e}", layout_path.display())))?;
    fs::write(
        dir.join(SUPERVISOR_PID_FILE),
        format!("{}\n", std::process::id()),
    )
    .map_err(|e| {
        usage(format!(
            "writing {}: {e}",
            dir.join(SUPERVISOR_PID_FILE).display()
        ))
    })?;
    Ok(())
}

/// Prints the endpoints and example commands, then `cluster ready`.
fn print_ready(sup: &Supervisor, s: &pb::ClusterStatusResponse, initialised: bool) {
    let dir = sup.dir.display();
    let mut out = String::new();
    let verb = if initialised {
        "initialised"
    } else {
        "restarted"
    };
    out.push_str(&format!(
        "tessera dev: {} node(s) in {dir}, cluster {verb}; supervisor pid {}\n",
        sup.nodes.len(),
        std::process::id()
    ));
    for n in &sup.nodes {
        out.push_str(&format!(
            "node {} pid {} api {} raft {} http {} data {} log {}\n",
            n.id,
            n.pid.unwrap_or(0),
            n.api.as_deref().unwrap_or("?"),
            n.raft.as_deref().unwrap_or("?"),
            n.http.as_deref().unwrap_or("?"),
            sup.node_dir(n.id).display(),
            sup.log_path(n.id).display(),
        ));
    }
    out.push_str(&format!(
        "leader: node {} ({}), term {}\n",
        s.leader_id, s.leader_api_addr, s.term
    ));
    let voters = sup.layout.voters();
    if sup.layout.learners > 0 {
        out.push_str(&format!(
            "learners (read replicas, not in the write quorum): nodes {}..={}\n",
            voters + 1,
            sup.layout.nodes
        ));
    }
    let non_voters: Vec<u32> = sup
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&id| id <= voters)
        .filter(|&id| {
            !s.nodes
                .iter()
                .any(|m| m.node_id == u64::from(id) && m.role == "voter")
        })
        .collect();
    if !non_voters.is_empty() {
        out.push_str(&format!(
            "note: node(s) {non_voters:?} are not voters of this cluster \
             (see `tessera cluster add` and `promote`)\n"
        ));
    }
    let api = |i: usize| {
        sup.nodes
            .get(i)
            .and_then(|n| n.api.clone())
            .unwrap_or_default()
    };
    let tour_node = if sup.nodes.len() >= 2 { 1 } else { 0 };
    let mut env = String::new();
    if sup.dir != Path::new(".tessera-dev") {
        env = format!(
            "  export TESSERA_DEV_DIR={dir} TESSERA_CA={dir}/certs/ca.pem \
             TESSERA_CERT={dir}/certs/frontend.pem TESSERA_ADMIN_CERT={dir}/certs/admin.pem\n"
        );
    }
    let leader = s.leader_id;
    let mut tries: Vec<(String, String)> = vec![
        (
            format!("tessera cluster status --endpoint {}", api(0)),
            "leader, term, indexes, each member's lag".into(),
        ),
        (
            format!("TESSERA_ENDPOINT={} scripts/tour.sh", api(tour_node)),
            format!(
                "the README tour against node {}: writes from any node",
                tour_node + 1
            ),
        ),
        (
            "scripts/cluster-status.sh".into(),
            "every node's view".into(),
        ),
        (
            format!("scripts/kill-node.sh {leader}"),
            "SIGKILL the leader; the others elect a new one and keep serving".into(),
        ),
    ];
    if !sup.layout.kernel_ports() {
        tries.push((
            format!("scripts/restart-node.sh {leader}"),
            format!("bring it back (kill -HUP {})", std::process::id()),
        ));
    }
    let width = tries.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    out.push_str(&format!(
        "\nTry, in another terminal at the repository root (`tessera` is {}):\n{env}",
        sup.exe.display()
    ));
    for (cmd, why) in &tries {
        out.push_str(&format!("  {cmd:<width$}  # {why}\n"));
    }
    out.push_str(&format!(
        "Logs: {dir}/node<i>.log, audit: {dir}/audit-node<i>.jsonl. Ctrl-C stops every node.\n"
    ));
    out.push_str("cluster ready\n");
    let mut stdout = std::io::stdout().lock();
    // stdout may be a closed pipe (a script that stopped reading); the
    // cluster keeps running regardless.
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

/// Runs `tessera dev`.
pub async fn run(args: DevArgs, log_format: super::LogFormat) -> Result<(), CliError> {
    let layout = Layout {
        nodes: args.nodes + args.learners,
        base_port: args.base_port,
        raft_base_port: args.raft_base_port,
        learners: args.learners,
    };
    layout.validate().map_err(CliError::Usage)?;
    if args.timeout == 0 {
        return Err(CliError::Usage(
            "--timeout must be at least 1 second".into(),
        ));
    }
    let exe = std::env::current_exe()
        .context("finding the tessera binary")
        .map_err(CliError::Failed)?;
    let mut sig = Signals::register().map_err(CliError::Failed)?;
    prepare(&args.dir, &layout)?;

    let mut sup = Supervisor::new(
        exe,
        args.dir.clone(),
        layout,
        log_format,
        args.http_base_port,
    );
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let started = async {
        for i in 1..=layout.nodes {
            sup.spawn(i)?;
        }
        sup.wait_ready(&mut sig, deadline).await?;
        let (s, initialised) = sup.ensure_cluster(&mut sig, deadline).await?;
        let s = sup.ensure_learners(s, &mut sig, deadline).await?;
        Ok::<_, Stop>((s, initialised))
    }
    .await;
    let result = match started {
        Ok((s, initialised)) => {
            print_ready(&sup, &s, initialised);
            sup.supervise(&mut sig).await;
            eprintln!("stopping {} node(s)", sup.running().count());
            Ok(())
        }
        Err(Stop::Interrupted) => {
            eprintln!("interrupted; stopping the nodes");
            Ok(())
        }
        Err(Stop::Failed(e)) => Err(e),
    };
    let left = sup.stop_all().await;
    let _ = fs::remove_file(args.dir.join(SUPERVISOR_PID_FILE));
    result.map_err(CliError::Failed)?;
    if !left.is_empty() {
        return Err(CliError::Failed(anyhow::anyhow!(
            "node(s) {left:?} did not stop even after SIGKILL"
        )));
    }
    eprintln!("every node stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(nodes: u32, base_port: u16, raft_base_port: u16) -> Layout {
        Layout {
            nodes,
            base_port,
            raft_base_port,
            learners: 0,
        }
    }

    #[test]
    fn addresses_follow_the_base_ports() {
        let l = layout(3, 7443, 7543);
        assert_eq!(l.validate(), Ok(()));
        assert_eq!(l.api_listen(1), "127.0.0.1:7443");
        assert_eq!(l.api_listen(3), "127.0.0.1:7445");
        assert_eq!(l.raft_listen(1), "127.0.0.1:7543");
        assert_eq!(l.raft_listen(3), "127.0.0.1:7545");
        assert!(!l.kernel_ports());
    }

    #[test]
    fn base_port_zero_means_kernel_ports_for_both_listeners() {
        let l = layout(3, 0, 7543);
        assert_eq!(l.validate(), Ok(()));
        assert_eq!(l.api_listen(2), "127.0.0.1:0");
        assert_eq!(l.raft_listen(2), "127.0.0.1:0");
        assert!(l.kernel_ports());
        let l = layout(3, 7443, 0);
        assert_eq!(l.api_listen(2), "127.0.0.1:7444");
        assert_eq!(l.raft_listen(2), "127.0.0.1:0");
        assert!(l.kernel_ports());
    }

    #[test]
    fn learners_come_after_the_voters_and_count_towards_nine_nodes() {
        let l = Layout {
            learners: 4,
            ..layout(7, 7443, 7543)
        };
        assert_eq!(l.validate(), Ok(()));
        assert_eq!(l.voters(), 3);
        assert_eq!(l.api_listen(7), "127.0.0.1:7449");
        let too_many = Layout {
            learners: 7,
            ..layout(10, 7443, 7543)
        };
        assert!(too_many.validate().unwrap_err().contains("at most 9"));
        let no_voter = Layout {
            learners: 2,
            ..layout(2, 7443, 7543)
        };
        assert!(no_voter.validate().is_err());
        // A restart names the options the cluster was created with.
        let e = check_restart(&layout(3, 7443, 7543), Some(&l), true).unwrap_err();
        assert!(e.contains("--nodes 3 --learners 4"), "{e}");
        // A record written before learners existed reads as none.
        let old: Layout =
            serde_json::from_str(r#"{"nodes":3,"base_port":7443,"raft_base_port":7543}"#).unwrap();
        assert_eq!(old, layout(3, 7443, 7543));
    }

    #[test]
    fn port_ranges_must_fit_and_not_overlap() {
        assert!(layout(3, 65534, 7543).validate().is_err());
        assert_eq!(layout(2, 65534, 7543).validate(), Ok(()));
        assert!(layout(3, 7443, 7445).validate().is_err());
        assert!(layout(3, 7445, 7443).validate().is_err());
        assert_eq!(layout(3, 7443, 7446).validate(), Ok(()));
        assert_eq!(layout(3, 7446, 7443).validate(), Ok(()));
        assert!(layout(0, 7443, 7543).validate().is_err());
        // With kernel ports for the API, the Raft base is irrelevant.
        assert_eq!(layout(3, 0, 65535).validate(), Ok(()));
    }

    #[test]
    fn restart_rules() {
        let want = layout(3, 7443, 7543);
        // Fresh directory: anything goes.
        assert_eq!(check_restart(&want, None, false), Ok(()));
        assert_eq!(check_restart(&want, Some(&layout(5, 1, 2)), false), Ok(()));
        // Same options: a restart.
        assert_eq!(check_restart(&want, Some(&want), true), Ok(()));
        // Data without a record (serve --dev), other options, kernel ports.
        assert!(check_restart(&want, None, true).is_err());
        let e = check_restart(&want, Some(&layout(3, 8443, 7543)), true).unwrap_err();
        assert!(e.contains("--base-port 8443"), "{e}");
        assert!(check_restart(&want, Some(&layout(4, 7443, 7543)), true).is_err());
        assert!(check_restart(&want, Some(&layout(3, 7443, 7544)), true).is_err());
        let zero = layout(3, 0, 0);
        let e = check_restart(&zero, Some(&zero), true).unwrap_err();
        assert!(e.contains("cannot be restarted"), "{e}");
    }

    #[test]
    fn ready_line_is_parsed_exactly() {
        assert_eq!(
            parse_ready("tessera node 2 listening on 127.0.0.1:7444 raft 127.0.0.1:7544\n"),
            Some((2, "127.0.0.1:7444".into(), "127.0.0.1:7544".into(), None))
        );
        assert_eq!(
            parse_ready("tessera node 10 listening on [::1]:1 raft [::1]:2"),
            Some((10, "[::1]:1".into(), "[::1]:2".into(), None))
        );
        assert_eq!(
            parse_ready("tessera node 3 listening on a:1 raft a:2 http a:3\n"),
            Some((3, "a:1".into(), "a:2".into(), Some("a:3".into())))
        );
        for bad in [
            "",
            "tessera node 1 listening on 127.0.0.1:7443",
            "tessera node x listening on a raft b",
            "tessera node 1 listening on  raft b",
            "tessera node 1 listening on a raft ",
            "2025-01-01T00:00:00Z INFO tessera node 1 listening on a raft b",
            "tessera node 1 listening on a b raft c",
            "tessera node 1 listening on a raft b http ",
            "tessera node 1 listening on a raft b http c d",
        ] {
            assert_eq!(parse_ready(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        assert!(tail(&p, 3).is_empty());
        let text: String = (1..=10).map(|i| format!("line {i}\n")).collect();
        fs::write(&p, text).unwrap();
        assert_eq!(tail(&p, 3), vec!["line 8", "line 9", "line 10"]);
        assert_eq!(tail(&p, 100).len(), 10);
        // Past the 64 KiB window the first (cut) line is dropped.
        let long: String = (0..20_000).map(|i| format!("l{i}\n")).collect();
        fs::write(&p, long).unwrap();
        let t = tail(&p, 2);
        assert_eq!(t, vec!["l19998", "l19999"]);
        assert!(tail(&p, 100_000).iter().all(|l| l.starts_with('l')));
    }

    fn member(id: u64, role: &str) -> pb::NodeStatus {
        pb::NodeStatus {
            node_id: id,
            role: role.into(),
            ..Default::default()
        }
    }

    #[test]
    fn cluster_is_done_with_a_leader_and_all_voters() {
        let mut s = pb::ClusterStatusResponse {
            leader_id: 0,
            nodes: vec![member(1, "voter"), member(2, "voter"), member(3, "voter")],
            ..Default::default()
        };
        assert!(!cluster_done(&s, 3, true));
        assert!(!cluster_done(&s, 3, false));
        s.leader_id = 2;
        assert!(cluster_done(&s, 3, true));
        s.nodes[2] = member(3, "learner");
        assert!(!cluster_done(&s, 3, true));
        // A restarted cluster needs only a leader; membership is the
        // operator's business then.
        assert!(cluster_done(&s, 3, false));
        s.nodes.pop();
        assert!(!cluster_done(&s, 3, true));
    }

    #[test]
    fn prepare_creates_the_directory_once_and_refuses_other_ports() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        let l = layout(3, 7443, 7543);
        assert!(prepare(&dir, &l).is_ok());
        for f in [
            "certs/ca.pem",
            "certs/node3.pem",
            "certs/admin.key",
            "kek",
            "policy.cedar",
            "dev.json",
            "dev.pid",
        ] {
            assert!(dir.join(f).exists(), "{f}");
        }
        assert_eq!(
            fs::read_to_string(dir.join("policy.cedar")).unwrap(),
            EXAMPLE_POLICY
        );
        let kek = fs::read(dir.join("kek")).unwrap();
        // Nodes have data now: same options restart, others are refused.
        fs::create_dir(dir.join("node1")).unwrap();
        assert!(prepare(&dir, &l).is_ok());
        assert_eq!(fs::read(dir.join("kek")).unwrap(), kek, "the KEK is kept");
        match prepare(&dir, &layout(3, 8443, 8543)) {
            Err(CliError::Usage(m)) => assert!(m.contains("--base-port 7443"), "{m}"),
            _ => panic!("expected a usage error"),
        }
        // More nodes than there are certificates.
        fs::remove_dir(dir.join("node1")).unwrap();
        match prepare(&dir, &layout(4, 7443, 7543)) {
            Err(CliError::Usage(m)) => assert!(m.contains("node4.pem"), "{m}"),
            _ => panic!("expected a usage error"),
        }
    }

    #[test]
    fn prepare_refuses_a_directory_with_a_live_supervisor() {
        let tmp = tempfile::tempdir().unwrap();
        // The test binary itself stands in for a running supervisor
        // (its command line names `tessera`).
        let me = std::process::id();
        assert!(tessera_alive(me));
        // Our own pid is allowed (a pid file left by this very process).
        fs::write(tmp.path().join(SUPERVISOR_PID_FILE), format!("{me}\n")).unwrap();
        assert!(prepare(tmp.path(), &layout(1, 7443, 7543)).is_ok());
        let mut child = stand_in();
        fs::write(
            tmp.path().join(SUPERVISOR_PID_FILE),
            format!("{}\n", child.id()),
        )
        .unwrap();
        let r = prepare(tmp.path(), &layout(1, 7443, 7543));
        drop(child.stdin.take());
        child.wait().unwrap();
        match r {
            Err(CliError::Usage(m)) => assert!(m.contains("already running"), "{m}"),
            _ => panic!("expected a usage error"),
        }
        // Once it is gone, a stale pid file is ignored.
        assert!(prepare(tmp.path(), &layout(1, 7443, 7543)).is_ok());

        // A node left running by a supervisor that was killed.
        let mut child = stand_in();
        fs::write(tmp.path().join("node1.pid"), format!("{}\n", child.id())).unwrap();
        let r = prepare(tmp.path(), &layout(1, 7443, 7543));
        drop(child.stdin.take());
        child.wait().unwrap();
        match r {
            Err(CliError::Usage(m)) => assert!(m.contains("node 1 (pid"), "{m}"),
            _ => panic!("expected a usage error"),
        }
        assert!(prepare(tmp.path(), &layout(1, 7443, 7543)).is_ok());
    }

    /// A live process whose command line names tessera, running until its
    /// stdin closes. Returns once it has said so: right after `spawn` the
    /// kernel may not have set up its command line yet.
    fn stand_in() -> std::process::Child {
        let mut child = Command::new("sh")
            .args(["-c", "echo up; read x", "tessera"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "up\n");
        child
    }

    /// The Kubernetes example carries a copy of the example policy in a
    /// ConfigMap; it must not drift from the real one.
    #[test]
    fn k8s_configmap_holds_the_example_policy() {
        let yaml = include_str!("../../deploy/k8s/tessera.yaml");
        let start = yaml.find("  policy.cedar: |\n").expect("the ConfigMap key");
        let mut copy = String::new();
        for line in yaml[start..].lines().skip(1) {
            if line.starts_with("---") {
                break;
            }
            copy.push_str(line.strip_prefix("    ").unwrap_or(line));
            copy.push('\n');
        }
        assert_eq!(copy.trim_end(), EXAMPLE_POLICY.trim_end());
    }
}
