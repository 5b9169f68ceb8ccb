//! The supervisor of the node processes: starting each `tessera serve`
//! child in its own process group with its log thread, following their
//! ready lines and exits, restarting stopped nodes on SIGHUP, and stopping
//! them all (SIGTERM, then SIGKILL) when `tessera dev` ends.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::layout::{http_listen, Layout};
use super::{Signals, Stop};

/// The line `tessera serve` prints on stderr once both listeners are bound.
const READY_PREFIX: &str = "tessera node ";
/// Lines of a node's log shown when it dies.
const LOG_TAIL_LINES: usize = 20;
/// How long nodes get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long to wait for the exit of a node that was sent SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Events from the per-node log threads; a node sends at most two per
/// start (ready, exited), so this never fills up in practice.
const EVENT_CAPACITY: usize = 64;
/// glibc's malloc with a fixed mmap threshold: by default every free of a
/// large block (a 4 MiB snapshot chunk, a big batch) raises the threshold
/// to that block's size, and later blocks up to it come from arenas that
/// keep their freed memory. Same setting as the unit file and the image.
const MALLOC_TUNABLES: &str = "glibc.malloc.mmap_threshold=131072";

/// The `TESSERA_*` variables the nodes inherit from `tessera dev`: the log
/// filter and the benchmark switches (docs/OPERATIONS.md), which only a
/// node reads. Same-binary A/B runs set them on the dev command; stripped,
/// both sides of such a run would measure the same code.
fn reaches_nodes(key: &str) -> bool {
    matches!(
        key,
        "TESSERA_LOG" | "TESSERA_GATHER_WRITES" | "TESSERA_WATCH_SHARED_ENCODING"
    )
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
pub(super) struct NodeProc {
    pub(super) id: u32,
    /// Incremented on each start so that events of a previous process are
    /// told apart from the current one's.
    generation: u32,
    /// Some while the process runs (from spawn until its exit is reported).
    pub(super) pid: Option<u32>,
    pub(super) api: Option<String>,
    pub(super) raft: Option<String>,
    pub(super) http: Option<String>,
}

/// Starts, watches and stops the node processes.
pub(super) struct Supervisor {
    pub(super) exe: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) layout: Layout,
    /// The nodes log in the format `tessera dev` was given.
    log_format: crate::cmd::LogFormat,
    http_base_port: u16,
    pub(super) nodes: Vec<NodeProc>,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
}

impl Supervisor {
    pub(super) fn new(
        exe: PathBuf,
        dir: PathBuf,
        layout: Layout,
        log_format: crate::cmd::LogFormat,
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

    pub(super) fn node_dir(&self, i: u32) -> PathBuf {
        self.dir.join(format!("node{i}"))
    }

    pub(super) fn log_path(&self, i: u32) -> PathBuf {
        self.dir.join(format!("node{i}.log"))
    }

    fn pid_path(&self, i: u32) -> PathBuf {
        self.dir.join(format!("node{i}.pid"))
    }

    fn node_mut(&mut self, i: u32) -> Option<&mut NodeProc> {
        self.nodes.get_mut(i as usize - 1)
    }

    pub(super) fn running(&self) -> impl Iterator<Item = &NodeProc> {
        self.nodes.iter().filter(|n| n.pid.is_some())
    }

    /// Starts node `i` and a thread that copies its stderr to its log file,
    /// reports the ready line, and reports the exit.
    pub(super) fn spawn(&mut self, i: u32) -> anyhow::Result<()> {
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
        // nodes, and would override what is chosen here. The exceptions
        // only mean something to a node: the log filter (how one asks the
        // nodes for more detail) and the benchmark switches.
        for (key, _) in std::env::vars_os() {
            if let Some(k) = key.to_str() {
                if k.starts_with("TESSERA_") && !reaches_nodes(k) {
                    cmd.env_remove(k);
                }
            }
        }
        // What the shipped unit file and container image set
        // (docs/OPERATIONS.md, "Memory"), unless the operator chose tunables.
        if std::env::var_os("GLIBC_TUNABLES").is_none() {
            cmd.env("GLIBC_TUNABLES", MALLOC_TUNABLES);
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

    /// Applies `ev`; a node exiting before start-up finished is fatal.
    fn apply_during_startup(&mut self, ev: Event) -> Result<(), Stop> {
        match self.apply(ev) {
            Some(Event::Exited { node, status, .. }) => {
                self.report_exit(node, &status);
                Err(Stop::Failed(anyhow::anyhow!(
                    "node {node} exited during start-up ({status})"
                )))
            }
            _ => Ok(()),
        }
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
    pub(super) async fn wait_ready(
        &mut self,
        sig: &mut Signals,
        deadline: Instant,
    ) -> Result<(), Stop> {
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
                    self.apply_during_startup(ev)?;
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
    pub(super) async fn pause(
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
                    self.apply_during_startup(ev)?;
                }
                _ = tokio::time::sleep_until(until) => return Ok(()),
                _ = sig.int.recv() => return Err(Stop::Interrupted),
                _ = sig.term.recv() => return Err(Stop::Interrupted),
            }
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
    pub(super) async fn supervise(&mut self, sig: &mut Signals) {
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
    pub(super) async fn stop_all(&mut self) -> Vec<u32> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator's own settings stay with the operator; what only a
    /// node reads reaches the nodes (the benchmark switches were stripped
    /// too, so A/B runs on `tessera dev` compared a binary with itself).
    #[test]
    fn only_node_side_settings_reach_the_nodes() {
        for k in [
            "TESSERA_LOG",
            "TESSERA_GATHER_WRITES",
            "TESSERA_WATCH_SHARED_ENCODING",
        ] {
            assert!(reaches_nodes(k), "{k}");
        }
        for k in [
            "TESSERA_ENDPOINT",
            "TESSERA_CONFIG",
            "TESSERA_KEK",
            "TESSERA_HTTP_ADVERTISE",
        ] {
            assert!(!reaches_nodes(k), "{k}");
        }
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
}
