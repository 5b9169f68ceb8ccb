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
//! the load generator itself (from `/proc`, when there is one). Given the
//! servers' process ids (`--pids`, `--etcd-pids`), it also shows the CPU
//! time the servers spent per successful request, all their processes
//! together: a figure that, unlike throughput, does not depend on how many
//! cores were free, so two systems can be compared by the work a durable
//! write costs them.

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

use super::proc_cpu::CpuSample;
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
    /// Process ids of the Tessera nodes (comma-separated): the table then
    /// shows their CPU time per successful request.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Process ids of the etcd members (comma-separated), as `--pids`.
    #[arg(long, value_delimiter = ',')]
    etcd_pids: Vec<u32>,
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
            let w = drive(4, WARMUP, 200, REQUEST_TIMEOUT, s.op.clone(), &[]).await;
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
                &s.pids,
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
    /// Its server processes, whose CPU time per request is reported.
    pids: Vec<u32>,
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
    pids: Vec<u32>,
    etcd_pids: Vec<u32>,
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
        if !a.pids.is_empty() && endpoints.is_empty() {
            return Err("--pids needs --endpoints".into());
        }
        if !a.etcd_pids.is_empty() && etcd.is_empty() {
            return Err("--etcd-pids needs --etcd".into());
        }
        if a.pids.iter().chain(&a.etcd_pids).any(|&p| p == 0) {
            return Err("--pids and --etcd-pids take process ids above 0".into());
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
            pids: a.pids,
            etcd_pids: a.etcd_pids,
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
        "Throughput and latency count successful requests; the CPU columns are the machine's busy share over the run, the share used by this load generator, and (given the servers' pids) the servers' CPU time per successful request, all their processes together.\n"
    );
}

const TABLE_HEAD: &str = "| clients | requests | errors | throughput (/s) | p50 (ms) | p99 (ms) | max (ms) | CPU busy (%) | load generator CPU (%) | server CPU per request (µs) |\n|---|---|---|---|---|---|---|---|---|---|";

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
        pids: plan.pids.clone(),
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
        pids: plan.etcd_pids.clone(),
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
    /// The servers' CPU time per successful request, microseconds.
    server_us: Option<f64>,
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
        let whole = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
        format!(
            "| {clients} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            self.requests,
            self.errors,
            self.throughput(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.percentile_ms(1.0),
            whole(self.cpu_busy),
            whole(self.cpu_self),
            whole(self.server_us),
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
    servers: &[u32],
) -> RunStats {
    let started = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let cpu_before = CpuSample::read(servers);
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
    let after = CpuSample::read(servers);
    let server_us = cpu_before
        .zip(after)
        .and_then(|(a, b)| b.servers_per_request(&a, elapsed, latencies_us.len() as u64));
    let cpu = cpu_before.zip(after).map(|(a, b)| b.since(&a));
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
        server_us,
    }
}

#[cfg(test)]
#[path = "bench_revoke_tests.rs"]
mod tests;
