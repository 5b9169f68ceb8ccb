//! The public gRPC services (`tessera.v1`): `TokenService`, `KeyService`,
//! standard health and server reflection, served over mutual TLS.
//!
//! Each handler takes the caller identity from the client certificate,
//! asks the token rules and the policy, and writes through Raft. Errors of
//! every layer become statuses in one place, [`error`].

mod admin_service;
mod audit;
mod backup_stream;
pub mod consistency;
mod deadline_layer;
pub mod error;
mod health;
pub mod http;
mod keys_admin;
mod keys_service;
pub mod limits;
mod message_limit;
mod purge;
mod rate_layer;
mod reflection;
pub mod refusal;
pub mod rpc_metrics;
mod signals;
pub mod stream_limit;
mod token_service;
mod trace_layer;
pub mod validate;
mod watch_service;
mod watch_wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;

pub use admin_service::cluster_status;
pub use audit::{
    AuditCounts, AuditEvent, AuditLog, AuditOutput, AuditRotation, AuditSink, RotatingFile,
    MAX_AUDIT_FILES,
};
pub use consistency::{NotReady, READ_CONFIRM_BUDGET};
pub use error::{ApiError, LEADER_METADATA};
pub use keys_admin::{Jwks, KeySettings, Rotation};
pub use limits::{Http2Limits, Rate, RateLimits, RpcClass, ServerLimits, RETRY_AFTER_METADATA};
pub use message_limit::MessageLimitLayer;
pub use purge::horizon as purge_horizon;
pub use watch_service::{resumable, WatchSettings, RESUME_METADATA};

use health::{health_loop, lease_keeper, Lease, HEALTH_SERVICES};

use crate::clock::Clock;
use crate::keys::{KekRing, KeyRing};
use crate::pb;
use crate::policy::PolicyEngine;
use crate::raft::{Command, CommandResponse, NodeId, NodeInfo, Op, TypeConfig};
use crate::store::StateView;
use crate::token::{Claims, VerifyParams};

/// Health `Watch` and reflection streams get this fraction (1/N) of the
/// revocation subscribers' limits, in a pool of their own.
pub const PROBE_STREAM_SHARE: usize = 10;

/// The Raft handle type.
pub type Raft = openraft::Raft<TypeConfig>;

/// Largest request message the public services accept. Big enough that an
/// oversized token reaches the token rules (and gets their precise answer),
/// small enough to bound memory per call. Larger: `RESOURCE_EXHAUSTED`
/// ([`MessageLimitLayer`]). The limits on each field are in [`validate`].
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

/// Token lifetimes and limits.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `iss` of every token this cluster issues.
    pub issuer: String,
    /// Lifetime when the request names none, seconds.
    pub default_lifetime: u64,
    /// Upper bound on any lifetime, seconds.
    pub max_lifetime: u64,
    /// Maximum delegation depth (number of ancestors).
    pub max_depth: usize,
    /// Clock skew tolerated when checking `exp`, `nbf` and `iat`, seconds.
    pub leeway: u64,
    /// Largest difference between the clocks of any two nodes or verifiers
    /// that revocations stay correct under, seconds: every revocation's
    /// purge time is extended by it (docs/DESIGN-NOTES.md, "Clock-free
    /// cut-offs"). Subject and client cut-offs themselves compare
    /// revisions, not clocks.
    pub max_clock_skew: u64,
    /// Largest token accepted, bytes.
    pub max_token_len: usize,
    /// How many verified tokens to remember (0: verify every signature).
    pub verified_cache: usize,
    /// Larger values this node ran with before, still in force: filled in
    /// by the node from its data directory at start
    /// (`node::settings_history`), not an operator setting.
    pub previous: PreviousSettings,
}

/// Larger `max_lifetime`, `leeway` and `max_clock_skew` of an earlier run,
/// and until when tokens minted or accepted under them may still verify.
/// Zero everywhere when there are none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreviousSettings {
    /// Seconds.
    pub max_lifetime: u64,
    /// Seconds.
    pub leeway: u64,
    /// Seconds.
    pub max_clock_skew: u64,
    /// Unix seconds; the values apply before it.
    pub until: u64,
}

impl TokenSettings {
    /// `(max_lifetime, leeway, max_clock_skew)` that purge times and key
    /// grace must allow for at `now`: each the larger of the current value
    /// and the previous one while that is in force.
    pub fn bounds(&self, now: u64) -> (u64, u64, u64) {
        let p = &self.previous;
        if now < p.until {
            (
                self.max_lifetime.max(p.max_lifetime),
                self.leeway.max(p.leeway),
                self.max_clock_skew.max(p.max_clock_skew),
            )
        } else {
            (self.max_lifetime, self.leeway, self.max_clock_skew)
        }
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            issuer: "https://tessera.dev".into(),
            default_lifetime: 300,
            max_lifetime: 3600,
            max_depth: 5,
            leeway: 30,
            max_clock_skew: 30,
            max_token_len: 8 * 1024,
            verified_cache: 16 * 1024,
            previous: PreviousSettings::default(),
        }
    }
}

/// What the API needs from the other nodes: forwarding writes to the
/// leader and asking a node who it is. The node wires the Raft transport in;
/// the seam keeps this layer free of transport details.
#[tonic::async_trait]
pub trait Peers: Send + Sync + 'static {
    /// Sends a write to the leader and returns its result.
    async fn forward(
        &self,
        leader: NodeId,
        node: &NodeInfo,
        cmd: Command,
    ) -> Result<CommandResponse, ApiError>;
    /// Asks the node at a Raft address for its id, addresses and incarnation.
    async fn hello(&self, raft_addr: &str) -> Result<(NodeId, NodeInfo), ApiError>;
}

/// Longest a write may take before the caller is told its outcome is
/// unknown (it may still commit; revocations are idempotent, so retrying is
/// safe).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A leader that has not heard from a quorum for this long stops taking
/// writes and reports `NOT_SERVING`: it is probably cut off and will lose
/// its leadership as soon as it hears from the others. Not a read lease
/// (reads always confirm with a quorum): only how soon a cut-off leader
/// admits it. Six election timeouts, so that a busy machine (a thousand
/// streams on two cores) does not flap a healthy leader.
pub const LEADER_LEASE: Duration = Duration::from_secs(3);
// The node's own bound is `Shared::contact_timeout` (config `raft.contact_timeout`,
// this by default).

/// What every handler shares: Raft, the applied state, and the derived
/// key ring and policy engine, each cached by the state version it was
/// built from.
pub struct Shared {
    raft: Raft,
    proposer: crate::raft::Proposer,
    peers: Arc<dyn Peers>,
    state: StateView,
    keks: Arc<KekRing>,
    settings: TokenSettings,
    /// Signing-key rotation.
    keys: KeySettings,
    read_wait_max: Duration,
    clock: Arc<dyn Clock>,
    audit: AuditLog,
    // std locks: held for a pointer copy, never across an await.
    ring: RwLock<Option<Arc<KeyRing>>>,
    policy: RwLock<Option<Arc<PolicyEngine>>>,
    /// The policy this node was started with: it decides until the cluster
    /// has a replicated one (so that an operator may initialise a cluster).
    initial_policy: Option<Arc<PolicyEngine>>,
    verified: Mutex<VerifiedTokens>,
    /// When this node, as leader, last heard from a quorum. Derived from
    /// openraft's metrics as they arrive: a leader cut off from everyone
    /// gets no new metrics, so the age is measured here, not read there.
    lease: Mutex<Lease>,
    /// The batched read index behind linearizable reads (`None`: reads are
    /// answered locally; only unit tests without a cluster).
    reads: Option<crate::raft::ReadIndex>,
    /// How long after a confirmed read-index round the leader answers
    /// linearizable reads from its own state (`None`: always a round).
    read_lease: Option<Duration>,
    /// When this node last heard from its leader.
    contact: Option<Arc<crate::raft::LeaderContact>>,
    /// This node's data incarnation (0: unknown).
    incarnation: u64,
    /// How long a leader may go without its quorum, and a follower without
    /// its leader, before the node stops serving ([`LEADER_LEASE`] unless
    /// configured).
    contact_timeout: Duration,
    /// How many entries a follower's applied index may trail the leader's
    /// commit it last heard of while it still serves
    /// ([`MAX_CATCH_UP_LAG`] unless configured).
    catch_up_lag: u64,
    /// This node's certificate expiry, and how long before it health turns
    /// `NOT_SERVING` (see [`Shared::health`]).
    cert_expiry: Option<(Arc<crate::tls::CertExpiry>, Duration)>,
    /// Where handlers record metrics (the node's registry).
    metrics: crate::metrics::Metrics,
}

/// Tokens whose signature this node has verified, with their claims, for
/// one key-ring version. Resource servers present the same token many
/// times; the signature check (about 35 µs for Ed25519) is done once, the
/// claim checks (time, issuer) and the revocation check every time.
/// Bounded: cleared when full or when the key ring changes.
#[derive(Default)]
struct VerifiedTokens {
    key_version: u64,
    claims: HashMap<String, Arc<Claims>>,
}

impl Shared {
    /// Bundles the handler state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raft: Raft,
        proposer: crate::raft::Proposer,
        peers: Arc<dyn Peers>,
        state: StateView,
        keks: Arc<KekRing>,
        settings: TokenSettings,
        read_wait_max: Duration,
        clock: Arc<dyn Clock>,
        audit: AuditLog,
    ) -> Self {
        Self {
            raft,
            proposer,
            peers,
            state,
            keks,
            settings,
            keys: KeySettings::default(),
            read_wait_max,
            clock,
            audit,
            ring: RwLock::new(None),
            policy: RwLock::new(None),
            initial_policy: None,
            verified: Mutex::new(VerifiedTokens::default()),
            lease: Mutex::new(Lease::default()),
            reads: None,
            read_lease: None,
            contact: None,
            incarnation: 0,
            contact_timeout: LEADER_LEASE,
            catch_up_lag: MAX_CATCH_UP_LAG,
            cert_expiry: None,
            metrics: crate::metrics::Metrics::default(),
        }
    }

    /// Makes health report `NOT_SERVING` once this node's certificate
    /// (whose expiry `expiry` tracks across reloads) expires within
    /// `margin`.
    pub fn with_cert_expiry(
        mut self,
        expiry: Arc<crate::tls::CertExpiry>,
        margin: Duration,
    ) -> Self {
        self.cert_expiry = Some((expiry, margin));
        self
    }

    /// The token settings (issuer, lifetimes).
    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Records metrics into `metrics` (the node's registry) instead of a
    /// private one.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The metrics handlers record into.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Sets how long a leader may go without its quorum, and a follower
    /// without its leader, before the node stops serving.
    pub fn with_contact_timeout(mut self, timeout: Duration) -> Self {
        self.contact_timeout = timeout;
        self
    }

    /// Sets how many entries a follower's applied index may trail the
    /// leader's commit while it still serves.
    pub fn with_catch_up_lag(mut self, entries: u64) -> Self {
        self.catch_up_lag = entries;
        self
    }

    /// Makes reads linearizable through `reads`, judges a follower's leader
    /// by `contact`, and refuses to serve when the membership records
    /// another data incarnation than `incarnation` for this node.
    pub fn with_consensus(
        mut self,
        reads: crate::raft::ReadIndex,
        contact: Arc<crate::raft::LeaderContact>,
        incarnation: u64,
    ) -> Self {
        self.reads = Some(reads);
        self.contact = Some(contact);
        self.incarnation = incarnation;
        self
    }

    /// Lets the leader answer linearizable reads without a round for
    /// `lease` after a confirmed one (see `crate::raft::read_index`); it
    /// must be shorter than the shortest election timeout.
    pub fn with_read_lease(mut self, lease: Duration) -> Self {
        self.read_lease = Some(lease);
        self
    }

    /// Sets the policy that decides while the cluster has none replicated.
    pub fn with_initial_policy(mut self, text: Option<&str>) -> Result<Self, ApiError> {
        self.initial_policy = match text {
            Some(t) => Some(Arc::new(PolicyEngine::new(t, 0)?)),
            None => None,
        };
        Ok(self)
    }

    /// The key ring for the current key version, rebuilt when keys change.
    pub fn key_ring(&self) -> Result<Arc<KeyRing>, ApiError> {
        let version = self.state.keys_version();
        if let Some(r) = self.ring.read().map_err(poisoned)?.as_ref() {
            if r.version() == version {
                return Ok(r.clone());
            }
        }
        let ring = Arc::new(KeyRing::from_records(
            version,
            &self.state.keys(),
            &self.keks,
        )?);
        *self.ring.write().map_err(poisoned)? = Some(ring.clone());
        Ok(ring)
    }

    /// The policy engine for the current policy version, rebuilt when the
    /// policy changes. `None` when no policy is installed (deny everything).
    pub fn policy(&self) -> Result<Option<Arc<PolicyEngine>>, ApiError> {
        let version = self.state.policy_version();
        if let Some(p) = self.policy.read().map_err(poisoned)?.as_ref() {
            if p.version() == version {
                return Ok(Some(p.clone()));
            }
        }
        let Some((version, text)) = self.state.policy() else {
            return Ok(self.initial_policy.clone());
        };
        // Replicated policies were validated before they were proposed; a
        // failure here means the schema changed under a stored policy.
        let engine = Arc::new(PolicyEngine::new(&text, version).map_err(|e| {
            ApiError::Internal(format!(
                "stored policy version {version} no longer validates: {e}"
            ))
        })?);
        *self.policy.write().map_err(poisoned)? = Some(engine.clone());
        Ok(Some(engine))
    }

    /// The policy to decide `ev`'s request with. Without one (none is
    /// installed, or the stored one no longer builds), the refusal is
    /// audited as a copy of `ev` (`deny`, or `error` for a broken policy)
    /// and returned.
    pub(crate) async fn policy_for(&self, ev: &AuditEvent) -> Result<Arc<PolicyEngine>, ApiError> {
        let e = match self.policy() {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => ApiError::PermissionDenied("no policy is installed".into()),
            Err(e) => e,
        };
        let mut ev = ev.clone();
        ev.decision = if matches!(e, ApiError::PermissionDenied(_)) {
            "deny"
        } else {
            "error"
        };
        ev.reason = Some(match ev.reason.take() {
            Some(r) => format!("{r}: {e}"),
            None => e.to_string(),
        });
        self.record(ev).await;
        Err(e)
    }

    /// Verifies a token (RFC 8725), reusing an earlier signature check of
    /// the same token under the same key ring.
    pub fn verify_token(&self, token: &str, now: u64) -> Result<Arc<Claims>, ApiError> {
        let ring = self.key_ring()?;
        let params = self.verify_params(now);
        // Oversized input never reaches the hash map (hashing is linear).
        let capacity = self.settings.verified_cache;
        if capacity == 0 {
            return Ok(Arc::new(crate::token::verify(
                token,
                ring.verifiers(),
                &params,
            )?));
        }
        if token.len() <= params.max_len {
            let hit = {
                let cache = self.verified.lock().map_err(poisoned)?;
                (cache.key_version == ring.version())
                    .then(|| cache.claims.get(token).cloned())
                    .flatten()
            };
            if let Some(claims) = hit {
                crate::token::check_claims(&claims, &params)?;
                return Ok(claims);
            }
        }
        let claims = Arc::new(crate::token::verify(token, ring.verifiers(), &params)?);
        let mut cache = self.verified.lock().map_err(poisoned)?;
        if cache.key_version != ring.version() || cache.claims.len() >= capacity {
            cache.claims.clear();
            cache.key_version = ring.version();
        }
        cache.claims.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    fn verify_params(&self, now: u64) -> VerifyParams {
        VerifyParams {
            issuer: self.settings.issuer.clone(),
            audience: None,
            now,
            leeway: self.settings.leeway,
            max_len: self.settings.max_token_len,
            max_chain: self.settings.max_depth,
        }
    }

    /// Proposes a command and waits until it is applied: on the leader
    /// directly, from a follower by forwarding it to the leader. Bounded by
    /// [`WRITE_TIMEOUT`].
    async fn write(&self, op: Op) -> Result<CommandResponse, ApiError> {
        let cmd = Command {
            at: self.clock.now(),
            op,
        };
        let attempt = async {
            self.check_lease()?;
            // A follower that knows the leader forwards at once: its own
            // proposer and Raft core would only answer `ForwardToLeader`,
            // at the price of a queue and three task hops per write.
            if let Some((id, node)) = self.other_leader() {
                return self.forward(id, &node, cmd).await;
            }
            match self.proposer.propose(cmd.clone()).await {
                Ok(r) => {
                    if let Some(t) = crate::trace::current() {
                        tracing::debug!(
                            target: crate::trace::LOG_TARGET,
                            trace_id = %t.trace_id(),
                            revision = r.revision,
                            "write committed on this leader"
                        );
                    }
                    Ok(r)
                }
                Err(openraft::error::RaftError::APIError(
                    openraft::error::ClientWriteError::ForwardToLeader(f),
                )) => match (f.leader_id, f.leader_node) {
                    (Some(id), Some(node)) => self.forward(id, &node, cmd).await,
                    _ => Err(ApiError::Unavailable {
                        reason: "no leader is known (no quorum?)".into(),
                        leader: None,
                    }),
                },
                Err(e) => Err(e.into()),
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Unavailable {
                reason: format!(
                    "write not confirmed within {WRITE_TIMEOUT:?}; it may still be applied, and retrying is safe"
                ),
                leader: self.leader_hint(),
            }),
        }
    }

    /// Sends a write to the leader `id` and waits for its answer.
    async fn forward(
        &self,
        id: NodeId,
        node: &NodeInfo,
        cmd: Command,
    ) -> Result<CommandResponse, ApiError> {
        let r = self.peers.forward(id, node, cmd).await;
        if let (Ok(r), Some(t)) = (&r, crate::trace::current()) {
            tracing::debug!(
                target: crate::trace::LOG_TARGET,
                trace_id = %t.trace_id(),
                node = self.raft.metrics().borrow().id,
                leader = id,
                revision = r.revision,
                "write forwarded to the leader and committed"
            );
        }
        r
    }

    /// The leader and its node record when this node knows one and it is
    /// another node; `None` on the leader or while no leader is known.
    fn other_leader(&self) -> Option<(NodeId, NodeInfo)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader.filter(|l| *l != m.id)?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// The leader's id and API address, if known.
    fn leader_hint(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node.api_addr))
    }

    /// The audit log's counts of lost records and failed writes (the
    /// first failed write stops the node), for the metrics exporter.
    pub fn audit_counts(&self) -> audit::AuditCounts {
        self.audit.counts()
    }

    /// Health: `SERVING` only while [`Shared::health`] holds.
    pub fn serving(&self) -> bool {
        self.health().is_ok()
    }

    /// Refuses to act as leader without a recent quorum acknowledgement.
    fn check_lease(&self) -> Result<(), ApiError> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(m.id) && !self.lease_holds(&m) {
            return Err(ApiError::Unavailable {
                reason: "this leader has lost contact with a quorum".into(),
                leader: None,
            });
        }
        Ok(())
    }

    /// Membership changes run on the leader; elsewhere `UNAVAILABLE` with
    /// the leader's address.
    fn ensure_leader(&self) -> Result<(), ApiError> {
        self.ensure_leader_for("a membership change")
    }
}

fn poisoned<T>(_: T) -> ApiError {
    ApiError::Internal("lock poisoned".into())
}

/// Serves the public API on `listener` until `shutdown` completes, with the
/// connection caps and HTTP/2 settings of `limits` and the per-caller rate
/// limits of `rate` (see [`limits`]).
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: impl Into<crate::tls::ServerTls>,
    watch: WatchSettings,
    limits: ServerLimits,
    rate: Arc<limits::RateLimiter>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use pb::admin_service_server::AdminServiceServer;
    use pb::key_service_server::KeyServiceServer;
    use pb::token_service_server::TokenServiceServer;

    let (reporter, health) = tonic_health::server::health_reporter();
    // tonic-health starts out SERVING; nothing is served before the node
    // has judged its own state.
    for s in HEALTH_SERVICES {
        reporter
            .set_service_status(s, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let health_task = tokio::spawn(health_loop(shared.clone(), reporter.clone()));
    let lease_task = tokio::spawn(lease_keeper(shared.clone()));

    let tokens = TokenServiceServer::new(token_service::TokenApi::new(shared.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let keys = KeyServiceServer::new(keys_service::KeyApi::new(shared.clone()));
    let admin = AdminServiceServer::new(admin_service::AdminApi::new(shared.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    // `TESSERA_WATCH_SHARED_ENCODING=0`: a same-binary A/B switch for
    // the fan-out (docs/BENCHMARKS.md).
    let mut watch = watch;
    watch.shared_encoding &=
        std::env::var("TESSERA_WATCH_SHARED_ENCODING").map_or(true, |v| v != "0");
    let streams = stream_limit::StreamLimits::new(watch.max_subscribers, watch.max_per_identity);
    // Health and reflection streams have a pool of their own, a tenth of
    // the subscribers': they can never crowd out revocation subscribers.
    let probe_streams = stream_limit::StreamLimits::new(
        (watch.max_subscribers / PROBE_STREAM_SHARE).max(1),
        (watch.max_per_identity / PROBE_STREAM_SHARE).max(1),
    );
    let watcher = watch_wire::WatchServer::new(watch_service::WatchApi::new(
        shared.clone(),
        watch,
        streams.clone(),
        stop.clone(),
    ));
    let mut accept = limits.accept.clone();
    // One revocation event goes to every subscriber's stream at once:
    // gathered writes send those of one connection together (see
    // `AcceptOptions::gather_writes`). `TESSERA_GATHER_WRITES=0` turns
    // them off, for same-binary A/B measurements (docs/BENCHMARKS.md).
    accept.gather_writes = std::env::var("TESSERA_GATHER_WRITES").map_or(true, |v| v != "0");
    let (incoming, accept_loop) = crate::tls::tls_incoming_joined_with(listener, tls, accept);
    shared
        .metrics
        .declare_rate_limit_classes(limits::RpcClass::ALL.map(limits::RpcClass::name));
    let refusals = shared.clone();
    let rate =
        limits::RateLimitLayer::new(rate).with_refusal_hook(Arc::new(move |caller, class| {
            refusals.metrics.rate_limited(class.name());
            if let Some(a) = refusals.refused_early(caller) {
                // Rare (once per window per caller): the audit write must not
                // hold up the refusal.
                let (shared, caller) = (refusals.clone(), caller.to_owned());
                tokio::spawn(async move { shared.record_anomaly(&caller, a).await });
            }
        }));
    let rpc_metrics = rpc_metrics::RpcMetricsLayer::new(shared.metrics.clone());
    let node_id = shared.raft.metrics().borrow().id;
    let trace = trace_layer::TraceLayer::new(node_id, shared.state.clone());
    let mut stop_rx = stop;
    let mut reporter = reporter;
    let shutdown = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
        // Health `Watch` streams end only when their status is dropped,
        // and a graceful shutdown waits for every stream: say NOT_SERVING
        // to the watchers (load balancers drain), then drop the statuses.
        health_task.abort();
        let _ = health_task.await;
        for s in HEALTH_SERVICES {
            reporter
                .set_service_status(s, tonic_health::ServingStatus::NotServing)
                .await;
            reporter.clear_service_status(s).await;
        }
    };
    let result = tonic::transport::Server::builder()
        // Outermost: counts the refusals of the layers below as well.
        .layer(rpc_metrics)
        .layer(MessageLimitLayer::new(MAX_REQUEST_BYTES))
        .concurrency_limit_per_connection(1024)
        .tcp_nodelay(true)
        .max_concurrent_streams(limits.http2.max_concurrent_streams)
        .http2_max_header_list_size(limits.http2.max_header_list_size)
        .http2_keepalive_interval(Some(limits.http2.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2.keepalive_timeout))
        // Idle connections are not kept forever (see `Http2Limits`).
        .max_connection_age(limits.http2.max_connection_age)
        .max_connection_age_grace(limits.http2.max_connection_age_grace)
        .layer(trace)
        .layer(rate)
        .layer(stream_limit::StreamLimitLayer::new(probe_streams))
        // The caller's deadline, capped at 30 s; `DEADLINE_EXCEEDED` when
        // it passes (tonic's own timeout answers `CANCELLED`).
        .layer(deadline_layer::DeadlineLayer::new(Duration::from_secs(30)))
        .add_service(health)
        .add_optional_service(reflection::v1())
        .add_optional_service(reflection::v1alpha())
        .add_service(tokens)
        .add_service(keys)
        .add_service(admin)
        .add_service(watcher)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    lease_task.abort();
    if let Err(e) = result {
        tracing::error!(error = %e, "API server failed");
    }
    // The server dropped the stream; the listener is closed once the accept
    // loop has noticed.
    let _ = accept_loop.await;
}

/// Largest gap between a node's log and what it has applied while it still
/// reports `SERVING`.
pub const MAX_APPLY_LAG: u64 = 1_000;

/// Default for how many entries a follower's applied index may trail the
/// leader's commit index it last heard of while it still reports
/// `SERVING` (config `raft.catch_up_lag`).
pub const MAX_CATCH_UP_LAG: u64 = 1_000;
