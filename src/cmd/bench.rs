//! `tessera bench`: a bounded load generator for IssueToken, ExchangeToken
//! and Introspect over mutual TLS, plus the single-core cost of the JWT
//! sign and verify the server uses. Every loop stops by itself: at the time
//! limit or the request limit, whichever comes first.
//!
//! With `--baseline`, a do-nothing gRPC service ([`baseline`]) runs in this
//! process behind the same TLS accept path, and the run alternates
//! baseline, operation, baseline, operation, …, baseline, so that drift
//! during the run hits both. Each operation is reported as a ratio of the
//! mean of the two baseline runs adjacent to it, which makes the result
//! comparable across machines and days.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tessera::pb::{self, token_service_client::TokenServiceClient};
use tessera::tls::TlsFiles;
use tonic::transport::Channel;

use super::CliError;

#[path = "bench_baseline.rs"]
mod baseline;

/// Largest `--unique-tokens` pool: every token is kept in memory (under
/// 1 KiB each) and issued before timing starts.
const MAX_UNIQUE_TOKENS: usize = 250_000;
/// Bound on issuing the `--unique-tokens` pool.
const ISSUE_POOL_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchOp {
    Issue,
    Exchange,
    /// Linearizable introspection (the default).
    Introspect,
    /// Introspection with `consistency = LOCAL`.
    IntrospectLocal,
}

impl BenchOp {
    /// The name on the command line and in `ratio` lines.
    fn name(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Exchange => "exchange",
            Self::Introspect => "introspect",
            Self::IntrospectLocal => "introspect-local",
        }
    }

    fn is_introspect(self) -> bool {
        matches!(self, Self::Introspect | Self::IntrospectLocal)
    }
}

/// Options of `tessera bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Target node (host:port). Without it, the benchmark starts a one-node
    /// cluster in this process on 127.0.0.1 with fresh development state.
    /// Several (repeated, or comma-separated) spread the load: each gets
    /// `--connections` connections per identity and the requests in flight
    /// go round-robin over all of them (read replicas, `docs/SCALING.md`).
    /// The first endpoint issues the introspected token.
    #[arg(long, alias = "endpoints", value_delimiter = ',')]
    endpoint: Vec<String>,
    /// Development certificate directory (with an --endpoint).
    #[arg(long, default_value = ".tessera-dev/certs")]
    certs: PathBuf,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections per calling identity.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Seconds per operation.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Upper bound on requests per operation.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Operations to run (default: all three).
    #[arg(long, value_enum, value_delimiter = ',')]
    ops: Vec<BenchOp>,
    /// Size of the local node's verified-token cache (0 disables it, so
    /// every request pays the signature check).
    #[arg(long, default_value_t = 16 * 1024)]
    verified_cache: usize,
    /// Iterations of the sign/verify micro-benchmark.
    #[arg(long, default_value_t = 20_000)]
    crypto_iterations: u32,
    /// Also measure a do-nothing gRPC service over the same mTLS, before
    /// and after each operation, and print each operation's throughput and
    /// p99 as ratios of it (`ratio <operation> <x.xx>`). The baseline is
    /// served in this process with the `node1` certificate of the
    /// certificate directory.
    #[arg(long)]
    baseline: bool,
    /// Introspect with a pool of this many distinct valid tokens (issued
    /// before timing starts) instead of one repeated token. Make it larger
    /// than the node's verified-token cache (16,384 by default) to measure
    /// the uncached path.
    #[arg(long)]
    unique_tokens: Option<usize>,
}

/// Writes one line of the report; a closed stdout ends the run.
macro_rules! out {
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).context("writing the report")?
    };
}

/// Runs the benchmark and prints Markdown tables (and, with `--baseline`,
/// one `ratio` and one `p99-ratio` line per operation) on stdout.
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    run_to(args, &mut std::io::stdout()).await
}

/// [`run`], writing the report to `out`.
async fn run_to(args: BenchArgs, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    if args.concurrency == 0 || args.connections == 0 || args.seconds == 0 {
        return Err(CliError::Usage(
            "concurrency, connections and seconds must be positive".into(),
        ));
    }
    if let Some(n) = args.unique_tokens {
        if n == 0 || n > MAX_UNIQUE_TOKENS {
            return Err(CliError::Usage(format!(
                "--unique-tokens must be between 1 and {MAX_UNIQUE_TOKENS}"
            )));
        }
    }
    crypto_costs(args.crypto_iterations, out)?;
    let ops = if args.ops.is_empty() {
        vec![BenchOp::Issue, BenchOp::Exchange, BenchOp::Introspect]
    } else {
        args.ops.clone()
    };

    let mut _local = None;
    let (endpoints, certs) = match args.endpoint.is_empty() {
        false => (args.endpoint.clone(), args.certs.clone()),
        true => {
            let (node, dir) = start_local(args.verified_cache).await?;
            let addr = node.api_addr().to_string();
            let certs = dir.path().join("certs");
            _local = Some((node, dir));
            (vec![addr], certs)
        }
    };
    let files = |name: &str| TlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("{name}.pem")),
        key: certs.join(format!("{name}.key")),
    };
    let channels = |endpoints: Vec<String>, name: &'static str| {
        let files = files(name);
        let n = args.connections;
        async move {
            // Interleaved (a1 b1 a2 b2 …), so that workers taken in turn
            // alternate between the endpoints.
            let mut v = Vec::with_capacity(n * endpoints.len());
            for _ in 0..n {
                for endpoint in &endpoints {
                    v.push(tessera::client::connect(endpoint, &files).await?);
                }
            }
            anyhow::Ok(v)
        }
    };
    let tokens = |v: Vec<Channel>| {
        v.into_iter()
            .map(TokenServiceClient::new)
            .collect::<Vec<_>>()
    };
    if endpoints.len() > 1 {
        out!(out, "endpoints: {}", endpoints.join(", "));
    }
    let frontend = tokens(channels(endpoints.clone(), "frontend").await?);
    let orders = tokens(channels(endpoints.clone(), "orders").await?);
    let t1 = frontend[0]
        .clone()
        .issue_token(issue_req())
        .await
        .map_err(|s| anyhow::anyhow!("priming issue failed: {s}"))?
        .into_inner()
        .access_token;
    let introspected: Arc<[String]> = match args.unique_tokens {
        Some(n) if ops.iter().any(|op| op.is_introspect()) => {
            issue_pool(&frontend, n, args.concurrency).await?.into()
        }
        _ => vec![t1.clone()].into(),
    };
    let single: Arc<[String]> = vec![t1.clone()].into();

    // The baseline server and its clients: the same identity, connection
    // count and client code as the operations'.
    let baseline = match args.baseline {
        true => {
            let server = baseline::BaselineServer::start(files("node1")).await?;
            let clients = channels(vec![server.addr().to_string()], "orders")
                .await?
                .into_iter()
                .map(baseline::BaselineServiceClient::new)
                .collect::<Vec<_>>();
            Some((server, clients))
        }
        false => None,
    };
    // The baseline moves as many bytes as an Introspect request.
    let payload: Arc<[u8]> = vec![b'x'; t1.len()].into();

    out!(
        out,
        "\nverified-token cache: {}",
        if !args.endpoint.is_empty() {
            "as configured on the target".to_string()
        } else {
            args.verified_cache.to_string()
        }
    );
    out!(
        out,
        "introspected tokens: {}",
        match args.unique_tokens {
            Some(n) => format!("{n} distinct"),
            None => "one, repeated".into(),
        }
    );
    out!(
        out,
        "\n| operation | in flight | requests | errors | throughput (/s) | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|---|---|---|---|"
    );
    let duration = Duration::from_secs(args.seconds);
    let run_baseline = |clients: &[baseline::BaselineServiceClient<Channel>]| {
        let calls = (0..args.concurrency)
            .map(|w| Call::Baseline {
                client: clients[w % clients.len()].clone(),
                payload: payload.clone(),
            })
            .collect();
        load(calls, duration, args.max_requests)
    };
    let mut before = match &baseline {
        Some((_, clients)) => {
            let b = run_baseline(clients).await;
            out!(out, "{}", b.row("baseline", args.concurrency));
            Some(b)
        }
        None => None,
    };
    let mut ratios = Vec::new();
    for op in ops {
        let (clients, tokens) = match op {
            BenchOp::Issue => (&frontend, single.clone()),
            BenchOp::Exchange => (&orders, single.clone()),
            // The token's audience: only it (or an admin) sees the claims.
            BenchOp::Introspect | BenchOp::IntrospectLocal => (&orders, introspected.clone()),
        };
        let calls = (0..args.concurrency)
            .map(|w| Call::Token {
                client: clients[w % clients.len()].clone(),
                op,
                tokens: tokens.clone(),
            })
            .collect();
        let r = load(calls, duration, args.max_requests).await;
        out!(out, "{}", r.row(&format!("{op:?}"), args.concurrency));
        if let (Some((_, clients)), Some(b0)) = (&baseline, before.take()) {
            let b1 = run_baseline(clients).await;
            out!(out, "{}", b1.row("baseline", args.concurrency));
            ratios.push(Ratio::of(op, &r, &b0, &b1));
            before = Some(b1);
        }
    }
    if !ratios.is_empty() {
        out!(
            out,
            "\nratios to the do-nothing baseline (mean of the runs before and after):"
        );
        for r in &ratios {
            out!(out, "ratio {} {}", r.op.name(), fmt_ratio(r.throughput));
            out!(out, "p99-ratio {} {}", r.op.name(), fmt_ratio(r.p99));
        }
    }
    out.flush().context("writing the report")?;
    if let Some((server, clients)) = baseline {
        drop(clients);
        server.shutdown().await;
    }
    if let Some((node, _dir)) = _local.take() {
        node.shutdown()
            .await
            .map_err(|e| CliError::Failed(e.into()))?;
    }
    Ok(())
}

fn issue_req() -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        audience: vec!["spiffe://tessera.dev/svc/orders".into()],
        scope: vec![
            "orders:write".into(),
            "payments:charge".into(),
            "ledger:write".into(),
        ],
        ..Default::default()
    }
}

/// Issues `n` distinct tokens for the Introspect pool, `concurrency` at a
/// time, before timing starts. Bounded by `n` and [`ISSUE_POOL_LIMIT`]; a
/// refused issue fails the run rather than shrinking the pool.
async fn issue_pool(
    clients: &[TokenServiceClient<Channel>],
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + ISSUE_POOL_LIMIT;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency.min(n) {
        let mut client = clients[w % clients.len()].clone();
        let next = next.clone();
        workers.spawn(async move {
            let mut got = Vec::new();
            while Instant::now() < deadline && next.fetch_add(1, Ordering::Relaxed) < n {
                let token = client
                    .issue_token(issue_req())
                    .await
                    .map_err(|s| anyhow::anyhow!("issuing the token pool: {s}"))?
                    .into_inner()
                    .access_token;
                got.push(token);
            }
            anyhow::Ok(got)
        });
    }
    let mut pool = Vec::with_capacity(n);
    while let Some(r) = workers.join_next().await {
        pool.extend(r.context("token pool worker")??);
    }
    if pool.len() < n {
        anyhow::bail!(
            "issued only {} of {n} tokens in {:?}",
            pool.len(),
            ISSUE_POOL_LIMIT
        );
    }
    Ok(pool)
}

/// One worker's calls: a Tessera operation or the baseline echo. Both go
/// through the same load loop, so the client-side cost is the same.
enum Call {
    Token {
        client: TokenServiceClient<Channel>,
        op: BenchOp,
        /// Subject tokens, used in turn by request number.
        tokens: Arc<[String]>,
    },
    Baseline {
        client: baseline::BaselineServiceClient<Channel>,
        payload: Arc<[u8]>,
    },
}

impl Call {
    /// Makes request number `i`; true if it succeeded.
    async fn call(&mut self, i: u64) -> bool {
        match self {
            Self::Baseline { client, payload } => client
                .echo(baseline::EchoMessage {
                    payload: payload.to_vec(),
                })
                .await
                .is_ok(),
            Self::Token { client, op, tokens } => {
                // `tokens` is never empty: one token or the issued pool.
                let subject = tokens[(i % tokens.len() as u64) as usize].clone();
                match op {
                    BenchOp::Issue => client.issue_token(issue_req()).await.is_ok(),
                    BenchOp::Exchange => client
                        .exchange_token(pb::ExchangeTokenRequest {
                            subject_token: subject,
                            subject_token_type: "urn:ietf:params:oauth:token-type:access_token"
                                .into(),
                            audience: vec!["spiffe://tessera.dev/svc/payments".into()],
                            scope: vec!["payments:charge".into()],
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                    BenchOp::Introspect | BenchOp::IntrospectLocal => client
                        .introspect(pb::IntrospectRequest {
                            token: subject,
                            min_revision: 0,
                            consistency: if *op == BenchOp::IntrospectLocal {
                                pb::Consistency::Local as i32
                            } else {
                                pb::Consistency::Linearizable as i32
                            },
                        })
                        .await
                        .map(|r| r.into_inner().active)
                        .unwrap_or(false),
                }
            }
        }
    }
}

struct LoadResult {
    count: u64,
    errors: u64,
    throughput: f64,
    /// Successful requests per second: what the ratios compare, so that a
    /// failing operation never looks fast.
    ok_throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl LoadResult {
    fn row(&self, name: &str, in_flight: usize) -> String {
        format!(
            "| {name} | {in_flight} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            self.count, self.errors, self.throughput, self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

/// An operation against the baseline runs adjacent to it.
struct Ratio {
    op: BenchOp,
    /// Successful throughput over the baseline's (higher is better).
    throughput: Option<f64>,
    /// p99 latency over the baseline's (lower is better).
    p99: Option<f64>,
}

impl Ratio {
    fn of(op: BenchOp, r: &LoadResult, before: &LoadResult, after: &LoadResult) -> Self {
        let div = |a: f64, b: f64| (b > 0.0 && a.is_finite()).then(|| a / b);
        Self {
            op,
            throughput: div(
                r.ok_throughput,
                (before.ok_throughput + after.ok_throughput) / 2.0,
            ),
            p99: div(r.p99_ms, (before.p99_ms + after.p99_ms) / 2.0),
        }
    }
}

/// `x.xx`, or `n/a` when the baseline served nothing to compare with.
fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".into(), |r| format!("{r:.2}"))
}

/// Runs one worker per call until `duration` has passed or `max_requests`
/// have been started, whichever comes first.
async fn load(calls: Vec<Call>, duration: Duration, max_requests: u64) -> LoadResult {
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::with_capacity(calls.len());
    for mut call in calls {
        let issued = issued.clone();
        let errors = errors.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            while Instant::now() < deadline {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= max_requests {
                    break;
                }
                let t = Instant::now();
                if !call.call(i).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed().as_micros() as u32);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        if let Ok(l) = w.await {
            all.extend(l);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        f64::from(all[i]) / 1000.0
    };
    let count = all.len() as u64;
    let errors = errors.load(Ordering::Relaxed);
    LoadResult {
        count,
        errors,
        throughput: count as f64 / elapsed,
        ok_throughput: count.saturating_sub(errors) as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: all.last().map(|m| f64::from(*m) / 1000.0).unwrap_or(0.0),
    }
}

/// Single-core cost of the JWT operations, measured on this thread.
fn crypto_costs(iterations: u32, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    use tessera::token::{
        self, Alg, Audience, Claims, Confirmation, KeySet, SigningKey, VerifyParams, VerifyingKey,
    };
    let (pkcs8, public) = token::generate_ed25519().map_err(|e| CliError::Failed(e.into()))?;
    let signer = SigningKey::from_pkcs8("bench".into(), Alg::EdDSA, &pkcs8)
        .map_err(|e| CliError::Failed(e.into()))?;
    let keys = KeySet::new(vec![VerifyingKey::new("bench".into(), Alg::EdDSA, public)]);
    let now = 1_800_000_000;
    let claims = Claims {
        iss: "https://tessera.dev".into(),
        sub: "spiffe://tessera.dev/svc/frontend".into(),
        aud: Audience::one("spiffe://tessera.dev/svc/orders"),
        exp: now + 300,
        iat: now,
        nbf: now,
        jti: "bench-jti-0123456789".into(),
        scope: "orders:write payments:charge ledger:write".into(),
        client_id: "spiffe://tessera.dev/svc/frontend".into(),
        act: None,
        cnf: Some(Confirmation {
            x5t_s256: "x".repeat(43),
        }),
        may_act: None,
        chain: vec![],
        rev: None,
        ancestor_clients: Vec::new(),
    };
    let params = VerifyParams {
        issuer: "https://tessera.dev".into(),
        audience: None,
        now,
        leeway: 30,
        max_len: 8192,
        max_chain: 5,
    };
    let n = iterations.max(1);
    let t = Stopwatch::start(n);
    let mut tok = String::new();
    for _ in 0..n {
        tok = signer
            .sign(&claims)
            .context("sign")
            .map_err(CliError::Failed)?;
    }
    let sign = t.per_op();
    let t = Stopwatch::start(n);
    for _ in 0..n {
        token::verify(&tok, &keys, &params)
            .context("verify")
            .map_err(CliError::Failed)?;
    }
    let verify = t.per_op();
    out!(
        out,
        "| operation (one core) | µs/op | CPU µs/op |\n|---|---|---|"
    );
    out!(out, "| EdDSA sign (key parsed once) | {sign} |");
    out!(
        out,
        "| EdDSA verify (RFC 8725 checks + claims) | {verify} |"
    );
    other_costs(n, out)
}

/// Wall-clock and on-CPU time of a loop on this thread. On a shared
/// machine the wall clock includes the time other processes held the core;
/// the thread's own CPU time (`/proc/thread-self/schedstat`, Linux) does
/// not, so it is the figure to compare with CPU per request.
struct Stopwatch {
    n: u32,
    wall: Instant,
    cpu_ns: Option<u64>,
}

impl Stopwatch {
    fn start(n: u32) -> Self {
        Self {
            n,
            wall: Instant::now(),
            cpu_ns: thread_cpu_ns(),
        }
    }

    /// `wall | cpu` in µs per iteration (`n/a` where there is no schedstat).
    fn per_op(&self) -> String {
        let n = f64::from(self.n.max(1));
        let wall = self.wall.elapsed().as_secs_f64() * 1e6 / n;
        match (self.cpu_ns, thread_cpu_ns()) {
            (Some(a), Some(b)) => {
                format!("{wall:.1} | {:.1}", b.saturating_sub(a) as f64 / 1e3 / n)
            }
            _ => format!("{wall:.1} | n/a"),
        }
    }
}

/// Nanoseconds this thread has run on a CPU (first field of
/// `/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The other per-request costs on the server: caller identity from the
/// certificate and policy decisions.
fn other_costs(n: u32, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    use tessera::policy::{Action, ExchangeFacts, GrantFacts, PolicyEngine, Request};
    let dir = tempfile::tempdir().map_err(|e| CliError::Failed(e.into()))?;
    let pki = tessera::certs::init_dev_pki(dir.path(), &Default::default())
        .map_err(|e| CliError::Failed(e.into()))?;
    let files = pki
        .tls_files("orders")
        .context("orders")
        .map_err(CliError::Failed)?;
    let der = rustls::pki_types::pem::PemObject::from_pem_file(&files.cert)
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
        .map_err(|e| CliError::Failed(anyhow::anyhow!("{e}")))?;
    let time = |f: &mut dyn FnMut()| {
        let t = Stopwatch::start(n);
        for _ in 0..n {
            f();
        }
        t.per_op()
    };
    let id_us = time(&mut || {
        let _ = tessera::tls::identity_from_cert(&der);
    });
    let engine = PolicyEngine::new(include_str!("../../deploy/policy/example.cedar"), 1)
        .map_err(|e| CliError::Failed(e.into()))?;
    let orders = "spiffe://tessera.dev/svc/orders";
    let introspect = Request::introspect(orders);
    let intro_us = time(&mut || {
        let _ = engine.try_authorize(&introspect);
    });
    let cached_us = time(&mut || {
        let _ = engine.authorize(&introspect);
    });
    let facts = GrantFacts::Exchange(ExchangeFacts {
        lifetime: 300,
        depth: 1,
        subject: "spiffe://tessera.dev/svc/frontend".into(),
        subject_client: "spiffe://tessera.dev/svc/frontend".into(),
        actors: vec![],
        has_actor_token: false,
    });
    let scopes = vec!["payments:charge".to_string()];
    let exch_us = time(&mut || {
        let _ = engine.allowed_scopes(
            orders,
            Action::Exchange,
            "spiffe://tessera.dev/svc/payments",
            &scopes,
            &facts,
        );
    });
    out!(
        out,
        "| caller identity from the client certificate | {id_us} |"
    );
    out!(
        out,
        "| Cedar decision: introspect, evaluated | {intro_us} |"
    );
    out!(
        out,
        "| Cedar decision: introspect, from the decision cache | {cached_us} |"
    );
    out!(
        out,
        "| Cedar decision: exchange, one scope, from the decision cache | {exch_us} |"
    );
    Ok(())
}

/// Starts a one-node cluster in this process with fresh development state.
async fn start_local(
    verified_cache: usize,
) -> anyhow::Result<(tessera::node::Node, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let pki = tessera::certs::init_dev_pki(&dir.path().join("certs"), &Default::default())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let files = pki.tls_files("node1").context("node1 certificate")?;
    let mut config = tessera::node::Config::new(
        1,
        dir.path().join("node1"),
        listener.local_addr()?.to_string(),
        files,
        tessera::node::KekSource::Generate(dir.path().join("kek")),
    );
    config.initial_policy = Some(include_str!("../../deploy/policy/example.cedar").to_string());
    config.audit = tessera::api::AuditSink::File(dir.path().join("audit.jsonl"));
    config.token.verified_cache = verified_cache;
    // One calling identity drives the whole load: per-caller rate limits
    // would measure themselves.
    config.limits.rate = tessera::api::RateLimits::unlimited();
    config.bootstrap = true;
    let raft = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let node = tessera::node::start(
        config,
        tessera::node::Listeners {
            api: listener,
            raft,
            http: None,
        },
    )
    .await?;
    Ok((node, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ops: Vec<BenchOp>) -> BenchArgs {
        BenchArgs {
            endpoint: Vec::new(),
            certs: PathBuf::new(),
            concurrency: 4,
            connections: 1,
            seconds: 1,
            max_requests: 2_000,
            ops,
            verified_cache: 16,
            crypto_iterations: 1,
            baseline: true,
            unique_tokens: Some(40),
        }
    }

    /// A tiny `--baseline --unique-tokens` run against an in-process node
    /// prints a positive ratio per operation (values are not asserted: they
    /// depend on the machine).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bench_baseline_prints_ratio_per_operation() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut out = Vec::new();
        let run = run_to(
            args(vec![BenchOp::Introspect, BenchOp::IntrospectLocal]),
            &mut out,
        );
        // Generous: two 1 s operations, three 1 s baselines, node start-up
        // and 40 issues on a busy debug build.
        let result = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .expect("bench finished in time");
        assert!(result.is_ok(), "bench failed");
        let out = String::from_utf8(out).unwrap();
        for op in ["introspect", "introspect-local"] {
            for prefix in ["ratio", "p99-ratio"] {
                let line = out
                    .lines()
                    .find(|l| l.starts_with(&format!("{prefix} {op} ")))
                    .unwrap_or_else(|| panic!("no `{prefix} {op}` line in:\n{out}"));
                let x: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
                assert!(x > 0.0, "{line}");
            }
        }
        assert_eq!(out.matches("| baseline |").count(), 3, "{out}");
        assert!(out.contains("introspected tokens: 40 distinct"), "{out}");
    }

    #[tokio::test]
    async fn bench_unique_tokens_out_of_range_is_a_usage_error() {
        for n in [0, MAX_UNIQUE_TOKENS + 1] {
            let mut a = args(vec![BenchOp::Introspect]);
            a.unique_tokens = Some(n);
            let r = run_to(a, &mut Vec::new()).await;
            assert!(matches!(r, Err(CliError::Usage(_))), "{n}");
        }
    }
}
