//! `tessera bench-revoke`: revocation commit throughput and latency on a
//! Tessera cluster, and (feature `etcd-bench`) the same load as etcd puts of
//! the same size, so both can be compared in one run (docs/BENCHMARKS.md).
//!
//! For each client count, that many workers loop sending one request at a
//! time: `TokenService.Revoke` of a fresh random `jti` with the admin
//! certificate, spread round-robin over the endpoints (followers forward
//! writes to the leader), or an etcd `put` of `revoked/<jti>` with an 8-byte
//! `until`. Every loop stops by itself: at the time limit or the request
//! limit, whichever comes first, and no single request waits longer than
//! [`REQUEST_TIMEOUT`]. Throughput and latency count successful requests;
//! failed ones are counted as errors and the first error is printed.
//!
//! The load generator runs on the same machine as the servers, so the table
//! also shows how busy the machine's CPUs were and which share of that was
//! the load generator itself (from `/proc`, when there is one).

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Args;
use futures_util::future::BoxFuture;
use tessera::pb::{self, token_service_client::TokenServiceClient};
use tessera::tls::TlsFiles;
use tonic::transport::Channel;

use super::CliError;

/// Longest wait for one request: a stuck request fails instead of keeping a
/// worker (and so the whole run) from ending.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// More workers than this is a typo, not a benchmark.
const MAX_CLIENTS: usize = 10_000;

/// Length of the warm-up before the measured runs.
const WARMUP: Duration = Duration::from_secs(2);

/// How long a revoked test token could live: the `until` of each revocation.
#[cfg(any(feature = "etcd-bench", test))]
const TOKEN_LIFETIME_SECS: u64 = 300;

/// Options of `tessera bench-revoke`.
#[derive(Debug, Args)]
pub struct BenchRevokeArgs {
    /// Tessera API endpoints (host:port), comma-separated. Requests go
    /// round-robin over them; followers forward writes to the leader.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Certificate directory holding `ca.pem` and `admin.pem`/`admin.key`.
    #[arg(long, default_value = ".tessera-dev/certs")]
    certs: PathBuf,
    /// Concurrent clients, one run per value, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Upper bound on requests per run.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Send every request to the leader (found with
    /// `AdminService.ClusterStatus`) instead of round-robin.
    #[arg(long)]
    leader_only: bool,
    /// Also run every client count with every request sent to the leader,
    /// as a third system next to round-robin (and etcd): what the forward
    /// hop from followers costs, in the same run.
    #[arg(long, conflicts_with = "leader_only")]
    leader_too: bool,
    /// HTTP/2 connections per endpoint, shared by all workers. The same
    /// number of etcd clients is made, each balancing over every member.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// etcd client URLs (http://host:port), comma-separated: run the same
    /// load as etcd puts. Needs a build with `--features etcd-bench`.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Skip the short warm-up before each system's runs.
    #[arg(long)]
    no_warmup: bool,
}

/// Runs the benchmark and prints one Markdown table per system.
///
/// With both systems, each client count is run on one and then the other
/// before the next count, so that whatever else the machine is doing
/// disturbs both alike.
pub async fn run(args: BenchRevokeArgs) -> Result<(), CliError> {
    let plan = Plan::from_args(args).map_err(CliError::Usage)?;
    // Read before the load starts: what else the machine was doing.
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let mut systems = Vec::new();
    if !plan.endpoints.is_empty() {
        systems.push(tessera_system(&plan, plan.leader_only).await?);
        if plan.leader_too {
            systems.push(tessera_system(&plan, true).await?);
        }
    }
    if !plan.etcd.is_empty() {
        systems.push(etcd_system(&plan).await?);
    }
    if plan.warmup {
        for s in &systems {
            // Opens the connections and lets the first elections settle; a
            // system that fails every warm-up request is not worth measuring.
            let w = drive(4, WARMUP, 200, REQUEST_TIMEOUT, s.op.clone()).await;
            if w.ok() == 0 {
                return Err(CliError::Failed(anyhow::anyhow!(
                    "{}: every warm-up request failed: {}",
                    s.title,
                    w.first_error.as_deref().unwrap_or("no request was sent")
                )));
            }
        }
    }
    let mut rows = vec![Vec::new(); systems.len()];
    for &clients in &plan.clients {
        for (s, rows) in systems.iter().zip(&mut rows) {
            let r = drive(
                clients,
                plan.duration,
                plan.max_requests,
                REQUEST_TIMEOUT,
                s.op.clone(),
            )
            .await;
            eprintln!(
                "{}, {clients} clients: {} requests, {:.0}/s",
                s.name,
                r.requests,
                r.throughput()
            );
            if let Some(e) = &r.first_error {
                eprintln!("{}, {clients} clients: first error: {e}", s.name);
            }
            rows.push(r.row(clients));
        }
    }
    print_header(&plan, loadavg.as_deref(), systems.len() > 1);
    for (s, rows) in systems.iter().zip(rows) {
        println!("### {}\n\n{TABLE_HEAD}", s.title);
        for r in rows {
            println!("{r}");
        }
        println!();
    }
    Ok(())
}

/// One request against a system: `op(worker, seq)`.
type OpFn = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A system under test.
struct System {
    /// Short name for progress lines.
    name: &'static str,
    /// Heading of its table: what was measured and how it was reached.
    title: String,
    op: OpFn,
}

fn op_fn<F, Fut>(f: F) -> OpFn
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move |w, seq| Box::pin(f(w, seq)))
}

/// Validated options.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    endpoints: Vec<String>,
    etcd: Vec<String>,
    certs: PathBuf,
    clients: Vec<usize>,
    duration: Duration,
    max_requests: u64,
    leader_only: bool,
    leader_too: bool,
    connections: usize,
    warmup: bool,
}

impl Plan {
    fn from_args(a: BenchRevokeArgs) -> Result<Self, String> {
        let clean = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let endpoints = clean(a.endpoints);
        let etcd = clean(a.etcd);
        if endpoints.is_empty() && etcd.is_empty() {
            return Err("give --endpoints (Tessera), --etcd, or both".into());
        }
        if a.leader_only && endpoints.is_empty() {
            return Err("--leader-only needs --endpoints".into());
        }
        if a.leader_too && (endpoints.is_empty() || a.leader_only) {
            return Err("--leader-too needs --endpoints and no --leader-only".into());
        }
        if !etcd.is_empty() && !cfg!(feature = "etcd-bench") {
            return Err("--etcd needs a build with `--features etcd-bench`".into());
        }
        if a.clients.is_empty() || a.clients.iter().any(|&c| c == 0 || c > MAX_CLIENTS) {
            return Err(format!(
                "--clients takes counts between 1 and {MAX_CLIENTS}"
            ));
        }
        if a.seconds == 0 || a.max_requests == 0 || a.connections == 0 {
            return Err("--seconds, --max-requests and --connections must be positive".into());
        }
        Ok(Self {
            endpoints,
            etcd,
            certs: a.certs,
            clients: a.clients,
            duration: Duration::from_secs(a.seconds),
            max_requests: a.max_requests,
            leader_only: a.leader_only,
            leader_too: a.leader_too,
            connections: a.connections,
            warmup: !a.no_warmup,
        })
    }
}

fn print_header(plan: &Plan, loadavg: Option<&str>, interleaved: bool) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let jti = "x".repeat(22);
    println!(
        "## Revocation commits: {} s per run, at most {} requests per run\n",
        plan.duration.as_secs(),
        plan.max_requests
    );
    println!(
        "{cores} cores; load average before the run: {}.{}",
        loadavg.unwrap_or("unknown"),
        if interleaved {
            " Runs alternate between the systems at each client count."
        } else {
            ""
        }
    );
    println!(
        "Payload: Tessera `RevokeRequest` {} bytes (a 22-character jti); etcd `put` key {} bytes + value 8 bytes.",
        prost::Message::encoded_len(&revoke_request(&jti)),
        etcd_key(&jti).len()
    );
    println!(
        "Throughput and latency count successful requests; the CPU columns are the machine's busy share over the run and the share used by this load generator.\n"
    );
}

const TABLE_HEAD: &str = "| clients | requests | errors | throughput (/s) | p50 (ms) | p99 (ms) | max (ms) | CPU busy (%) | load generator CPU (%) |\n|---|---|---|---|---|---|---|---|---|";

async fn tessera_system(plan: &Plan, leader_only: bool) -> Result<System, CliError> {
    let files = TlsFiles {
        ca: plan.certs.join("ca.pem"),
        cert: plan.certs.join("admin.pem"),
        key: plan.certs.join("admin.key"),
    };
    let targets = if leader_only {
        vec![leader_endpoint(&plan.endpoints, &files).await?]
    } else {
        plan.endpoints.clone()
    };
    // Connection-major order, so that consecutive requests go to different
    // endpoints: request n uses clients[n % len].
    let mut clients = Vec::with_capacity(targets.len() * plan.connections);
    for _ in 0..plan.connections {
        for t in &targets {
            let ch = tessera::client::connect(t, &files)
                .await
                .map_err(|e| CliError::Failed(e.into()))?;
            clients.push(TokenServiceClient::new(ch));
        }
    }
    let clients: Arc<Vec<TokenServiceClient<Channel>>> = Arc::new(clients);
    let title = format!(
        "Tessera: {} node endpoint(s), {}, {} connection(s) per endpoint",
        targets.len(),
        if leader_only {
            "leader only"
        } else {
            "round-robin"
        },
        plan.connections
    );
    let op = op_fn(move |_worker, seq| {
        let mut c = clients[pick(seq, clients.len())].clone();
        async move {
            let jti = random_jti()?;
            c.revoke(revoke_request(&jti))
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        }
    });
    Ok(System {
        name: if leader_only {
            "tessera (leader)"
        } else {
            "tessera"
        },
        title,
        op,
    })
}

/// Asks the endpoints in turn for the leader's API address.
async fn leader_endpoint(endpoints: &[String], files: &TlsFiles) -> Result<String, CliError> {
    let mut last = String::from("no endpoint");
    for ep in endpoints {
        let ch = match tessera::client::connect(ep, files).await {
            Ok(ch) => ch,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let mut admin = pb::admin_service_client::AdminServiceClient::new(ch);
        match admin.cluster_status(pb::ClusterStatusRequest {}).await {
            Ok(r) if !r.get_ref().leader_api_addr.is_empty() => {
                return Ok(r.into_inner().leader_api_addr)
            }
            Ok(_) => last = format!("{ep} knows no leader"),
            Err(s) => last = format!("{ep}: {:?}: {}", s.code(), s.message()),
        }
    }
    Err(CliError::Failed(anyhow::anyhow!(
        "cannot find the leader: {last}"
    )))
}

#[cfg(feature = "etcd-bench")]
async fn etcd_system(plan: &Plan) -> Result<System, CliError> {
    let mut clients = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        let c = etcd_client::Client::connect(&plan.etcd, None)
            .await
            .map_err(|e| CliError::Failed(anyhow::anyhow!("connecting to etcd: {e}")))?;
        clients.push(c.kv_client());
    }
    let clients = Arc::new(clients);
    let title = format!(
        "etcd: {} member endpoint(s), {} shared client(s) balancing over all members",
        plan.etcd.len(),
        plan.connections
    );
    let op = op_fn(move |_worker, seq| {
        let mut c = clients[pick(seq, clients.len())].clone();
        async move {
            let jti = random_jti()?;
            c.put(etcd_key(&jti), etcd_value(unix_now()).to_vec(), None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    });
    Ok(System {
        name: "etcd",
        title,
        op,
    })
}

#[cfg(not(feature = "etcd-bench"))]
async fn etcd_system(_plan: &Plan) -> Result<System, CliError> {
    Err(CliError::Usage(
        "--etcd needs a build with `--features etcd-bench`".into(),
    ))
}

fn revoke_request(jti: &str) -> pb::RevokeRequest {
    pb::RevokeRequest {
        target: Some(pb::revoke_request::Target::Jti(jti.to_string())),
    }
}

/// The etcd key standing for a revoked `jti`.
fn etcd_key(jti: &str) -> String {
    format!("revoked/{jti}")
}

/// The etcd value: the revocation's `until` (8 bytes), which is all a
/// revoked `jti` carries besides its id.
#[cfg(any(feature = "etcd-bench", test))]
fn etcd_value(now: u64) -> [u8; 8] {
    (now + TOKEN_LIFETIME_SECS).to_be_bytes()
}

#[cfg(feature = "etcd-bench")]
fn unix_now() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh random token id: 16 random bytes, 22 base64url characters.
fn random_jti() -> Result<String, String> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| "random number generator failed".to_string())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// Round-robin choice of a client for request number `seq`.
fn pick(seq: u64, len: usize) -> usize {
    // len is a small count of connections, so both casts are lossless.
    (seq % len as u64) as usize
}

/// What one run measured.
#[derive(Debug, Default)]
struct RunStats {
    /// Requests sent (successful or not).
    requests: u64,
    /// Failed or timed-out requests.
    errors: u64,
    /// Wall time from the first request to the last response.
    elapsed: Duration,
    /// Latencies of the successful requests in microseconds, sorted.
    latencies_us: Vec<u32>,
    /// The first failure, to tell what went wrong.
    first_error: Option<String>,
    /// Machine-wide CPU busy share over the run, percent of all cores.
    cpu_busy: Option<f64>,
    /// This process's CPU share over the run, percent of all cores.
    cpu_self: Option<f64>,
}

impl RunStats {
    fn ok(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    fn throughput(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ok() as f64 / s
        } else {
            0.0
        }
    }

    /// Nearest-rank percentile in milliseconds (0 without samples).
    fn percentile_ms(&self, p: f64) -> f64 {
        let n = self.latencies_us.len();
        if n == 0 {
            return 0.0;
        }
        let rank = ((n as f64 * p).ceil() as usize).clamp(1, n);
        f64::from(self.latencies_us[rank - 1]) / 1000.0
    }

    fn row(&self, clients: usize) -> String {
        let pct = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
        format!(
            "| {clients} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
            self.requests,
            self.errors,
            self.throughput(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.percentile_ms(1.0),
            pct(self.cpu_busy),
            pct(self.cpu_self),
        )
    }
}

/// Runs `workers` loops of `op(worker, seq)` until `duration` has passed or
/// `max_requests` have been started, one request in flight per worker.
async fn drive(
    workers: usize,
    duration: Duration,
    max_requests: u64,
    request_timeout: Duration,
    op: OpFn,
) -> RunStats {
    let started = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let cpu_before = CpuSample::read();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let (op, started, errors, first_error) = (
            op.clone(),
            started.clone(),
            errors.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1024);
            while Instant::now() < deadline {
                let seq = started.fetch_add(1, Ordering::Relaxed);
                if seq >= max_requests {
                    break;
                }
                let t = Instant::now();
                let r = match tokio::time::timeout(request_timeout, op(w, seq)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {request_timeout:?}")),
                };
                match r {
                    // Saturates at ~71 minutes, far beyond any timeout here.
                    Ok(()) => lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut f) = first_error.lock() {
                            f.get_or_insert(e);
                        }
                    }
                }
            }
            lat
        }));
    }
    let mut latencies_us = Vec::new();
    for t in tasks {
        // A worker only ends by returning; a panic in `op` is a bug and is
        // reported as lost samples rather than taking the run down.
        if let Ok(l) = t.await {
            latencies_us.extend(l);
        }
    }
    let elapsed = start.elapsed();
    let cpu = cpu_before.zip(CpuSample::read()).map(|(a, b)| b.since(&a));
    latencies_us.sort_unstable();
    let errors = errors.load(Ordering::Relaxed);
    let first_error = first_error.lock().ok().and_then(|mut f| f.take());
    RunStats {
        requests: latencies_us.len() as u64 + errors,
        errors,
        elapsed,
        latencies_us,
        first_error,
        cpu_busy: cpu.and_then(|c| c.0),
        cpu_self: cpu.and_then(|c| c.1),
    }
}

/// CPU time counters from `/proc` in clock ticks: the machine's total and
/// idle time over all cores, and this process's user+system time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuSample {
    total: u64,
    idle: u64,
    own: u64,
}

impl CpuSample {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        Self::parse(&stat, &own)
    }

    fn parse(proc_stat: &str, self_stat: &str) -> Option<Self> {
        let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]:
        // guest time is already counted in user, so only the first 8 add up.
        if v.len() < 5 {
            return None;
        }
        let total = v.iter().take(8).sum();
        let idle = v[3] + v[4];
        // The command name (field 2) is in parentheses and may hold spaces:
        // count fields after the last ')'. utime and stime are fields 14, 15.
        let rest = &self_stat[self_stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some(Self {
            total,
            idle,
            own: utime + stime,
        })
    }

    /// (machine busy %, this process %) between `earlier` and `self`. Both
    /// counters are in the same ticks, so the shares need no tick rate.
    fn since(&self, earlier: &Self) -> (Option<f64>, Option<f64>) {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return (None, None);
        }
        let idle = self.idle.saturating_sub(earlier.idle);
        let own = self.own.saturating_sub(earlier.own);
        let share = |x: u64| Some(100.0 * x as f64 / total as f64);
        (share(total.saturating_sub(idle)), share(own))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BenchRevokeArgs {
        BenchRevokeArgs {
            endpoints: vec!["127.0.0.1:1".into(), " 127.0.0.1:2 ".into()],
            certs: PathBuf::from("certs"),
            clients: vec![1, 16],
            seconds: 3,
            max_requests: 100,
            leader_only: false,
            leader_too: false,
            connections: 1,
            etcd: vec![],
            no_warmup: false,
        }
    }

    #[test]
    fn plan_trims_endpoints_and_keeps_options() {
        let p = Plan::from_args(args()).unwrap();
        assert_eq!(p.endpoints, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(p.clients, vec![1, 16]);
        assert_eq!(p.duration, Duration::from_secs(3));
        assert_eq!(p.max_requests, 100);
        assert!(p.warmup);
        assert!(p.etcd.is_empty());
    }

    #[test]
    fn plan_needs_a_system() {
        let mut a = args();
        a.endpoints = vec![" ".into()];
        assert!(Plan::from_args(a).unwrap_err().contains("--endpoints"));
    }

    #[test]
    fn plan_rejects_bad_counts() {
        for f in [
            (|a: &mut BenchRevokeArgs| a.clients = vec![]) as fn(&mut BenchRevokeArgs),
            |a| a.clients = vec![1, 0],
            |a| a.clients = vec![MAX_CLIENTS + 1],
            |a| a.seconds = 0,
            |a| a.max_requests = 0,
            |a| a.connections = 0,
        ] {
            let mut a = args();
            f(&mut a);
            assert!(Plan::from_args(a).is_err());
        }
        let mut a = args();
        a.clients = vec![MAX_CLIENTS];
        assert!(Plan::from_args(a).is_ok());
    }

    #[test]
    fn leader_only_needs_tessera_endpoints() {
        let mut a = args();
        a.endpoints = vec![];
        a.etcd = vec!["http://127.0.0.1:1".into()];
        a.leader_only = true;
        assert!(Plan::from_args(a).unwrap_err().contains("--leader-only"));
    }

    #[test]
    fn leader_too_needs_endpoints_and_round_robin() {
        let mut a = args();
        a.leader_too = true;
        assert!(Plan::from_args(a).unwrap().leader_too);
        let mut a = args();
        a.leader_too = true;
        a.leader_only = true;
        assert!(Plan::from_args(a).unwrap_err().contains("--leader-too"));
    }

    #[test]
    fn etcd_needs_the_feature() {
        let mut a = args();
        a.etcd = vec!["http://127.0.0.1:1".into()];
        let r = Plan::from_args(a);
        if cfg!(feature = "etcd-bench") {
            assert_eq!(r.unwrap().etcd, vec!["http://127.0.0.1:1"]);
        } else {
            assert!(r.unwrap_err().contains("etcd-bench"));
        }
    }

    #[test]
    fn jti_is_22_url_safe_characters_and_fresh() {
        let a = random_jti().unwrap();
        let b = random_jti().unwrap();
        assert_eq!(a.len(), 22);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(a, b);
    }

    #[test]
    fn etcd_payload_mirrors_a_revoked_jti() {
        let jti = "A".repeat(22);
        assert_eq!(etcd_key(&jti), format!("revoked/{jti}"));
        assert_eq!(etcd_key(&jti).len(), 30);
        assert_eq!(
            etcd_value(1_000),
            (1_000 + TOKEN_LIFETIME_SECS).to_be_bytes()
        );
        // The request Tessera sends for the same revocation.
        assert_eq!(prost::Message::encoded_len(&revoke_request(&jti)), 24);
    }

    #[test]
    fn round_robin_cycles_over_every_client() {
        let picks: Vec<usize> = (0..7).map(|s| pick(s, 3)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(pick(u64::MAX, 1), 0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = RunStats {
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
            elapsed: Duration::from_secs(2),
            ..Default::default()
        };
        assert_eq!(s.percentile_ms(0.50), 50.0);
        assert_eq!(s.percentile_ms(0.99), 99.0);
        assert_eq!(s.percentile_ms(1.0), 100.0);
        assert_eq!(s.percentile_ms(0.0), 1.0);
        assert_eq!(s.throughput(), 50.0);
        let empty = RunStats::default();
        assert_eq!(empty.percentile_ms(0.99), 0.0);
        assert_eq!(empty.throughput(), 0.0);
    }

    #[test]
    fn row_matches_the_table_head() {
        let s = RunStats {
            requests: 3,
            errors: 1,
            latencies_us: vec![1500, 2500],
            elapsed: Duration::from_secs(1),
            cpu_busy: Some(97.4),
            ..Default::default()
        };
        let row = s.row(16);
        assert_eq!(row, "| 16 | 3 | 1 | 2 | 1.50 | 2.50 | 2.50 | 97 | - |");
        let head_cols = TABLE_HEAD.lines().next().unwrap().matches('|').count();
        assert_eq!(row.matches('|').count(), head_cols);
    }

    #[tokio::test]
    async fn drive_stops_at_the_request_limit() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let s = drive(
            8,
            Duration::from_secs(600),
            50,
            REQUEST_TIMEOUT,
            op_fn(move |_w, _seq| {
                c.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            }),
        )
        .await;
        assert_eq!(calls.load(Ordering::Relaxed), 50);
        assert_eq!(s.requests, 50);
        assert_eq!(s.ok(), 50);
        assert_eq!(s.errors, 0);
        assert!(s.first_error.is_none());
        assert!(s.latencies_us.windows(2).all(|w| w[0] <= w[1]));
    }

    #[tokio::test]
    async fn drive_stops_at_the_deadline() {
        // An already-passed deadline: no request starts.
        let s = drive(
            4,
            Duration::ZERO,
            u64::MAX,
            REQUEST_TIMEOUT,
            op_fn(|_w, _seq| async { Ok(()) }),
        )
        .await;
        assert_eq!(s.requests, 0);
    }

    #[tokio::test]
    async fn drive_counts_errors_and_keeps_the_first() {
        let s = drive(
            1,
            Duration::from_secs(600),
            10,
            REQUEST_TIMEOUT,
            op_fn(|_w, seq| async move {
                if seq % 2 == 1 {
                    Err(format!("failure {seq}"))
                } else {
                    Ok(())
                }
            }),
        )
        .await;
        assert_eq!(s.requests, 10);
        assert_eq!(s.errors, 5);
        assert_eq!(s.ok(), 5);
        assert_eq!(s.first_error.as_deref(), Some("failure 1"));
    }

    #[tokio::test]
    async fn drive_uses_every_worker_and_sequence_number_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        drive(
            4,
            Duration::from_secs(600),
            40,
            REQUEST_TIMEOUT,
            op_fn(move |w, seq| {
                s2.lock().unwrap().push((w, seq));
                async move {
                    // Yield so the other workers get turns.
                    tokio::task::yield_now().await;
                    Ok(())
                }
            }),
        )
        .await;
        let mut v = seen.lock().unwrap().clone();
        let mut seqs: Vec<u64> = v.iter().map(|p| p.1).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..40).collect::<Vec<_>>());
        v.sort_unstable();
        v.dedup_by_key(|p| p.0);
        assert_eq!(v.len(), 4);
    }

    #[tokio::test]
    async fn a_stuck_request_times_out_and_the_run_ends() {
        let s = drive(
            2,
            Duration::from_secs(600),
            2,
            Duration::from_millis(5),
            op_fn(|_w, _seq| std::future::pending::<Result<(), String>>()),
        )
        .await;
        assert_eq!(s.requests, 2);
        assert_eq!(s.errors, 2);
        assert!(s.first_error.unwrap().contains("no answer"));
    }

    const PROC_STAT: &str = "cpu  100 5 50 800 20 1 2 3 7 0\ncpu0 50 2 25 400 10 0 1 1 0 0\n";
    const SELF_STAT: &str =
        "4242 (tessera bench) S 1 4242 4242 0 -1 4194560 100 0 0 0 30 12 0 0 20 0 9 0 1 2 3";

    #[test]
    fn cpu_sample_parses_proc() {
        let s = CpuSample::parse(PROC_STAT, SELF_STAT).unwrap();
        assert_eq!(
            s,
            CpuSample {
                total: 100 + 5 + 50 + 800 + 20 + 1 + 2 + 3,
                idle: 820,
                own: 42,
            }
        );
        assert!(CpuSample::parse("intr 1 2", SELF_STAT).is_none());
        assert!(CpuSample::parse(PROC_STAT, "4242 (x) S 1").is_none());
        assert!(CpuSample::parse("cpu  a b c d e", SELF_STAT).is_none());
    }

    #[test]
    fn cpu_shares_are_relative_to_all_cores() {
        let a = CpuSample {
            total: 1000,
            idle: 800,
            own: 10,
        };
        let b = CpuSample {
            total: 1200,
            idle: 850,
            own: 60,
        };
        assert_eq!(b.since(&a), (Some(75.0), Some(25.0)));
        assert_eq!(a.since(&a), (None, None));
    }
}
