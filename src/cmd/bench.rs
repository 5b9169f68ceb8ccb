//! `tessera bench`: a bounded load generator for IssueToken, ExchangeToken
//! and Introspect over mutual TLS, plus the single-core cost of the JWT
//! sign and verify the server uses. Every loop stops by itself: at the time
//! limit or the request limit, whichever comes first.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tessera::pb::{self, token_service_client::TokenServiceClient};
use tessera::tls::TlsFiles;
use tonic::transport::Channel;

use super::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchOp {
    Issue,
    Exchange,
    /// Linearizable introspection (the default).
    Introspect,
    /// Introspection with `consistency = LOCAL`.
    IntrospectLocal,
}

/// Options of `tessera bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Target node (host:port). Without it, the benchmark starts a one-node
    /// cluster in this process on 127.0.0.1 with fresh development state.
    #[arg(long)]
    endpoint: Option<String>,
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
}

/// Runs the benchmark and prints a Markdown table.
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    if args.concurrency == 0 || args.connections == 0 || args.seconds == 0 {
        return Err(CliError::Usage(
            "concurrency, connections and seconds must be positive".into(),
        ));
    }
    crypto_costs(args.crypto_iterations)?;
    let ops = if args.ops.is_empty() {
        vec![BenchOp::Issue, BenchOp::Exchange, BenchOp::Introspect]
    } else {
        args.ops.clone()
    };

    let mut _local = None;
    let (endpoint, certs) = match &args.endpoint {
        Some(e) => (e.clone(), args.certs.clone()),
        None => {
            let (node, dir) = start_local(args.verified_cache).await?;
            let addr = node.api_addr().to_string();
            let certs = dir.path().join("certs");
            _local = Some((node, dir));
            (addr, certs)
        }
    };
    let files = |name: &str| TlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("{name}.pem")),
        key: certs.join(format!("{name}.key")),
    };
    let pool = |name: &'static str| {
        let files = files(name);
        let endpoint = endpoint.clone();
        let n = args.connections;
        async move {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(TokenServiceClient::new(
                    tessera::client::connect(&endpoint, &files).await?,
                ));
            }
            anyhow::Ok(v)
        }
    };
    let frontend = pool("frontend").await?;
    let orders = pool("orders").await?;
    let t1 = frontend[0]
        .clone()
        .issue_token(issue_req())
        .await
        .map_err(|s| anyhow::anyhow!("priming issue failed: {s}"))?
        .into_inner()
        .access_token;

    println!(
        "\nverified-token cache: {}",
        if args.endpoint.is_some() {
            "as configured on the target".to_string()
        } else {
            args.verified_cache.to_string()
        }
    );
    println!(
        "\n| operation | in flight | requests | errors | throughput (/s) | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|---|---|---|---|"
    );
    for op in ops {
        let (clients, t1) = match op {
            BenchOp::Issue => (frontend.clone(), t1.clone()),
            BenchOp::Exchange => (orders.clone(), t1.clone()),
            // The token's audience: only it (or an admin) sees the claims.
            BenchOp::Introspect | BenchOp::IntrospectLocal => (orders.clone(), t1.clone()),
        };
        let r = load(
            op,
            clients,
            t1,
            args.concurrency,
            Duration::from_secs(args.seconds),
            args.max_requests,
        )
        .await;
        println!(
            "| {:?} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            op, args.concurrency, r.count, r.errors, r.throughput, r.p50_ms, r.p99_ms, r.max_ms
        );
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

struct LoadResult {
    count: u64,
    errors: u64,
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

async fn load(
    op: BenchOp,
    clients: Vec<TokenServiceClient<Channel>>,
    subject: String,
    concurrency: usize,
    duration: Duration,
    max_requests: u64,
) -> LoadResult {
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let mut client = clients[w % clients.len()].clone();
        let issued = issued.clone();
        let errors = errors.clone();
        let subject = subject.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_requests
            {
                let t = Instant::now();
                let ok = match op {
                    BenchOp::Issue => client.issue_token(issue_req()).await.is_ok(),
                    BenchOp::Exchange => client
                        .exchange_token(pb::ExchangeTokenRequest {
                            subject_token: subject.clone(),
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
                            token: subject.clone(),
                            min_revision: 0,
                            consistency: if op == BenchOp::IntrospectLocal {
                                pb::Consistency::Local as i32
                            } else {
                                pb::Consistency::Linearizable as i32
                            },
                        })
                        .await
                        .map(|r| r.into_inner().active)
                        .unwrap_or(false),
                };
                if !ok {
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
    LoadResult {
        count: all.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        throughput: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: all.last().map(|m| f64::from(*m) / 1000.0).unwrap_or(0.0),
    }
}

/// Single-core cost of the JWT operations, measured on this thread.
fn crypto_costs(iterations: u32) -> Result<(), CliError> {
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
    let t = Instant::now();
    let mut tok = String::new();
    for _ in 0..n {
        tok = signer
            .sign(&claims)
            .context("sign")
            .map_err(CliError::Failed)?;
    }
    let sign_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let t = Instant::now();
    for _ in 0..n {
        token::verify(&tok, &keys, &params)
            .context("verify")
            .map_err(CliError::Failed)?;
    }
    let verify_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!("| operation (one core) | µs/op |\n|---|---|");
    println!("| EdDSA sign (key parsed once) | {sign_us:.1} |");
    println!("| EdDSA verify (RFC 8725 checks + claims) | {verify_us:.1} |");
    other_costs(n)
}

/// The other per-request costs on the server: caller identity from the
/// certificate and policy decisions.
fn other_costs(n: u32) -> Result<(), CliError> {
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
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
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
    println!("| caller identity from the client certificate | {id_us:.1} |");
    println!("| Cedar decision: introspect, evaluated | {intro_us:.1} |");
    println!("| Cedar decision: introspect, from the decision cache | {cached_us:.2} |");
    println!("| Cedar decision: exchange, one scope, from the decision cache | {exch_us:.2} |");
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
