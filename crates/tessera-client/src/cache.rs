//! [`RevocationCache`]: a local copy of the cluster's active revocations,
//! kept current by the `WatchRevocations` stream, so that a resource server
//! can apply the revocation rules without a network call per request.
//!
//! One background task owns the subscription. It subscribes with
//! `from_revision` = the last revision it applied (0 at first, which asks
//! for a snapshot) and `coalesce` set (a node may then send several events
//! in one `revoked_batch` message; a node that predates the flag sends one
//! `revoked` message per event, and both are applied alike, event by
//! event), applies what the stream sends, and when the stream ends
//! for any reason (`ABORTED` with `x-tessera-resume-from`, `UNAVAILABLE`,
//! a reset connection, a node that went silent) subscribes again, from its
//! own last revision, on the next endpoint in turn, after a short backoff
//! that grows while attempts fail and resets once a stream delivers.
//!
//! The rules it keeps, whatever the node sends:
//!
//! - A snapshot replaces the whole set at its `snapshot_end` marker and not
//!   before: until then (and if the stream breaks half-way) the old set keeps
//!   serving. A snapshot older than what the cache has is ignored.
//! - An event at or below the cache's revision is ignored: no duplicate, and
//!   never back in time, also after resuming on a node that is behind.
//! - Entries whose `until` has passed (on the injected [`Clock`]) are
//!   forgotten: no token they could match is still valid.
//! - Nothing unreadable passes for nothing: a revocation of a kind this
//!   client does not know (a newer server's), or a message of an unknown
//!   kind, above the cache's revision is not skipped. The cache records its
//!   revision ([`RevocationCache::unreadable_revision`]), refuses to vouch
//!   for any token (staleness `Duration::MAX`) until a complete snapshot at
//!   or above it replaces the set, and subscribes again at the slowest
//!   backoff.
//! - Heartbeats are not applied as a revision: a node's applied revision may
//!   run ahead of the events it has queued for this stream, so they only
//!   tell how fresh the cache is ([`RevocationCache::staleness`]) and how far
//!   the node is ([`CacheStatus::node_revision`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tracing::Instrument as _;

use super::conn::{endpoint, DEFAULT_CONNECT_TIMEOUT};
use super::error::ClientError;
use crate::TlsFiles;
use tessera_proto as pb;
use tessera_token::clock::{Clock, SystemClock};
use tessera_token::Claims;

#[path = "cache_rules.rs"]
mod rules;
use rules::{CacheState, ProtocolError, Session, Step};
#[cfg(test)]
use rules::{Cutoff, Entries};

/// How often expired entries are forgotten while a stream is open.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// Settings of a [`RevocationCache`]. Build with [`CacheConfig::new`] and
/// adjust the public fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct CacheConfig {
    /// API addresses of the cluster's nodes (`host:port`); subscriptions
    /// go to them in turn.
    pub endpoints: Vec<String>,
    /// The resource server's own TLS identity and the cluster CA.
    pub tls: TlsFiles,
    /// Server name to check in the nodes' certificates; `None`: each
    /// endpoint's host (a DNS name or an IP address).
    pub server_name: Option<String>,
    /// Wall clock for forgetting expired entries.
    pub clock: Arc<dyn Clock>,
    /// A stream that delivers nothing (not even a heartbeat) for this long
    /// is considered dead and replaced. Keep it a few heartbeat intervals.
    pub idle_timeout: Duration,
    /// First wait before subscribing again after a failure.
    pub backoff_min: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Longest TCP + TLS connection set-up.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls)
            .field("server_name", &self.server_name)
            .field("idle_timeout", &self.idle_timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl CacheConfig {
    /// Settings with the defaults: system clock, 10 s idle timeout (nodes
    /// send a heartbeat every second), backoff
    /// from 50 ms to 2 s, 5 s connect timeout.
    pub fn new(endpoints: Vec<String>, tls: TlsFiles) -> Self {
        Self {
            endpoints,
            tls,
            server_name: None,
            clock: Arc::new(SystemClock),
            idle_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// What a [`RevocationCache`] knows about its subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStatus {
    /// The revision the cache has applied: every revocation up to it.
    pub revision: u64,
    /// The subscribed node's applied revision, from its last heartbeat.
    pub node_revision: u64,
    /// The node currently streaming, if any.
    pub connected_to: Option<String>,
    /// Whether the node's last heartbeat said it knew a leader.
    pub leader_known: bool,
    /// Time since the last message of any kind, if there was one.
    pub last_message_age: Option<Duration>,
    /// Number of entries (jtis, subjects and clients).
    pub entries: usize,
    /// How many times the cache has subscribed (1 after the first).
    pub subscriptions: u64,
    /// Why the last subscription ended or failed, if one did (for
    /// diagnostics: a `PERMISSION_DENIED` here means the identity may not
    /// watch).
    pub last_error: Option<String>,
    /// See [`RevocationCache::unreadable_revision`].
    pub unreadable_revision: Option<u64>,
}

/// What waiters on the cache watch.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    revision: u64,
    /// A complete set has been applied.
    synced: bool,
    closed: bool,
}

#[derive(Debug, Default)]
struct Link {
    connected_to: Option<String>,
    leader_known: bool,
    node_revision: u64,
    last_message: Option<Instant>,
    /// Last event, snapshot, or heartbeat from a node that knew a leader
    /// and had applied at least the cache's revision.
    last_fresh: Option<Instant>,
    subscriptions: u64,
    last_error: Option<String>,
}

/// State shared by the handles and the background task.
struct Shared {
    state: RwLock<CacheState>,
    link: Mutex<Link>,
    progress: watch::Sender<Progress>,
    clock: Arc<dyn Clock>,
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CacheState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn apply(&self, session: &mut Session, ev: pb::WatchEvent) -> Result<(), ProtocolError> {
        session.now = self.clock.now();
        let step = {
            let mut st = self.write();
            let before = st.revision;
            match session.step(&mut st, ev) {
                Ok(step) => step,
                Err(e) => {
                    // A batch may have applied events before the one that
                    // broke it: their waiters are woken all the same.
                    let after = st.revision;
                    drop(st);
                    if after > before {
                        self.progress.send_modify(|p| {
                            p.revision = after;
                            p.synced = true;
                        });
                    }
                    return Err(e);
                }
            }
        };
        let now = Instant::now();
        let mut link = self.link();
        link.last_message = Some(now);
        match step {
            Step::Nothing => {}
            Step::Applied(revision) | Step::Replaced(revision) => {
                link.last_fresh = Some(now);
                drop(link);
                if let Step::Replaced(_) = step {
                    tracing::debug!(revision, "snapshot applied");
                }
                self.progress.send_modify(|p| {
                    p.revision = revision;
                    p.synced = true;
                });
            }
            Step::Heartbeat {
                revision,
                leader_known,
                caught_up,
            } => {
                link.node_revision = revision;
                link.leader_known = leader_known;
                if leader_known && caught_up {
                    link.last_fresh = Some(now);
                }
            }
        }
        Ok(())
    }

    fn purge(&self) {
        let now = self.clock.now();
        let n = self.write().entries.purge(now);
        if n > 0 {
            tracing::debug!(forgotten = n, "expired revocations forgotten");
        }
    }

    fn connected(&self, addr: &str) {
        let mut link = self.link();
        link.connected_to = Some(addr.to_string());
        link.subscriptions += 1;
    }

    fn disconnected(&self, why: Option<String>) {
        let mut link = self.link();
        link.connected_to = None;
        link.leader_known = false;
        if why.is_some() {
            link.last_error = why;
        }
    }
}

/// Ends the background task when the last handle goes away.
struct Owner {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// A live, local copy of the cluster's revocations. See the [module
/// documentation](self) for the rules it keeps.
///
/// Cheap to clone: clones share the copy and its one background task, which
/// ends when the last clone is dropped or on [`RevocationCache::shutdown`].
///
/// ```no_run
/// # async fn demo() -> Result<(), tessera_client::ClientError> {
/// use std::time::Duration;
/// use tessera_client::{CacheConfig, RevocationCache};
/// use tessera_client::TlsFiles;
///
/// let tls = TlsFiles {
///     ca: "certs/ca.pem".into(),
///     cert: "certs/ledger.pem".into(),
///     key: "certs/ledger.key".into(),
/// };
/// let endpoints = vec!["127.0.0.1:7443".into(), "127.0.0.1:7444".into()];
/// let cache = RevocationCache::start(CacheConfig::new(endpoints, tls))?;
/// // Read-your-writes after a `Revoke` that answered `revision`:
/// # let revision = 1;
/// cache.wait_for_revision(revision, Duration::from_secs(5)).await?;
/// // Per request, with the verified token's chain + jti, sub, client_id, iat.
/// // "Not revoked" is only worth as much as the set is fresh (`Verifier`
/// // does all of this for you):
/// if cache.staleness() > Duration::from_secs(30) {
///     // refuse: the set may lack revocations (stream down, not synced, or
///     // holding a revocation kind newer than this client)
/// } else if cache.is_revoked(&["root-jti", "the-jti"], "spiffe://tessera.dev/svc/frontend",
///     "spiffe://tessera.dev/svc/orders", 1_795_000_000, None) {
///     // refuse
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RevocationCache {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for RevocationCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationCache")
            .field("status", &self.status())
            .finish()
    }
}

/// What the background task needs besides the shared state.
struct Runner {
    shared: Arc<Shared>,
    targets: Vec<(String, Endpoint)>,
    idle_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl RevocationCache {
    /// Starts the background subscription and returns at once; the cache
    /// answers from an empty set (and [`staleness`](Self::staleness) is
    /// `Duration::MAX`) until the first snapshot is in.
    ///
    /// Must be called inside a Tokio runtime. Fails if no endpoint is given,
    /// a TLS file cannot be read or an address is invalid.
    pub fn start(config: CacheConfig) -> Result<Self, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        if config.backoff_min.is_zero() || config.backoff_max < config.backoff_min {
            return Err(ClientError::InvalidConfig(
                "backoff_min must be positive and at most backoff_max",
            ));
        }
        if config.idle_timeout.is_zero() {
            return Err(ClientError::InvalidConfig("idle_timeout must be positive"));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClientError::InvalidConfig("RevocationCache::start needs a Tokio runtime")
        })?;
        let targets = config
            .endpoints
            .iter()
            .map(|addr| {
                let ep = endpoint(addr, &config.tls, config.server_name.as_deref())?
                    .connect_timeout(config.connect_timeout);
                Ok((addr.clone(), ep))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        let (progress, _) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            state: RwLock::new(CacheState::default()),
            link: Mutex::new(Link::default()),
            progress,
            clock: config.clock,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let runner = Runner {
            shared: shared.clone(),
            targets,
            idle_timeout: config.idle_timeout,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
        };
        let span = tracing::info_span!("revocation_cache");
        let task = runtime.spawn(runner.run(shutdown_rx).instrument(span));
        Ok(Self {
            owner: Arc::new(Owner {
                shared,
                shutdown,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// Whether a token with these `jtis` (its own and its ancestors', see
    /// [`Claims::chain`]), `subject`, `client`, `iat` and minting revision
    /// `rev` (its `tsr_rev` claim, [`Claims::rev`]) is revoked, by the
    /// server's rules: any jti revoked, or the subject's or client's cut-off
    /// applied at a revision above `rev` (for a token without `rev`, or a
    /// cut-off from a server that did not send its revision: a cut-off time
    /// at or after `iat`). See [`tessera_token::cutoff_revokes`].
    ///
    /// It checks exactly the one `client` given. A token exchanged from
    /// other clients' tokens is also revoked by their cut-offs (the clients
    /// in its `act` and `tsr_clients`, [`Claims::clients`]): for a token,
    /// call [`is_token_revoked`](Self::is_token_revoked), which checks them
    /// all, as the server and [`Verifier`](crate::Verifier) do.
    ///
    /// It answers from the set the cache holds: `false` means "not in this
    /// set". How far that set can be trusted is
    /// [`staleness`](Self::staleness), which is `Duration::MAX` before the
    /// first snapshot and while a revision is
    /// [unreadable](Self::unreadable_revision); check it too, as
    /// [`Verifier`](crate::Verifier) does.
    pub fn is_revoked(
        &self,
        jtis: &[&str],
        subject: &str,
        client: &str,
        iat: u64,
        rev: Option<u64>,
    ) -> bool {
        self.shared()
            .read()
            .entries
            .is_revoked(jtis, subject, &[client], iat, rev)
    }

    /// [`is_revoked`](Self::is_revoked) for verified claims: the chain and
    /// the token's own jti, its `sub`, its `client_id` and its ancestors'
    /// (`tsr_clients`: a cut-off of a client reaches the tokens delegated
    /// from its tokens), `iat` and `tsr_rev`. The same caveat: check
    /// [`staleness`](Self::staleness) too.
    pub fn is_token_revoked(&self, claims: &Claims) -> bool {
        matches!(self.token_revoked_checked(claims), Ok(true))
    }

    /// [`is_token_revoked`](Self::is_token_revoked) and the
    /// [unreadable revision](Self::unreadable_revision), read together: a
    /// revocation recorded unreadable after an earlier check cannot slip
    /// between the two. `Ok(true)` (revoked) is certain whatever else the
    /// set lacks, so it comes first; `Err(revision)`: the set cannot say
    /// "not revoked".
    pub(crate) fn token_revoked_checked(&self, claims: &Claims) -> Result<bool, u64> {
        let mut jtis: Vec<&str> = claims.chain.iter().map(String::as_str).collect();
        jtis.push(&claims.jti);
        let st = self.shared().read();
        let revoked = st.entries.is_revoked(
            &jtis,
            &claims.sub,
            &claims.clients(),
            claims.iat,
            claims.rev,
        );
        match st.unreadable {
            Some(revision) if !revoked => Err(revision),
            _ => Ok(revoked),
        }
    }

    /// Whether the cache has applied a complete snapshot at least once:
    /// before that it cannot say that any token is not revoked.
    pub fn is_synced(&self) -> bool {
        self.shared().read().synced
    }

    /// How many snapshots have replaced a set the cache had already
    /// synced (the first sync does not count). A snapshot replaces the
    /// whole set, for example after the cluster was restored from a
    /// backup, whose revocations and signing keys may differ from what came
    /// before; [`Verifier`](crate::Verifier) fetches the JWKS again
    /// whenever this moves (and after the first sync, if it fetched keys
    /// before it), so it never checks tokens against keys older than the
    /// revocations.
    pub fn snapshots_applied(&self) -> u64 {
        self.shared().read().snapshots
    }

    /// How many complete sets the cache has taken: the first sync, then
    /// each [replacing snapshot](Self::snapshots_applied), read together.
    /// What [`Verifier`](crate::Verifier) dates its keys by: keys fetched
    /// before the first sync may predate a restore that the first snapshot
    /// reflects, just as keys fetched before a replacing snapshot may.
    pub(crate) fn sets_applied(&self) -> u64 {
        let st = self.shared().read();
        st.snapshots.saturating_add(u64::from(st.synced))
    }

    /// The revision of a message this client could not read, while that
    /// blocks the cache: a revocation of a kind newer than this client, or
    /// a message of a kind it does not know, above the cache's revision.
    /// Skipping it could let tokens it revokes pass, so until a complete
    /// snapshot at or above that revision (without such entries) replaces
    /// the set, or the entry's `until` passes and its event is applied,
    /// [`staleness`](Self::staleness) is `Duration::MAX` and
    /// [`Verifier`](crate::Verifier) refuses every token with
    /// [`VerifyError::UnreadableRevocations`](crate::VerifyError::UnreadableRevocations).
    /// The fix is a newer `tessera-client`.
    pub fn unreadable_revision(&self) -> Option<u64> {
        self.shared().read().unreadable
    }

    /// The revision the cache has applied.
    pub fn revision(&self) -> u64 {
        self.shared().read().revision
    }

    /// Time since the last event, snapshot, or heartbeat from a node that
    /// knew a leader and was not behind the cache: how old the cache's
    /// knowledge may be. `Duration::MAX` until the first snapshot has been
    /// applied, and while the cache holds an
    /// [unreadable revision](Self::unreadable_revision). Measured on
    /// Tokio's clock (monotonic, and paused in tests that pause time).
    pub fn staleness(&self) -> Duration {
        {
            let st = self.shared().read();
            if !st.synced || st.unreadable.is_some() {
                return Duration::MAX;
            }
        }
        self.shared()
            .link()
            .last_fresh
            .map_or(Duration::MAX, |t| t.elapsed())
    }

    /// The subscription's state, for health checks and metrics.
    pub fn status(&self) -> CacheStatus {
        let (revision, entries, unreadable_revision) = {
            let st = self.shared().read();
            (st.revision, st.entries.len(), st.unreadable)
        };
        let link = self.shared().link();
        CacheStatus {
            revision,
            node_revision: link.node_revision,
            connected_to: link.connected_to.clone(),
            leader_known: link.leader_known,
            last_message_age: link.last_message.map(|t| t.elapsed()),
            entries,
            subscriptions: link.subscriptions,
            last_error: link.last_error.clone(),
            unreadable_revision,
        }
    }

    /// Waits until the cache has applied `revision` (for example the
    /// revision a `Revoke` answered: read-your-writes), at most `timeout`.
    /// Event-driven: it wakes when the revision moves, never polls.
    pub async fn wait_for_revision(
        &self,
        revision: u64,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let mut rx = self.shared().progress.subscribe();
        let waited =
            tokio::time::timeout(timeout, rx.wait_for(|p| p.revision >= revision || p.closed))
                .await;
        match waited {
            Err(_) => Err(ClientError::Timeout {
                what: "the revocation cache to reach a revision",
                waited: timeout,
            }),
            Ok(Ok(p)) if p.revision >= revision => Ok(()),
            Ok(_) => Err(ClientError::Closed),
        }
    }

    /// Waits until the cache holds a complete copy (its first snapshot),
    /// at most `timeout`: for a resource server's start-up, so that it does
    /// not answer from an empty set. If it times out because the stream
    /// holds a revocation kind newer than this client, the error
    /// ([`ClientError::BadResponse`]) says so.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut rx = self.shared().progress.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|p| p.synced || p.closed)).await;
        match waited {
            Err(_) => Err(match self.unreadable_revision() {
                // The likeliest cause for a new resource server: say it.
                Some(revision) => ClientError::BadResponse(format!(
                    "the revocation stream holds, at revision {revision}, a revocation kind this client does not know: upgrade tessera-client"
                )),
                None => ClientError::Timeout {
                    what: "the revocation cache's first snapshot",
                    waited: timeout,
                },
            }),
            Ok(Ok(p)) if p.synced => Ok(()),
            Ok(_) => Err(ClientError::Closed),
        }
    }

    /// Number of entries (revoked jtis, subject and client cut-offs).
    pub fn len(&self) -> usize {
        self.shared().read().entries.len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The revoked jtis, sorted: for tests and diagnostics (it copies the
    /// set).
    pub fn revoked_jtis(&self) -> BTreeSet<String> {
        self.shared().read().entries.jtis.keys().cloned().collect()
    }

    /// Forgets the entries whose `until` has passed now, as the background
    /// task does every second; for callers that move the clock.
    pub fn purge_expired(&self) {
        self.shared().purge();
    }

    /// Ends the background task and waits for it. The cache keeps
    /// answering from what it has, which no longer changes. Idempotent.
    pub async fn shutdown(&self) {
        self.owner.shutdown.send_replace(true);
        let task = self
            .owner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // The task ends at its next await on the shutdown signal; a
            // JoinError can only mean it panicked, which it reports itself.
            let _ = task.await;
        }
    }
}

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("connecting: {0}")]
    Connect(String),
    #[error("stream ended with {code:?}: {message}")]
    Status {
        code: tonic::Code,
        message: String,
        resume_from: Option<String>,
    },
    #[error("stream closed by the node")]
    Closed,
    #[error("no message within the idle timeout")]
    Idle,
    #[error("protocol error: {0}")]
    Protocol(ProtocolError),
}

impl Runner {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(endpoints = self.targets.len(), "revocation cache started");
        let mut next = 0usize;
        let mut backoff = self.backoff_min;
        let mut warned = None;
        loop {
            let (addr, ep) = &self.targets[next % self.targets.len()];
            next = next.wrapping_add(1);
            let (delivered, end) = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                out = self.subscribe(addr, ep) => out,
            };
            self.shared.disconnected(Some(end.to_string()));
            match &end {
                End::Status {
                    code: tonic::Code::Aborted,
                    resume_from,
                    ..
                } => {
                    tracing::info!(endpoint = %addr, resume_from = ?resume_from, "stream ended by the node; resuming")
                }
                other => {
                    tracing::info!(endpoint = %addr, reason = ?other, "stream ended; resubscribing")
                }
            }
            if let End::Protocol(ProtocolError::Unreadable { revision }) = &end {
                // Once per revision, not once per attempt.
                if warned != Some(*revision) {
                    warned = Some(*revision);
                    tracing::warn!(
                        endpoint = %addr,
                        revision,
                        "the revocation stream holds a kind this client does not know; every token is refused until a snapshot without it: upgrade tessera-client"
                    );
                }
                // The next node will most likely send the same: ask again
                // only as often as after failures.
                backoff = self.backoff_max;
            } else if delivered {
                backoff = self.backoff_min;
            }
            self.shared.purge();
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            if !delivered {
                backoff = backoff.saturating_mul(2).min(self.backoff_max);
            }
        }
        self.shared.disconnected(None);
        self.shared.progress.send_modify(|p| p.closed = true);
        tracing::info!("revocation cache stopped");
    }

    /// One subscription, until it ends. Returns whether it delivered any
    /// message, and why it ended.
    async fn subscribe(&self, addr: &str, ep: &Endpoint) -> (bool, End) {
        let channel = match ep.connect().await {
            Ok(c) => c,
            Err(e) => return (false, End::Connect(e.to_string())),
        };
        let from_revision = self.shared.read().revision;
        let mut client = pb::revocation_service_client::RevocationServiceClient::new(channel);
        let request = pb::WatchRequest {
            from_revision,
            coalesce: true,
        };
        let response =
            tokio::time::timeout(self.idle_timeout, client.watch_revocations(request)).await;
        let mut stream = match response {
            Err(_) => return (false, End::Idle),
            Ok(Err(status)) => return (false, end_of(&status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        tracing::debug!(endpoint = %addr, from_revision, "subscribed");
        self.shared.connected(addr);
        let mut session = Session::default();
        let mut delivered = false;
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        let mut purge = tokio::time::interval(PURGE_EVERY);
        purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(ev)) => {
                        delivered = true;
                        idle.as_mut().reset(idle_deadline(self.idle_timeout));
                        if let Err(e) = self.shared.apply(&mut session, ev) {
                            return (delivered, End::Protocol(e));
                        }
                    }
                    Ok(None) => return (delivered, End::Closed),
                    Err(status) => return (delivered, end_of(&status)),
                },
                _ = &mut idle => return (delivered, End::Idle),
                _ = purge.tick() => self.shared.purge(),
            }
        }
    }
}

/// When a stream that delivers nothing more is dropped as idle: after
/// `idle_timeout`, or never, as tokio's own `sleep` takes a timeout too
/// large to add to now (a configured `Duration::MAX`).
fn idle_deadline(idle_timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(idle_timeout)
        .unwrap_or_else(|| now + NEVER_IDLE)
}

/// "Never" for [`idle_deadline`]: the same thirty years tokio waits for a
/// sleep too long to add.
const NEVER_IDLE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

fn end_of(status: &tonic::Status) -> End {
    End::Status {
        code: status.code(),
        message: status.message().to_string(),
        resume_from: status
            .metadata()
            .get(tessera_proto::RESUME_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

#[cfg(test)]
#[path = "cache_test_support.rs"]
mod test_support;

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "cache_coalesce_tests.rs"]
mod coalesce_tests;
