//! The validated configuration a node runs with. The command line and the
//! config file live in `main.rs`; this is what the library sees, with every
//! value checked and defaulted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{AuditRotation, AuditSink};
pub use crate::api::{KeySettings, TokenSettings};
use crate::clock::{Clock, SystemClock};
use crate::tls::TlsFiles;
use crate::token::{MAX_DEPTH_LIMIT, MAX_LEEWAY};

/// Upper bound on `max_clock_skew`, seconds: clocks further apart than a
/// day are a broken deployment, not skew to plan for.
pub const MAX_CLOCK_SKEW_LIMIT: u64 = 86_400;

/// Where the key-encryption key comes from.
#[derive(Clone)]
pub enum KekSource {
    /// A file holding 32 bytes as base64 or hex.
    File(PathBuf),
    /// The KEK text itself (read from `TESSERA_KEK` by `main`).
    Text(String),
    /// Development only: load or generate a KEK file.
    Generate(PathBuf),
}

impl std::fmt::Debug for KekSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Text(_) => f.write_str("Text(<redacted>)"),
            Self::Generate(p) => f.debug_tuple("Generate").field(p).finish(),
        }
    }
}

/// Raft timing and log compaction.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// Leader heartbeat interval, milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout, milliseconds (randomised up to twice this).
    pub election_timeout_ms: u64,
    /// Build a snapshot after this many log entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot (for followers slightly behind).
    pub keep_logs: u64,
    /// How long a leader may go without a quorum's acknowledgement, and a
    /// follower without hearing its leader, before the node reports
    /// `NOT_SERVING` and refuses streams and JWKS (ms). Not a read lease:
    /// reads always confirm with a quorum.
    pub contact_timeout_ms: u64,
    /// How many entries a follower's applied index may trail the commit
    /// index its leader last announced while it still reports `SERVING`;
    /// further behind it is catching up and reports `NOT_SERVING`.
    pub catch_up_lag: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_ms: 500,
            snapshot_every: 10_000,
            keep_logs: 1_000,
            contact_timeout_ms: 3_000,
            catch_up_lag: crate::api::MAX_CATCH_UP_LAG,
        }
    }
}

/// A node's configuration.
#[derive(Clone)]
pub struct Config {
    /// Raft node id.
    pub node_id: u64,
    /// Directory holding the sled database.
    pub data_dir: PathBuf,
    /// Address clients reach this node's API at (host:port).
    pub advertise_addr: String,
    /// Address other nodes reach this node's Raft listener at (host:port);
    /// empty: the Raft listener's bound address.
    pub raft_advertise_addr: String,
    /// Initialise a one-node cluster on first start.
    pub bootstrap: bool,
    /// Certificate, key and CA for mutual TLS.
    pub tls: TlsFiles,
    /// The key-encryption key: seals new keys, and the keys re-sealed by
    /// a KEK rotation.
    pub kek: KekSource,
    /// The previous key-encryption key, during a KEK rotation: it still
    /// opens keys sealed before the rotation.
    pub previous_kek: Option<KekSource>,
    /// Signing-key rotation.
    pub keys: KeySettings,
    /// The Cedar policy text installed when the cluster is initialised.
    pub initial_policy: Option<String>,
    /// Token settings.
    pub token: TokenSettings,
    /// Longest an `Introspect` with `min_revision` waits.
    pub read_wait_max: Duration,
    /// How often the leader purges expired revocations.
    pub purge_interval: Duration,
    /// Where audit records go.
    pub audit: AuditSink,
    /// Size-based rotation of a file audit sink.
    pub audit_rotation: AuditRotation,
    /// The clock (tests inject a manual one).
    pub clock: Arc<dyn Clock>,
    /// Raft timing and compaction.
    pub raft: RaftSettings,
    /// Fault injection on the Raft network (tests and chaos drills).
    pub faults: Option<Arc<crate::raft::network::Faults>>,
    /// Fault injection in the store: failed writes, as on a full disk
    /// (tests and chaos drills; off by default).
    pub store_faults: crate::store::StoreFaults,
    /// Revocation stream limits (subscribers, heartbeat interval).
    pub watch: crate::api::WatchSettings,
    /// Recent revocation events kept for watchers that resume.
    pub watch_window: usize,
    /// Per-caller rate limits, connection caps and HTTP/2 settings of the
    /// public listener.
    pub limits: crate::api::ServerLimits,
    /// The HTTPS listener (JWKS, metadata); served only when
    /// [`super::Listeners::http`] is given.
    pub http: crate::api::http::HttpSettings,
    /// Certificate reload and expiry checks.
    pub tls_reload: super::TlsReloadSettings,
    /// Metrics label bounds and the anomaly signal.
    pub metrics: crate::metrics::MetricsSettings,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("node_id", &self.node_id)
            .field("data_dir", &self.data_dir)
            .field("advertise_addr", &self.advertise_addr)
            .field("tls", &self.tls)
            .field("kek", &self.kek)
            .field("previous_kek", &self.previous_kek)
            .field("keys", &self.keys)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(
        node_id: u64,
        data_dir: PathBuf,
        advertise_addr: String,
        tls: TlsFiles,
        kek: KekSource,
    ) -> Self {
        Self {
            node_id,
            data_dir,
            advertise_addr,
            raft_advertise_addr: String::new(),
            bootstrap: false,
            tls,
            kek,
            previous_kek: None,
            keys: KeySettings::default(),
            initial_policy: None,
            token: TokenSettings::default(),
            read_wait_max: Duration::from_secs(5),
            purge_interval: Duration::from_secs(60),
            audit: AuditSink::Stderr,
            audit_rotation: AuditRotation::default(),
            clock: Arc::new(SystemClock),
            raft: RaftSettings::default(),
            faults: None,
            store_faults: crate::store::StoreFaults::default(),
            watch: crate::api::WatchSettings::default(),
            watch_window: crate::store::DEFAULT_WINDOW,
            limits: crate::api::ServerLimits::default(),
            http: crate::api::http::HttpSettings::default(),
            tls_reload: super::TlsReloadSettings::default(),
            metrics: crate::metrics::MetricsSettings::default(),
        }
    }

    /// Checks the values that no type can: returns a message naming the
    /// first bad setting.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.token;
        if self.node_id == 0 {
            return Err("node id must be at least 1".into());
        }
        if t.issuer.is_empty() {
            return Err("issuer must not be empty".into());
        }
        if t.default_lifetime == 0 || t.max_lifetime == 0 {
            return Err("token lifetimes must be positive".into());
        }
        if t.default_lifetime > t.max_lifetime {
            return Err(format!(
                "default token lifetime {}s exceeds the maximum {}s",
                t.default_lifetime, t.max_lifetime
            ));
        }
        if t.max_depth == 0 || t.max_depth > MAX_DEPTH_LIMIT {
            return Err(format!(
                "max delegation depth must be between 1 and {MAX_DEPTH_LIMIT}"
            ));
        }
        if t.leeway > MAX_LEEWAY {
            return Err(format!(
                "clock leeway must be at most {MAX_LEEWAY}s (a leeway keeps expired tokens valid)"
            ));
        }
        if t.max_clock_skew > MAX_CLOCK_SKEW_LIMIT {
            return Err(format!(
                "max clock skew must be at most {MAX_CLOCK_SKEW_LIMIT}s"
            ));
        }
        if t.max_token_len < 512 || t.max_token_len > 1024 * 1024 {
            return Err("max token size must be between 512 bytes and 1 MiB".into());
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_ms < 3 * r.heartbeat_ms {
            return Err("the election timeout must be at least three heartbeats".into());
        }
        if r.contact_timeout_ms < 2 * r.election_timeout_ms {
            return Err("the contact timeout must be at least two election timeouts".into());
        }
        if r.snapshot_every == 0 {
            return Err("snapshot interval must be positive".into());
        }
        if self.watch_window == 0
            || self.watch.max_subscribers == 0
            || self.watch.max_per_identity == 0
            || self.watch.live_buffer == 0
            || self.watch.heartbeat.is_zero()
            || self.watch.snapshot_deadline.is_zero()
        {
            return Err(
                "watch window, subscriber limits, heartbeat and snapshot deadline must be positive"
                    .into(),
            );
        }
        self.limits.validate()?;
        let k = &self.keys;
        if k.publish_ahead > Duration::from_secs(7 * 86_400) {
            return Err("key publish-ahead must be at most 7 days".into());
        }
        if k.check_interval.is_zero() {
            return Err("key check interval must be positive".into());
        }
        if let Some(p) = k.rotation_period {
            // A new key signs publish-ahead plus the tolerated clock skew
            // after it was created (`keys_admin::activation_delay`).
            let delay = k.publish_ahead + Duration::from_secs(self.token.max_clock_skew);
            if p < Duration::from_secs(60) || p < 2 * delay {
                return Err(format!(
                    "key rotation period ({}s) must be at least 60 s and at least twice the publish-ahead window plus the maximum clock skew ({}s)",
                    p.as_secs(),
                    delay.as_secs()
                ));
            }
        }
        self.audit_rotation.validate()?;
        self.http.validate()?;
        self.tls_reload.validate()?;
        self.metrics.validate()?;
        if self.purge_interval.is_zero() {
            return Err("purge interval must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let tls = TlsFiles {
            ca: "ca".into(),
            cert: "cert".into(),
            key: "key".into(),
        };
        Config::new(
            1,
            "data".into(),
            String::new(),
            tls,
            KekSource::Text(String::new()),
        )
    }

    /// A new key signs publish-ahead plus the skew after it is created; a
    /// period shorter than twice that let each key sign far longer than the
    /// period said, silently (a rotation was due the moment a key activated).
    #[test]
    fn a_rotation_period_must_leave_room_for_publish_ahead_plus_skew() {
        let mut c = config();
        c.keys.publish_ahead = Duration::from_secs(600);
        c.token.max_clock_skew = 3600;
        c.keys.rotation_period = Some(Duration::from_secs(1200));
        let e = c.validate().unwrap_err();
        assert!(e.contains("4200s"), "{e}");
        c.keys.rotation_period = Some(Duration::from_secs(2 * 4200));
        c.validate().unwrap();
    }

    /// Nothing bounded the leeway: a library caller could keep every
    /// expired token valid for as long as it liked.
    #[test]
    fn a_leeway_without_any_bound_kept_expired_tokens_valid() {
        let mut c = config();
        c.token.leeway = MAX_LEEWAY + 1;
        let e = c.validate().unwrap_err();
        assert!(e.contains("leeway"), "{e}");
        c.token.leeway = MAX_LEEWAY;
        c.validate().unwrap();
    }
}
