//! `tessera bench-watch`: propagation latency of the revocation stream —
//! from a `Revoke` being acknowledged to the event arriving at each of many
//! subscribers spread over the cluster's nodes — the sustained fan-out rate,
//! and the nodes' memory per subscriber. Bounded in subscribers, revocations
//! and time; every loop stops by itself.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use tessera::pb::token_service_client::TokenServiceClient;
use tessera::pb::{self, revocation_service_client::RevocationServiceClient, watch_event::Kind};
use tessera::tls::TlsFiles;

use super::CliError;

/// Options of `tessera bench-watch`.
#[derive(Debug, Args)]
pub struct BenchWatchArgs {
    /// API addresses of the nodes (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Development certificate directory.
    #[arg(long, default_value = ".tessera-dev/certs")]
    certs: PathBuf,
    /// Process ids of the nodes (comma-separated), to read their memory use.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Subscribers, spread over the nodes.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// HTTP/2 connections per node for the subscribers.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Revocations to send.
    #[arg(long, default_value_t = 500)]
    revocations: usize,
    /// Revocations per second (paced; 0 = as fast as one client can).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Upper bound on the whole run, seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

fn files(dir: &std::path::Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn total_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| rss_kib(*p)).sum()
}

/// Runs the benchmark.
pub async fn run(args: BenchWatchArgs) -> Result<(), CliError> {
    if args.endpoints.is_empty() || args.subscribers == 0 || args.connections == 0 {
        return Err(CliError::Usage(
            "endpoints, subscribers and connections must be given".into(),
        ));
    }
    inner(args).await.map_err(CliError::Failed)
}

async fn inner(args: BenchWatchArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let rss_before = total_rss(&args.pids);
    let mut chans = Vec::new();
    for e in &args.endpoints {
        for _ in 0..args.connections {
            chans.push(tessera::client::connect(e, &files(&args.certs, "ledger")).await?);
        }
    }
    let n = args.revocations;
    // Fresh jtis for every run: a revoked jti revoked again is no event.
    let prefix = {
        let mut b = [0u8; 4];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| anyhow::anyhow!("rng"))?;
        format!("bw{:08x}-", u32::from_le_bytes(b))
    };
    let start = Instant::now();
    // Every subscriber records when it received each revocation (by index).
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.subscribers);
    let mut subs = Vec::with_capacity(args.subscribers);
    for k in 0..args.subscribers {
        let ch = chans[k % chans.len()].clone();
        let ready = ready_tx.clone();
        let prefix = prefix.clone();
        subs.push(tokio::spawn(async move {
            let mut c = RevocationServiceClient::new(ch);
            let mut s = c
                .watch_revocations(pb::WatchRequest { from_revision: 0 })
                .await?
                .into_inner();
            let mut got: Vec<Option<Duration>> = vec![None; n];
            let mut count = 0;
            let mut announced = false;
            while count < n {
                let Some(e) = tokio::time::timeout_at(deadline.into(), s.message())
                    .await
                    .context("subscriber timed out")??
                else {
                    anyhow::bail!("stream ended");
                };
                match e.kind {
                    Some(Kind::SnapshotEnd(_)) if !announced => {
                        announced = true;
                        let _ = ready.send(()).await;
                    }
                    Some(Kind::Revoked(rs)) => {
                        let at = start.elapsed();
                        for r in rs.revocations {
                            if let Some(pb::revocation::Target::Jti(j)) = r.target {
                                if let Some(i) = j
                                    .strip_prefix(prefix.as_str())
                                    .and_then(|i| i.parse::<usize>().ok())
                                {
                                    if i < n && got[i].is_none() {
                                        got[i] = Some(at);
                                        count += 1;
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            anyhow::Ok(got)
        }));
    }
    drop(ready_tx);
    for _ in 0..args.subscribers {
        tokio::time::timeout_at(deadline.into(), ready_rx.recv())
            .await
            .context("subscribers did not all start in time")?;
    }
    let rss_subscribed = total_rss(&args.pids);

    // Revocations, paced, on node 1 (followers forward anyway).
    let mut admin = TokenServiceClient::new(
        tessera::client::connect(&args.endpoints[0], &files(&args.certs, "admin")).await?,
    );
    let mut acked: Vec<Duration> = Vec::with_capacity(n);
    let pace = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    let mut tick = pace.map(tokio::time::interval);
    let send_start = Instant::now();
    for i in 0..n {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "time limit reached while revoking"
        );
        admin
            .revoke(pb::RevokeRequest {
                target: Some(pb::revoke_request::Target::Jti(format!("{prefix}{i}"))),
            })
            .await
            .map_err(|s| anyhow::anyhow!("revoke: {s}"))?;
        acked.push(start.elapsed());
    }
    let send_secs = send_start.elapsed().as_secs_f64();

    let mut lat_us: Vec<i64> = Vec::with_capacity(n * args.subscribers);
    let mut delivered = 0u64;
    let mut last_arrival = Duration::ZERO;
    for s in subs {
        let got = s.await??;
        for (i, at) in got.into_iter().enumerate() {
            let at = at.context("missing event")?;
            delivered += 1;
            last_arrival = last_arrival.max(at);
            lat_us.push(at.as_micros() as i64 - acked[i].as_micros() as i64);
        }
    }
    lat_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        let i = ((lat_us.len() as f64 * p).ceil() as usize).clamp(1, lat_us.len()) - 1;
        lat_us[i] as f64 / 1000.0
    };
    let early = lat_us.iter().filter(|l| **l < 0).count();
    let fanout_secs = (last_arrival.as_secs_f64() - acked[0].as_secs_f64()).max(1e-6);
    println!(
        "| subscribers | nodes | revocations | rate (/s) | deliveries | p50 (ms) | p99 (ms) | max (ms) | before ack | fan-out (events/s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.1} % | {:.0} |",
        args.subscribers,
        args.endpoints.len(),
        n,
        n as f64 / send_secs,
        delivered,
        pct(0.50),
        pct(0.99),
        pct(1.0),
        100.0 * early as f64 / lat_us.len() as f64,
        delivered as f64 / fanout_secs,
    );
    if let (Some(a), Some(b)) = (rss_before, rss_subscribed) {
        println!(
            "\nnode memory (RSS, all nodes): {} KiB before, {} KiB with {} subscribers: {:.1} KiB per subscriber",
            a,
            b,
            args.subscribers,
            (b.saturating_sub(a)) as f64 / args.subscribers as f64
        );
    }
    Ok(())
}
