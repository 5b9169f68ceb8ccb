//! Wiring: opens the store, starts Raft, bootstraps a new cluster (first
//! signing key, initial policy), and serves the public gRPC API over mutual
//! TLS until told to stop.
//!
//! `run(config, listeners, shutdown)` is the whole node; tests use
//! [`start`] to get a [`Node`] handle with access to Raft metrics, so they
//! can wait on events instead of sleeping.

mod config;
mod key_duties;
mod leader_duties;
mod metrics;
mod peers;
pub mod settings_history;
mod tls_reload;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

pub use config::{Config, KekSource, KeySettings, RaftSettings, TokenSettings};
pub use tls_reload::{ReloadOutcome, TlsReloadSettings, TlsReloader};

use peers::NetPeers;

use crate::api::{self, AuditLog, Shared};
use crate::keys::{self, Kek, KekRing};
use crate::raft::network::Network as RaftNetwork;
use crate::raft::{NodeId, NodeInfo, TypeConfig};
use crate::store::{self, StateView};

/// The Raft handle type.
pub type Raft = openraft::Raft<TypeConfig>;

/// How long a node waits to become leader of its fresh one-node cluster.
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// How long shutdown waits for Raft's workers to release the store.
const STORE_CLOSE_WAIT: Duration = Duration::from_secs(30);
/// Largest header block the Raft listener accepts (the API's default).
const RAFT_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Errors that stop a node from starting or stopping cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The key-encryption key or the key ring.
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The initial policy is invalid.
    #[error("initial policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// Raft failed.
    #[error("raft: {0}")]
    Raft(String),
    /// An I/O error (listeners, audit log).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The node stopped itself: its storage failed (fail-stop).
    #[error("{0}")]
    Fatal(String),
}

/// The listeners a node serves on; bound by the caller (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    /// The public API (gRPC over mTLS).
    pub api: TcpListener,
    /// Node-to-node Raft traffic (gRPC over mTLS, members only).
    pub raft: TcpListener,
    /// The HTTPS listener (JWKS, RFC 8414 metadata; client certificates
    /// optional), if it is to be served.
    pub http: Option<TcpListener>,
}

/// A running node.
pub struct Node {
    id: NodeId,
    raft: Raft,
    state: StateView,
    api_addr: std::net::SocketAddr,
    raft_addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    audit_thread: Option<std::thread::JoinHandle<()>>,
    shared: Option<Arc<Shared>>,
    store_closed: watch::Receiver<()>,
    /// Set (once) when the node stopped itself on a fatal error.
    fatal: watch::Receiver<Option<String>>,
    campaign_stats: Arc<crate::raft::CampaignStats>,
    /// When a leader was last heard, and the longest election timeout.
    election: (Arc<crate::raft::LeaderContact>, Duration),
    rate_limiter: Arc<api::limits::RateLimiter>,
    http_addr: Option<std::net::SocketAddr>,
    tls: Arc<TlsReloader>,
    metrics: crate::metrics::Metrics,
}

impl Node {
    /// This node's Raft id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Raft handle (metrics, waits).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Whether this node may serve: what health reports, but for the
    /// certificate's expiry (`docs/CONSISTENCY.md`, honest node state).
    pub fn ready(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.readiness().is_ok())
    }

    /// The applied state.
    pub fn state(&self) -> &StateView {
        &self.state
    }

    /// Where the public API listens.
    pub fn api_addr(&self) -> std::net::SocketAddr {
        self.api_addr
    }

    /// The public API's per-caller rate limiter (its refusal counters).
    pub fn rate_limiter(&self) -> &api::limits::RateLimiter {
        &self.rate_limiter
    }

    /// This node's metrics: [`Metrics::encode`](crate::metrics::Metrics::encode)
    /// is the text `GET /metrics` serves.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Where the Raft listener listens.
    pub fn raft_addr(&self) -> std::net::SocketAddr {
        self.raft_addr
    }

    /// Where the HTTPS listener listens, if it is served.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http_addr
    }

    /// Re-reads the certificate, key and CA files and, if they changed and
    /// pass every check, uses them for every new handshake of every
    /// listener and of the Raft client (see [`TlsReloader`]). On error the
    /// previous material stays in use. What `SIGHUP` does.
    pub async fn reload_tls(&self) -> Result<ReloadOutcome, NodeError> {
        let tls = self.tls.clone();
        tokio::task::spawn_blocking(move || tls.reload(true))
            .await
            .map_err(|e| NodeError::Raft(format!("TLS reload task: {e}")))?
    }

    /// The certificate this node presents now.
    pub fn certificate(&self) -> crate::tls::CertInfo {
        self.tls.current()
    }

    /// Completes with the error message once the node has stopped itself
    /// on a fatal error (see [`run`]); never completes otherwise.
    pub async fn failed(&self) -> String {
        let mut rx = self.fatal.clone();
        let message = match rx.wait_for(|f| f.is_some()).await {
            Ok(f) => f.clone(),
            Err(_) => None,
        };
        match message {
            Some(m) => m,
            None => std::future::pending().await,
        }
    }

    /// Pre-votes and elections this node has started (see
    /// [`crate::raft::election`]).
    pub fn campaign_stats(&self) -> &crate::raft::CampaignStats {
        &self.campaign_stats
    }

    /// Starts an election the way the campaigner does once its pre-vote
    /// is won: only if this node has not heard a leader for the longest
    /// election timeout (a leader's read lease counts on it). Returns
    /// whether it started one.
    pub async fn elect_unless_led(&self) -> Result<bool, openraft::error::Fatal<NodeId>> {
        let (contact, max) = &self.election;
        crate::raft::elect_unless_led(&self.raft, contact, *max).await
    }

    /// Stops serving (in-flight calls finish), stops Raft, and releases the
    /// store, so the same data directory can be opened again.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let Node {
            id,
            raft,
            state,
            stop,
            tasks,
            audit_thread,
            shared,
            store_closed,
            ..
        } = self;
        let _ = stop.send(true);
        for t in tasks {
            let _ = t.await;
        }
        drop(shared);
        raft.shutdown()
            .await
            .map_err(|e| NodeError::Raft(format!("shutdown: {e}")))?;
        drop(raft);
        drop(state);
        // openraft's workers drop their store handles as they wind down;
        // wait (bounded) until the database is really closed.
        let mut closed = store_closed;
        let gone = async move { while closed.changed().await.is_ok() {} };
        if tokio::time::timeout(STORE_CLOSE_WAIT, gone).await.is_err() {
            return Err(NodeError::Raft("store still open after shutdown".into()));
        }
        if let Some(t) = audit_thread {
            // The writer ends when the last AuditLog handle is gone.
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        tracing::info!(node = id, "node stopped");
        Ok(())
    }
}

/// Runs a node until `shutdown` completes.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    run_with_reload(config, listeners, shutdown, futures_util::stream::pending()).await
}

/// [`run`], reloading the TLS files ([`Node::reload_tls`]) on every item of
/// `reload` (`SIGHUP` in `tessera serve`).
pub async fn run_with_reload(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    reload: impl futures_util::Stream<Item = ()>,
) -> Result<(), NodeError> {
    use futures_util::StreamExt as _;
    let node = start(config, listeners).await?;
    tokio::pin!(shutdown);
    let mut reload = std::pin::pin!(reload);
    let fatal = loop {
        tokio::select! {
            _ = &mut shutdown => break None,
            f = node.failed() => break Some(f),
            Some(()) = reload.next() => {
                tracing::info!("reload requested: re-reading the TLS files");
                match node.reload_tls().await {
                    Ok(ReloadOutcome::Unchanged) => {
                        tracing::info!("TLS files unchanged")
                    }
                    // Both logged by the reloader.
                    Ok(ReloadOutcome::Reloaded(_)) | Err(_) => {}
                }
            }
        }
    };
    match fatal {
        None => {
            tracing::info!("shutdown requested");
            node.shutdown().await
        }
        Some(message) => {
            // Release what can be released (bounded: the storage that failed
            // may not let go), then report the failure.
            match tokio::time::timeout(Duration::from_secs(5), node.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "after a fatal error, shutdown was not clean")
                }
                Err(_) => tracing::warn!("after a fatal error, shutdown did not finish in 5 s"),
            }
            Err(NodeError::Fatal(message))
        }
    }
}

fn raft_config(r: &RaftSettings) -> Result<Arc<openraft::Config>, NodeError> {
    let c = openraft::Config {
        cluster_name: "tessera".into(),
        heartbeat_interval: r.heartbeat_ms,
        election_timeout_min: r.election_timeout_ms,
        election_timeout_max: r.election_timeout_ms * 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_every),
        max_in_snapshot_log_to_keep: r.keep_logs,
        // Chunks stay well inside the transport's 64 MiB message limit.
        snapshot_max_chunk_size: 4 * 1024 * 1024,
        // openraft bounds each snapshot chunk by this; its 200 ms default is
        // too short for a 4 MiB chunk on a busy machine.
        install_snapshot_timeout: 10_000,
        // Elections start only after a won pre-vote (raft::election), so a
        // node returning from a partition never deposes a healthy leader.
        enable_elect: false,
        ..Default::default()
    };
    Ok(Arc::new(
        c.validate()
            .map_err(|e| NodeError::Config(format!("raft: {e}")))?,
    ))
}

/// Starts a node: opens its store, starts Raft and its transport, serves
/// the API, and (with `bootstrap`) initialises a one-node cluster on first
/// start. A node without `bootstrap` waits to be initialised
/// (`AdminService.InitCluster`) or added as a learner.
pub async fn start(config: Config, listeners: Listeners) -> Result<Node, NodeError> {
    config.validate().map_err(NodeError::Config)?;
    let keks = Arc::new(KekRing::new(
        load_kek(&config.kek)?,
        config.previous_kek.as_ref().map(load_kek).transpose()?,
    ));
    // Only ids, never a KEK, reach the log.
    tracing::info!(kek_ids = ?keks.ids(), "key-encryption keys loaded");
    // One reading of the TLS files for every listener (see tls_reload).
    let loaded = crate::tls::LoadedTls::load(&config.tls)?;
    let server_tls = crate::tls::ServerTls::from_loaded(&loaded, crate::tls::ServerKind::Mtls)?;
    let https_tls = match &listeners.http {
        Some(_) => Some(crate::tls::ServerTls::from_loaded(
            &loaded,
            crate::tls::ServerKind::Https,
        )?),
        None => None,
    };
    let api_addr = listeners.api.local_addr()?;
    let raft_addr = listeners.raft.local_addr()?;

    let dir = config.data_dir.clone();
    let feed = store::FeedSizes {
        window: config.watch_window,
        live_buffer: config.watch.live_buffer,
    };
    let store_faults = config.store_faults.clone();
    let (log_store, state_machine, state) =
        tokio::task::spawn_blocking(move || store::open_with(&dir, feed, store_faults))
            .await
            .map_err(|e| NodeError::Raft(format!("store open task: {e}")))??;
    // Fail at start, before Raft runs, if a KEK is missing: the error
    // names the KEK id this node needs (never a KEK).
    keks.check(&state.keys())?;
    // Earlier runs' larger token settings, for purge times and key grace;
    // read before Raft runs, so that a damaged record stops the start.
    let token = {
        let (dir, token, now) = (
            config.data_dir.clone(),
            config.token.clone(),
            config.clock.now(),
        );
        tokio::task::spawn_blocking(move || settings_history::remember(&dir, token, now))
            .await
            .map_err(|e| NodeError::Fatal(format!("settings history: {e}")))?
            .map_err(NodeError::Config)?
    };
    let store_closed = log_store.closed_signal();
    let last_log: crate::raft::LastLogId = log_store.last_log_id_reader();
    let info = NodeInfo {
        raft_addr: non_empty_or(&config.raft_advertise_addr, raft_addr),
        api_addr: non_empty_or(&config.advertise_addr, api_addr),
        incarnation: log_store.incarnation(),
    };
    let network = RaftNetwork::new(
        config.node_id,
        info.incarnation,
        config.tls.clone(),
        config.faults.clone(),
    )
    .map_err(|e| NodeError::Raft(format!("raft transport: {e}")))?;
    let trust_domain = network.trust_domain().to_string();
    let cert_expiry = Arc::new(crate::tls::CertExpiry::default());
    let tls_reloader = Arc::new(TlsReloader::new(
        &loaded,
        server_tls.clone(),
        https_tls.clone(),
        network.clone(),
        cert_expiry.clone(),
        config.tls_reload.clone(),
    ));
    drop(loaded);
    let raft = Raft::new(
        config.node_id,
        raft_config(&config.raft)?,
        network.clone(),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;

    let metrics = crate::metrics::Metrics::new(config.metrics.clone());
    let batches = metrics.clone();
    let proposer = crate::raft::Proposer::for_raft_observed(
        raft.clone(),
        Some(Arc::new(move |n| batches.proposer_batch(n))),
    );
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // The Raft listener first: peers may be waiting for this node.
    let contact = Arc::new(crate::raft::LeaderContact::default());
    let times = crate::raft::ElectionTimes {
        min: Duration::from_millis(config.raft.election_timeout_ms),
        max: Duration::from_millis(config.raft.election_timeout_ms * 2),
        tick: Duration::from_millis(config.raft.heartbeat_ms),
    };
    let (reads, reads_task) =
        crate::raft::ReadIndex::spawn(raft.clone(), network.clone(), stop_rx.clone());
    tasks.push(reads_task);
    // A quarter below the shortest election timeout; voters refuse
    // pre-votes for twice that after hearing from the leader.
    let read_lease = times.min * 3 / 4;
    // Failures met outside the Raft core (the audit log, a snapshot being
    // received) stop the node like the core's own (see `fail_stop`).
    let (failures, failed) = tokio::sync::mpsc::unbounded_channel();
    let raft_service = crate::raft::service::wrap(
        crate::raft::RaftService::new(raft.clone(), config.node_id, info.clone(), &trust_domain)
            .with_clock(config.clock.clone())
            .with_proposer(proposer.clone())
            .with_reads(reads.clone())
            .with_read_lease(read_lease, state.watch_revision())
            .with_election(contact.clone(), times, last_log.clone())
            .with_stop(stop_rx.clone())
            .with_failures(failures.clone(), config.data_dir.clone()),
    );
    let contact_for_node = contact.clone();
    let campaigner = crate::raft::Campaigner::new(
        raft.clone(),
        network.clone(),
        contact.clone(),
        times,
        last_log,
    );
    let campaign_stats = campaigner.stats();
    tasks.push(campaigner.spawn(stop_rx.clone()));
    let (raft_incoming, raft_accept) =
        crate::tls::tls_incoming_joined(listeners.raft, server_tls.clone());
    let raft_gate = crate::raft::MembersOnlyLayer::new(raft.clone(), &trust_domain);
    let raft_stop = wait_stop(stop_rx.clone());
    tasks.push(tokio::spawn(
        async move {
            let res = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                // Members send small headers; the API's bound.
                .http2_max_header_list_size(RAFT_MAX_HEADER_LIST_BYTES)
                // Non-members are refused before their bodies are read.
                .layer(raft_gate)
                .add_service(raft_service)
                .serve_with_incoming_shutdown(raft_incoming, raft_stop)
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "Raft server failed");
            }
            // The listener is closed once the accept loop has ended.
            let _ = raft_accept.await;
        }
        .instrument(tracing::info_span!("raft-server", node = config.node_id)),
    ));

    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    if config.bootstrap && !initialized {
        let members = BTreeMap::from([(config.node_id, info.clone())]);
        raft.initialize(members)
            .await
            .map_err(|e| NodeError::Raft(format!("initialize: {e}")))?;
        tracing::info!(node = config.node_id, "initialized a new one-node cluster");
    }
    let single_voter = (config.bootstrap && !initialized)
        || raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .eq([config.node_id]);
    if single_voter {
        // A one-node cluster is ready as soon as it leads itself; then the
        // first key and the policy exist before the first request.
        let led = raft
            .wait(Some(LEADER_WAIT))
            .current_leader(config.node_id, "this node leads its one-node cluster")
            .await
            .map_err(|e| NodeError::Raft(format!("waiting for leadership: {e}")))?;
        // Its whole log first: restored after a crash, it may have applied
        // less (see `leader_duties`), and "no key" would then be false.
        if let Some(last) = led.last_log_index {
            raft.wait(Some(LEADER_WAIT))
                .applied_index_at_least(Some(last), "this node applied its log")
                .await
                .map_err(|e| NodeError::Raft(format!("waiting for its log to apply: {e}")))?;
        }
        leader_duties::bootstrap(&config, &raft, &state, keks.current()).await?;
    }

    let (audit, audit_thread) = AuditLog::start(
        config.audit.clone(),
        config.audit_rotation,
        Some(failures.clone()),
    )?;
    let peers = Arc::new(NetPeers { network });
    let incarnation = info.incarnation;
    let read_rounds = reads.clone();
    let duty_reads = reads.clone();
    let shared = Arc::new(
        Shared::new(
            raft.clone(),
            proposer,
            peers,
            state.clone(),
            keks.clone(),
            token,
            config.read_wait_max,
            config.clock.clone(),
            audit,
        )
        .with_initial_policy(config.initial_policy.as_deref())
        .map_err(|e| NodeError::Config(format!("initial policy: {e}")))?
        .with_consensus(reads, contact, incarnation)
        .with_read_lease(read_lease)
        .with_contact_timeout(Duration::from_millis(config.raft.contact_timeout_ms))
        .with_catch_up_lag(config.raft.catch_up_lag)
        .with_key_settings(config.keys.clone())
        .with_cert_expiry(cert_expiry, config.tls_reload.expiry_margin)
        .with_metrics(metrics.clone()),
    );
    shared
        .key_ring()
        .map_err(|e| NodeError::Raft(format!("key ring: {e}")))?;

    let rate_limiter = Arc::new(api::limits::RateLimiter::new(config.limits.rate.clone()));
    metrics::register(
        &metrics,
        &raft,
        &state,
        config.clock.clone(),
        config.tls.cert.clone(),
        rate_limiter.clone(),
    );
    metrics::register_reads(&metrics, read_rounds);
    metrics::register_audit(&metrics, shared.audit_counts());
    tasks.push(tokio::spawn(
        metrics::follow_raft(raft.clone(), metrics.clone(), stop_rx.clone())
            .instrument(tracing::info_span!("metrics", node = config.node_id)),
    ));
    tasks.push(tokio::spawn(
        api::serve(
            shared.clone(),
            listeners.api,
            server_tls,
            config.watch.clone(),
            config.limits.clone(),
            rate_limiter.clone(),
            stop_rx.clone(),
        )
        .instrument(tracing::info_span!("api-server", node = config.node_id)),
    ));
    let mut http_addr = None;
    if let (Some(listener), Some(tls)) = (listeners.http, https_tls) {
        let bound = listener.local_addr()?;
        http_addr = Some(bound);
        let state = api::http::HttpState {
            shared: shared.clone(),
            settings: Arc::new(config.http.clone()),
            base_url: api::http::base_url(&config.http.advertise_addr, bound).into(),
            rate: rate_limiter.clone(),
        };
        tasks.push(tokio::spawn(
            api::http::serve(state, listener, tls, stop_rx.clone())
                .instrument(tracing::info_span!("https-server", node = config.node_id)),
        ));
    }
    tasks.push(tokio::spawn(
        tls_reloader
            .clone()
            .run(stop_rx.clone())
            .instrument(tracing::info_span!("tls-reload", node = config.node_id)),
    ));
    tasks.push(tokio::spawn(
        leader_duties::purge_loop(raft.clone(), state.clone(), config.clone(), stop_rx.clone())
            .instrument(tracing::info_span!("purge", node = config.node_id)),
    ));
    tasks.push(tokio::spawn(
        leader_duties::leader_duties(
            raft.clone(),
            state.clone(),
            config.clone(),
            keks.clone(),
            duty_reads,
            stop_rx.clone(),
        )
        .instrument(tracing::info_span!("leader-duties", node = config.node_id)),
    ));
    tasks.push(tokio::spawn(
        key_duties::run(shared.clone(), config.keys.check_interval, stop_rx.clone())
            .instrument(tracing::info_span!("key-duties", node = config.node_id)),
    ));
    let (fatal_tx, fatal) = watch::channel(None);
    tasks.push(tokio::spawn(
        fail_stop(
            raft.clone(),
            config.data_dir.clone(),
            stop.clone(),
            fatal_tx,
            stop_rx.clone(),
            failed,
        )
        .instrument(tracing::info_span!("fail-stop", node = config.node_id)),
    ));
    tracing::info!(
        node = config.node_id,
        api = %api_addr,
        raft = %raft_addr,
        http = ?http_addr,
        incarnation = %format!("{:016x}", info.incarnation),
        revision = state.revision(),
        "node serving"
    );
    Ok(Node {
        id: config.node_id,
        raft,
        state,
        api_addr,
        raft_addr,
        stop,
        tasks,
        audit_thread,
        shared: Some(shared),
        store_closed,
        fatal,
        campaign_stats,
        election: (contact_for_node, times.max),
        rate_limiter,
        http_addr,
        tls: tls_reloader,
        metrics,
    })
}

/// Fail-stop: when the Raft core stops on its own (a storage write or
/// fsync failed, or it panicked), or a write outside it fails (`failed`:
/// the audit log, a snapshot being received), this node stops serving at
/// once — its state is frozen, or its decisions would go unrecorded, and it
/// must not answer — and reports the error so that [`run`] returns it and
/// the process exits non-zero. A supervisor restarts it; it then recovers
/// from what is on disk.
async fn fail_stop(
    raft: Raft,
    data_dir: std::path::PathBuf,
    stop: watch::Sender<bool>,
    fatal: watch::Sender<Option<String>>,
    mut stopping: watch::Receiver<bool>,
    mut failed: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let mut metrics = raft.metrics();
    let error = loop {
        if let Err(e) = &metrics.borrow_and_update().running_state {
            if matches!(e, openraft::error::Fatal::Stopped) {
                return;
            }
            break format!(
                "storage or consensus failure under {}: {e}",
                data_dir.display()
            );
        }
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            changed = metrics.changed() => if changed.is_err() { return },
            Some(report) = failed.recv() => break report,
        }
    };
    if *stopping.borrow() {
        return;
    }
    let message = format!(
        "{error}; stopping this node (fail-stop): restart it once the cause is fixed, it recovers from what is on disk"
    );
    tracing::error!(error = %error, data_dir = %data_dir.display(), "fatal: stopping the node");
    let _ = fatal.send(Some(message));
    let _ = stop.send(true);
}

fn load_kek(source: &KekSource) -> Result<Kek, keys::KeyError> {
    match source {
        KekSource::File(p) => Kek::from_file(p),
        KekSource::Text(t) => Kek::from_text(t),
        KekSource::Generate(p) => Kek::load_or_generate(p),
    }
}

fn non_empty_or(configured: &str, bound: std::net::SocketAddr) -> String {
    if configured.is_empty() || configured.ends_with(":0") {
        bound.to_string()
    } else {
        configured.to_string()
    }
}

async fn wait_stop(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
