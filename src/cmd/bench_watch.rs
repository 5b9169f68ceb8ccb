//! `tessera bench-watch`: propagation latency of the revocation stream —
//! from a `Revoke` being acknowledged to the event arriving at each of many
//! subscribers spread over the cluster's nodes (and, as a second figure,
//! from the `Revoke` being sent) — the sustained fan-out rate, and the
//! nodes' memory per subscriber. Bounded in subscribers, revocations and
//! time; every loop stops by itself.
//!
//! `--coalesce both` runs the same load twice in one invocation, first with
//! subscribers that do not opt in to coalescing (one event per message, as
//! clients built before it), then with subscribers that do, and prints one
//! row each: the same-run comparison.
//!
//! Fairness of the measurement: everything runs in one process on the same
//! cores as the nodes. By default the revoker has a thread and a runtime
//! of its own (its acknowledgements are not timestamped late because a
//! thousand subscriber tasks were woken by the same event), and `--probes`
//! subscribers (counted among `--subscribers`) run on another thread of
//! their own: their latencies leave out the load generator's scheduling of
//! the other streams, and the gap between the probes' and everyone's
//! percentiles is that scheduling. A second table splits each run: the
//! commit (send to ack), the probes, the subscribers of each node, and the
//! CPU per delivery.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
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
    /// Revocations in flight at most: paced ones are sent without waiting
    /// for the previous answer, so the rate does not depend on a commit's
    /// latency (concurrent revocations may share a log entry, so an event
    /// may carry several). 1: one after the other.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Upper bound on each run, seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Whether subscribers opt in to coalesced events (`both`: one run
    /// without, then one with, on the same nodes).
    #[arg(long, value_enum, default_value_t = Coalesce::Both)]
    coalesce: Coalesce,
    /// Subscribers (of `--subscribers`) that run on a thread and runtime of
    /// their own, one connection each, spread over the nodes.
    #[arg(long, default_value_t = 3)]
    probes: usize,
    /// Run the revoker on the subscribers' runtime, as before 2026-11-30
    /// (for comparing the two ways of measuring).
    #[arg(long)]
    shared_revoker: bool,
}

/// Which subscribers a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Coalesce {
    /// Opted-in subscribers.
    On,
    /// Old-style subscribers: one event per message.
    Off,
    /// Off, then on.
    Both,
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

/// CPU seconds (user + system) a process has used; `/proc` counts in
/// USER_HZ, which is 100 on Linux.
fn cpu_secs(pid: &str) -> Option<f64> {
    Some(super::proc_cpu::ticks_of(pid)? as f64 / 100.0)
}

fn nodes_cpu(pids: &[u32]) -> Option<f64> {
    Some(super::proc_cpu::processes_ticks(pids)? as f64 / 100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn total_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| rss_kib(*p)).sum()
}

/// Runs the benchmark.
pub async fn run(args: BenchWatchArgs) -> Result<(), CliError> {
    if args.endpoints.is_empty()
        || args.subscribers == 0
        || args.revocations == 0
        || args.connections == 0
        || args.in_flight == 0
    {
        return Err(CliError::Usage(
            "endpoints, subscribers, revocations and connections must be given".into(),
        ));
    }
    inner(args).await.map_err(CliError::Failed)
}

/// What one run measured.
struct Row {
    coalesce: bool,
    /// Commit latency (send to ack) p50 / p99, ms.
    commit: (f64, f64),
    /// The probes' p50 / p99 from the ack and p99 from send, ms.
    probe: Option<(f64, f64, f64)>,
    /// p99 from the ack of the (non-probe) subscribers of each node, ms.
    node_p99: Vec<f64>,
    rate: f64,
    deliveries: u64,
    messages: u64,
    p50: f64,
    p99: f64,
    max: f64,
    /// p50 and p99 measured from the revoke's send, not its answer.
    sent_p50: f64,
    sent_p99: f64,
    early: f64,
    fanout: f64,
    nodes_cpu: Option<f64>,
    bench_cpu: Option<f64>,
    load: String,
    rss: Option<(u64, u64)>,
}

async fn inner(args: BenchWatchArgs) -> anyhow::Result<()> {
    let mut chans = Vec::new();
    for e in &args.endpoints {
        for _ in 0..args.connections {
            chans.push(tessera::client::connect(e, &files(&args.certs, "ledger")).await?);
        }
    }
    let modes: &[bool] = match args.coalesce {
        Coalesce::On => &[true],
        Coalesce::Off => &[false],
        Coalesce::Both => &[false, true],
    };
    let mut rows = Vec::new();
    for &coalesce in modes {
        rows.push(one_run(&args, &chans, coalesce).await?);
    }
    println!(
        "| coalesce | subscribers | nodes | revocations | rate (/s) | deliveries | revocations/message | p50 (ms) | p99 (ms) | max (ms) | from send p50/p99 (ms) | before ack | fan-out (events/s) | nodes' CPU (s) | bench CPU (s) | load avg |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {:.1} % | {:.0} | {} | {} | {} |",
            if r.coalesce { "on" } else { "off" },
            args.subscribers,
            args.endpoints.len(),
            args.revocations,
            r.rate,
            r.deliveries,
            r.deliveries as f64 / r.messages.max(1) as f64,
            r.p50,
            r.p99,
            r.max,
            r.sent_p50,
            r.sent_p99,
            r.early,
            r.fanout,
            opt(r.nodes_cpu),
            opt(r.bench_cpu),
            r.load,
        );
    }
    println!(
        "\n| coalesce | commit p50/p99 (ms) | probes p50/p99 (ms) | probes from send p99 (ms) | p99 by node (ms) | nodes' CPU per delivery (µs) | per message (µs) | bench CPU per delivery (µs) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let per = |cpu: Option<f64>, n: u64| {
        cpu.map_or("-".to_string(), |c| {
            format!("{:.2}", c * 1e6 / n.max(1) as f64)
        })
    };
    for r in &rows {
        println!(
            "| {} | {:.2} / {:.2} | {} | {} | {} | {} | {} | {} |",
            if r.coalesce { "on" } else { "off" },
            r.commit.0,
            r.commit.1,
            r.probe
                .map_or("-".into(), |p| format!("{:.2} / {:.2}", p.0, p.1)),
            r.probe.map_or("-".into(), |p| format!("{:.2}", p.2)),
            r.node_p99
                .iter()
                .map(|p| format!("{p:.1}"))
                .collect::<Vec<_>>()
                .join(" / "),
            per(r.nodes_cpu, r.deliveries),
            per(r.nodes_cpu, r.messages),
            per(r.bench_cpu, r.deliveries),
        );
    }
    if let Some((a, b)) = rows.first().and_then(|r| r.rss) {
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

/// Notes the arrival of this run's revocations among `rs`; returns how
/// many were new.
fn record(
    got: &mut [Option<Duration>],
    prefix: &str,
    rs: Vec<pb::Revocation>,
    at: Duration,
) -> usize {
    let mut new = 0;
    for r in rs {
        if let Some(pb::revocation::Target::Jti(j)) = r.target {
            if let Some(i) = j.strip_prefix(prefix).and_then(|i| i.parse::<usize>().ok()) {
                if let Some(slot @ None) = got.get_mut(i) {
                    *slot = Some(at);
                    new += 1;
                }
            }
        }
    }
    new
}

/// What one subscriber received: when each revocation arrived (by index),
/// and how many revocation messages carried them.
type Got = (Vec<Option<Duration>>, u64);

/// What every subscriber of a run shares.
#[derive(Clone)]
struct SubParams {
    coalesce: bool,
    n: usize,
    prefix: String,
    start: Instant,
    deadline: Instant,
    ready: tokio::sync::mpsc::Sender<()>,
}

/// One subscriber: waits for its snapshot, says so, then notes when each of
/// the run's revocations arrives (the time is taken once the message is
/// decoded, in the subscriber's own task).
async fn subscribe(ch: tonic::transport::Channel, p: SubParams) -> anyhow::Result<Got> {
    let mut c = RevocationServiceClient::new(ch);
    let mut s = c
        .watch_revocations(pb::WatchRequest {
            from_revision: 0,
            coalesce: p.coalesce,
        })
        .await?
        .into_inner();
    let mut got: Vec<Option<Duration>> = vec![None; p.n];
    let mut count = 0;
    let mut messages = 0u64;
    let mut announced = false;
    // One deadline for the whole stream, not a timer per message: the load
    // generator's own cost per delivery is part of what it measures.
    let read = async {
        while count < p.n {
            let Some(e) = s.message().await? else {
                anyhow::bail!("stream ended");
            };
            match e.kind {
                Some(Kind::SnapshotEnd(_)) if !announced => {
                    announced = true;
                    let _ = p.ready.send(()).await;
                }
                Some(Kind::Revoked(rs)) => {
                    messages += 1;
                    count += record(&mut got, &p.prefix, rs.revocations, p.start.elapsed());
                }
                Some(Kind::RevokedBatch(b)) => {
                    messages += 1;
                    let at = p.start.elapsed();
                    for ev in b.events {
                        count += record(&mut got, &p.prefix, ev.revocations, at);
                    }
                }
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout_at(p.deadline.into(), read)
        .await
        .context("subscriber timed out")??;
    anyhow::Ok((got, messages))
}

/// Runs `f` on a thread with a single-threaded runtime of its own (its
/// connections' I/O too, as they are made there); the result comes back
/// through a channel, so the caller's runtime is not blocked.
fn on_own_thread<F, Fut, T>(name: &str, f: F) -> tokio::sync::oneshot::Receiver<anyhow::Result<T>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("runtime")
                .and_then(|rt| rt.block_on(f()));
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a bench thread");
    }
    rx
}

/// When each revocation was sent and acknowledged.
type Acks = (Vec<Duration>, Vec<Duration>, f64);

/// Sends the run's revocations, paced, on node 1 (followers forward
/// anyway), up to `in_flight` at once; returns when each was sent and
/// acknowledged, and how long sending took.
async fn revoke_all(
    admin: TokenServiceClient<tonic::transport::Channel>,
    rate: u64,
    in_flight: usize,
    n: usize,
    prefix: String,
    start: Instant,
    deadline: Instant,
) -> anyhow::Result<Acks> {
    let pace = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    let mut tick = pace.map(tokio::time::interval);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut revokes = tokio::task::JoinSet::new();
    let send_start = Instant::now();
    for i in 0..n {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let slot = tokio::time::timeout_at(deadline.into(), slots.clone().acquire_owned())
            .await
            .context("time limit reached while revoking")??;
        let mut admin = admin.clone();
        let jti = format!("{prefix}{i}");
        revokes.spawn(async move {
            let sent = start.elapsed();
            let r = tokio::time::timeout_at(
                deadline.into(),
                admin.revoke(pb::RevokeRequest {
                    target: Some(pb::revoke_request::Target::Jti(jti)),
                }),
            )
            .await;
            drop(slot);
            let at = start.elapsed();
            match r {
                Ok(Ok(_)) => Ok((i, sent, at)),
                Ok(Err(s)) => Err(anyhow::anyhow!("revoke: {s}")),
                Err(_) => Err(anyhow::anyhow!("time limit reached while revoking")),
            }
        });
    }
    let mut acked: Vec<Duration> = vec![Duration::ZERO; n];
    let mut sent: Vec<Duration> = vec![Duration::ZERO; n];
    while let Some(r) = revokes.join_next().await {
        let (i, s, at) = r??;
        acked[i] = at;
        sent[i] = s;
    }
    Ok((sent, acked, send_start.elapsed().as_secs_f64()))
}

/// Percentile `p` (0..=1) of sorted microseconds, in ms.
fn pct_of(v: &[i64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1000.0
}

async fn one_run(
    args: &BenchWatchArgs,
    chans: &[tonic::transport::Channel],
    coalesce: bool,
) -> anyhow::Result<Row> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let load = loadavg();
    let rss_before = total_rss(&args.pids);
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
    let params = SubParams {
        coalesce,
        n,
        prefix: prefix.clone(),
        start,
        deadline,
        ready: ready_tx,
    };
    let probes = args.probes.min(args.subscribers);
    let mut probe_results = (probes > 0).then(|| {
        let (endpoints, certs, p) = (args.endpoints.clone(), args.certs.clone(), params.clone());
        on_own_thread("bench-probes", move || async move {
            let mut tasks = Vec::new();
            for j in 0..probes {
                let ch = tessera::client::connect(
                    &endpoints[j % endpoints.len()],
                    &files(&certs, "ledger"),
                )
                .await?;
                tasks.push(tokio::spawn(subscribe(ch, p.clone())));
            }
            drop(p);
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await??);
            }
            anyhow::Ok(out)
        })
    });
    let mut subs = Vec::with_capacity(args.subscribers);
    for k in 0..args.subscribers - probes {
        let ch = chans[k % chans.len()].clone();
        subs.push(tokio::spawn(subscribe(ch, params.clone())));
    }
    drop(params);
    for _ in 0..args.subscribers {
        // The probes end early only if they failed: say so at once.
        let probes_ended = async {
            match probe_results.as_mut() {
                Some(rx) => rx.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = tokio::time::timeout_at(deadline.into(), ready_rx.recv()) => {
                r.context("subscribers did not all start in time")?
                    .context("a subscriber failed before its snapshot")?;
            }
            r = probes_ended => {
                r.context("probe thread")??;
                anyhow::bail!("the probes ended before the revocations");
            }
        }
    }
    let rss_subscribed = total_rss(&args.pids);
    let cpu_before = (nodes_cpu(&args.pids), cpu_secs("self"));

    let (rate, in_flight, ep, certs) = (
        args.rate,
        args.in_flight,
        args.endpoints[0].clone(),
        args.certs.clone(),
    );
    let revoke = move || async move {
        let admin =
            TokenServiceClient::new(tessera::client::connect(&ep, &files(&certs, "admin")).await?);
        revoke_all(admin, rate, in_flight, n, prefix, start, deadline).await
    };
    let (sent, acked, send_secs) = if args.shared_revoker {
        revoke().await?
    } else {
        on_own_thread("bench-revoker", revoke)
            .await
            .context("revoker thread")??
    };

    // Latencies (µs) from the ack and from the send, of every delivery.
    let lat = |got: &[Option<Duration>], i: usize| -> anyhow::Result<(i64, i64)> {
        let at = got[i].context("missing event")?.as_micros() as i64;
        Ok((
            at - acked[i].as_micros() as i64,
            at - sent[i].as_micros() as i64,
        ))
    };
    let mut lat_us: Vec<i64> = Vec::with_capacity(n * args.subscribers);
    let mut sent_us: Vec<i64> = Vec::with_capacity(n * args.subscribers);
    let mut by_node: Vec<Vec<i64>> = vec![Vec::new(); args.endpoints.len()];
    let mut delivered = 0u64;
    let mut messages = 0u64;
    let mut last_arrival = Duration::ZERO;
    for (k, s) in subs.into_iter().enumerate() {
        let (got, m): Got = s.await??;
        messages += m;
        let node = (k % chans.len()) / args.connections;
        for i in 0..n {
            let (a, b) = lat(&got, i)?;
            delivered += 1;
            last_arrival = last_arrival.max(got[i].unwrap_or_default());
            lat_us.push(a);
            sent_us.push(b);
            by_node[node].push(a);
        }
    }
    let mut probe = None;
    if let Some(rx) = probe_results {
        let (mut p_ack, mut p_sent) = (Vec::new(), Vec::new());
        for (got, m) in rx.await.context("probe thread")?? {
            messages += m;
            for i in 0..n {
                let (a, b) = lat(&got, i)?;
                delivered += 1;
                last_arrival = last_arrival.max(got[i].unwrap_or_default());
                lat_us.push(a);
                sent_us.push(b);
                p_ack.push(a);
                p_sent.push(b);
            }
        }
        p_ack.sort_unstable();
        p_sent.sort_unstable();
        probe = Some((
            pct_of(&p_ack, 0.50),
            pct_of(&p_ack, 0.99),
            pct_of(&p_sent, 0.99),
        ));
    }
    let cpu_after = (nodes_cpu(&args.pids), cpu_secs("self"));
    lat_us.sort_unstable();
    sent_us.sort_unstable();
    let mut commit: Vec<i64> = (0..n)
        .map(|i| acked[i].as_micros() as i64 - sent[i].as_micros() as i64)
        .collect();
    commit.sort_unstable();
    let node_p99 = by_node
        .iter_mut()
        .map(|v| {
            v.sort_unstable();
            pct_of(v, 0.99)
        })
        .collect();
    let pct = |p: f64| pct_of(&lat_us, p);
    let early = lat_us.iter().filter(|l| **l < 0).count();
    let first_ack = acked.iter().min().copied().unwrap_or_default();
    let fanout_secs = (last_arrival.as_secs_f64() - first_ack.as_secs_f64()).max(1e-6);
    let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    Ok(Row {
        coalesce,
        commit: (pct_of(&commit, 0.50), pct_of(&commit, 0.99)),
        probe,
        node_p99,
        rate: n as f64 / send_secs,
        deliveries: delivered,
        messages,
        p50: pct(0.50),
        p99: pct(0.99),
        max: pct(1.0),
        sent_p50: pct_of(&sent_us, 0.50),
        sent_p99: pct_of(&sent_us, 0.99),
        early: 100.0 * early as f64 / lat_us.len() as f64,
        fanout: delivered as f64 / fanout_secs,
        nodes_cpu: diff(cpu_before.0, cpu_after.0),
        bench_cpu: diff(cpu_before.1, cpu_after.1),
        load,
        rss: rss_before.zip(rss_subscribed),
    })
}
