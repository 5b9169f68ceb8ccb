//! `tessera serve`: flags, environment and TOML file merged (flag > env >
//! file > default) and validated into the library's `Config`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use tessera::api::AuditSink;
use tessera::node::{self, Config, KekSource, KeySettings, Listeners, TokenSettings};
use tessera::tls::TlsFiles;

use super::CliError;

/// The example policy, used by `--dev` when no policy file is given.
const EXAMPLE_POLICY: &str = include_str!("../../deploy/policy/example.cedar");

/// Options of `tessera serve`. Every flag also reads `TESSERA_<NAME>`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys as the long flags, with underscores).
    #[arg(long, env = "TESSERA_CONFIG")]
    config: Option<PathBuf>,
    /// Development mode: creates certificates, a KEK and data under --dev-dir
    /// and installs the example policy.
    #[arg(long)]
    dev: bool,
    /// Directory for development state.
    #[arg(long, env = "TESSERA_DEV_DIR", default_value = ".tessera-dev")]
    dev_dir: PathBuf,
    /// Raft node id (>= 1).
    #[arg(long, env = "TESSERA_NODE_ID")]
    node_id: Option<u64>,
    /// Address to listen on for the public API.
    #[arg(long, env = "TESSERA_LISTEN")]
    listen: Option<String>,
    /// Address clients use to reach this node's API (defaults to --listen);
    /// followers name it in leader hints.
    #[arg(long, env = "TESSERA_ADVERTISE")]
    advertise: Option<String>,
    /// Address to listen on for node-to-node Raft traffic (mTLS, cluster
    /// members only).
    #[arg(long, env = "TESSERA_RAFT_LISTEN")]
    raft_listen: Option<String>,
    /// Address other nodes use to reach this node's Raft listener (defaults
    /// to --raft-listen).
    #[arg(long, env = "TESSERA_RAFT_ADVERTISE")]
    raft_advertise: Option<String>,
    /// Initialise a one-node cluster on first start. Without it a fresh
    /// node waits to be initialised (`tessera cluster init`) or added.
    #[arg(long, env = "TESSERA_BOOTSTRAP")]
    bootstrap: bool,
    /// Data directory (sled database).
    #[arg(long, env = "TESSERA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// CA certificate (PEM) trusted for clients and peers.
    #[arg(long, env = "TESSERA_CA")]
    ca: Option<PathBuf>,
    /// This node's certificate (PEM).
    #[arg(long, env = "TESSERA_CERT")]
    cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "TESSERA_KEY")]
    key: Option<PathBuf>,
    /// File holding the key-encryption key (32 bytes, base64 or hex).
    /// `TESSERA_KEK` may hold the key itself instead.
    #[arg(long, env = "TESSERA_KEK_FILE")]
    kek_file: Option<PathBuf>,
    /// The previous key-encryption key, during a KEK rotation: it opens the
    /// signing keys not yet re-sealed (`tessera kek rotate`).
    #[arg(long, env = "TESSERA_PREVIOUS_KEK_FILE")]
    previous_kek_file: Option<PathBuf>,
    /// Rotate the signing key after it has signed this many seconds (0, the
    /// default: only on demand, `tessera keys rotate`).
    #[arg(long, env = "TESSERA_KEY_ROTATION_PERIOD")]
    key_rotation_period: Option<u64>,
    /// Seconds a new signing key is published in the JWKS before it signs
    /// (default 600); also the JWKS `max-age`.
    #[arg(long, env = "TESSERA_KEY_PUBLISH_AHEAD")]
    key_publish_ahead: Option<u64>,
    /// Cedar policy installed when the cluster is initialised.
    #[arg(long, env = "TESSERA_POLICY")]
    policy: Option<PathBuf>,
    /// Issuer (`iss`) of every token.
    #[arg(long, env = "TESSERA_ISSUER")]
    issuer: Option<String>,
    /// Default token lifetime, seconds.
    #[arg(long, env = "TESSERA_DEFAULT_LIFETIME")]
    default_lifetime: Option<u64>,
    /// Maximum token lifetime, seconds.
    #[arg(long, env = "TESSERA_MAX_LIFETIME")]
    max_lifetime: Option<u64>,
    /// Maximum delegation depth.
    #[arg(long, env = "TESSERA_MAX_DEPTH")]
    max_depth: Option<usize>,
    /// Largest clock difference between any two nodes or verifiers that
    /// revocations stay correct under, seconds (default 30): revocations
    /// are kept this much longer before they are purged.
    #[arg(long, env = "TESSERA_MAX_CLOCK_SKEW")]
    max_clock_skew: Option<u64>,
    /// Audit log file ("-" for stderr).
    #[arg(long, env = "TESSERA_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// Rotate the audit log file when it would grow past this many bytes
    /// (default 104857600; 0: never).
    #[arg(long, env = "TESSERA_AUDIT_MAX_BYTES")]
    audit_max_bytes: Option<u64>,
    /// Rotated audit log files kept (`.1` .. `.N`, default 10).
    #[arg(long, env = "TESSERA_AUDIT_MAX_FILES")]
    audit_max_files: Option<u32>,
    /// Build a Raft snapshot after this many log entries (default 10000).
    #[arg(long, env = "TESSERA_SNAPSHOT_EVERY")]
    snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot (default 1000).
    #[arg(long, env = "TESSERA_KEEP_LOGS")]
    keep_logs: Option<u64>,
    /// Entries a follower may trail its leader's commit index and still
    /// report SERVING (default 1000).
    #[arg(long, env = "TESSERA_CATCH_UP_LAG")]
    catch_up_lag: Option<u64>,
    /// Per-caller rate limit, `CLASS=PER_SECOND/BURST` or `CLASS=off`;
    /// CLASS is issue, introspect, revoke, watch, admin or all. Repeatable;
    /// later settings win. See docs/OPERATIONS.md for the defaults.
    #[arg(long, env = "TESSERA_RATE_LIMIT", value_delimiter = ',')]
    rate_limit: Vec<String>,
    /// Most caller identities the rate limiter tracks at once.
    #[arg(long, env = "TESSERA_RATE_LIMIT_IDENTITIES")]
    rate_limit_identities: Option<usize>,
    /// Most concurrent revocation watchers of one caller identity.
    #[arg(long, env = "TESSERA_WATCH_PER_IDENTITY")]
    watch_per_identity: Option<usize>,
    /// Seconds a revocation watcher may take to receive its starting
    /// snapshot (default 300); past it the node releases the copy it holds
    /// for the watcher and ends the stream with ABORTED.
    #[arg(long, env = "TESSERA_WATCH_SNAPSHOT_DEADLINE")]
    watch_snapshot_deadline: Option<u64>,
    /// Anomaly signal: how many times its baseline a caller's issue,
    /// exchange or refusal count per minute must exceed.
    #[arg(long, env = "TESSERA_ANOMALY_MULTIPLE")]
    anomaly_multiple: Option<f64>,
    /// Anomaly signal: least issues or exchanges in a minute that can
    /// raise one (idle callers never do).
    #[arg(long, env = "TESSERA_ANOMALY_MIN_RATE")]
    anomaly_min_rate: Option<u64>,
    /// Caller identities with their own label in per-caller metrics (the
    /// rest are `other`).
    #[arg(long, env = "TESSERA_METRICS_CALLER_LABELS")]
    metrics_caller_labels: Option<usize>,
    /// Most open API connections in total.
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most open API connections from one IP address.
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS_PER_PEER")]
    max_connections_per_peer: Option<usize>,
    /// Seconds a client has, after its TLS handshake, to send the HTTP/2
    /// preface.
    #[arg(long, env = "TESSERA_PREFACE_TIMEOUT")]
    preface_timeout: Option<u64>,
    /// Most concurrent calls (HTTP/2 streams) on one connection.
    #[arg(long, env = "TESSERA_MAX_CONCURRENT_STREAMS")]
    max_concurrent_streams: Option<u32>,
    /// Largest request header block, bytes.
    #[arg(long, env = "TESSERA_MAX_HEADER_LIST_SIZE")]
    max_header_list_size: Option<u32>,
    /// Address to listen on for HTTPS (JWKS and OAuth metadata; client
    /// certificates optional). Off unless set (`--dev`: 127.0.0.1:7643).
    #[arg(long, env = "TESSERA_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// host:port clients reach the HTTPS listener at, used in the metadata's
    /// URLs (defaults to the bound address).
    #[arg(long, env = "TESSERA_HTTP_ADVERTISE")]
    http_advertise: Option<String>,
    /// Seconds between checks of the certificate, key and CA files for a
    /// renewal (default 30; 0: only on SIGHUP).
    #[arg(long, env = "TESSERA_TLS_RELOAD_INTERVAL")]
    tls_reload_interval: Option<u64>,
    /// Health reports NOT_SERVING once this node's certificate expires
    /// within this many seconds (default 3600).
    #[arg(long, env = "TESSERA_CERT_EXPIRY_MARGIN")]
    cert_expiry_margin: Option<u64>,
    /// A warning is logged once this node's certificate expires within this
    /// many seconds (default 604800, 7 days).
    #[arg(long, env = "TESSERA_CERT_EXPIRY_WARNING")]
    cert_expiry_warning: Option<u64>,
}

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    listen: Option<String>,
    advertise: Option<String>,
    raft_listen: Option<String>,
    raft_advertise: Option<String>,
    bootstrap: Option<bool>,
    data_dir: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    kek_file: Option<PathBuf>,
    previous_kek_file: Option<PathBuf>,
    key_rotation_period: Option<u64>,
    key_publish_ahead: Option<u64>,
    policy: Option<PathBuf>,
    issuer: Option<String>,
    default_lifetime: Option<u64>,
    max_lifetime: Option<u64>,
    max_depth: Option<usize>,
    max_clock_skew: Option<u64>,
    audit_log: Option<PathBuf>,
    audit_max_bytes: Option<u64>,
    audit_max_files: Option<u32>,
    snapshot_every: Option<u64>,
    keep_logs: Option<u64>,
    catch_up_lag: Option<u64>,
    /// Applied before the flags' settings.
    rate_limit: Option<Vec<String>>,
    rate_limit_identities: Option<usize>,
    watch_per_identity: Option<usize>,
    watch_snapshot_deadline: Option<u64>,
    anomaly_multiple: Option<f64>,
    anomaly_min_rate: Option<u64>,
    metrics_caller_labels: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
    preface_timeout: Option<u64>,
    max_concurrent_streams: Option<u32>,
    max_header_list_size: Option<u32>,
    http_listen: Option<String>,
    http_advertise: Option<String>,
    tls_reload_interval: Option<u64>,
    cert_expiry_margin: Option<u64>,
    cert_expiry_warning: Option<u64>,
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

fn read_policy(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| usage(format!("policy file {}: {e}", path.display())))
}

/// The addresses to bind: API, Raft and (optional) HTTPS.
struct ListenAddrs {
    api: String,
    raft: String,
    http: Option<String>,
}

/// Builds the node configuration and the listen addresses.
fn build(a: ServeArgs) -> Result<(Config, ListenAddrs), CliError> {
    let file: FileConfig = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| usage(format!("config file {}: {e}", p.display())))?;
            toml::from_str(&text).map_err(|e| usage(format!("config file {}: {e}", p.display())))?
        }
        None => FileConfig::default(),
    };
    let dev = a.dev;
    let dev_dir = a.dev_dir.clone();
    let certs = dev_dir.join("certs");
    if dev && !certs.join("ca.pem").exists() {
        tessera::certs::init_dev_pki(&certs, &tessera::certs::DevPkiOptions::default())
            .map_err(|e| usage(format!("creating development certificates: {e}")))?;
        eprintln!("created development certificates in {}", certs.display());
    }
    macro_rules! pick {
        ($f:ident) => {
            a.$f.clone().or(file.$f.clone())
        };
    }
    let node_id = pick!(node_id).unwrap_or(1);
    let listen = pick!(listen)
        .or_else(|| dev.then(|| "127.0.0.1:7443".to_string()))
        .ok_or_else(|| usage("--listen is required (or --dev)"))?;
    let advertise = pick!(advertise).unwrap_or_else(|| listen.clone());
    let raft_listen = pick!(raft_listen)
        .or_else(|| dev.then(|| "127.0.0.1:7543".to_string()))
        .ok_or_else(|| usage("--raft-listen is required (or --dev)"))?;
    let raft_advertise = pick!(raft_advertise);
    let http_listen = pick!(http_listen).or_else(|| dev.then(|| "127.0.0.1:7643".to_string()));
    let bootstrap = a.bootstrap || dev || file.bootstrap.unwrap_or(false);
    let data_dir = pick!(data_dir)
        .or_else(|| dev.then(|| dev_dir.join(format!("node{node_id}"))))
        .ok_or_else(|| usage("--data-dir is required (or --dev)"))?;
    let dev_file = |name: &str| dev.then(|| certs.join(name));
    let tls = TlsFiles {
        ca: pick!(ca)
            .or_else(|| dev_file("ca.pem"))
            .ok_or_else(|| usage("--ca is required (or --dev)"))?,
        cert: pick!(cert)
            .or_else(|| dev_file(&format!("node{node_id}.pem")))
            .ok_or_else(|| usage("--cert is required (or --dev)"))?,
        key: pick!(key)
            .or_else(|| dev_file(&format!("node{node_id}.key")))
            .ok_or_else(|| usage("--key is required (or --dev)"))?,
    };
    for (what, p) in [
        ("CA", &tls.ca),
        ("certificate", &tls.cert),
        ("key", &tls.key),
    ] {
        if !p.exists() {
            return Err(usage(format!("{what} file {} does not exist", p.display())));
        }
    }
    let kek = if let Some(p) = pick!(kek_file) {
        KekSource::File(p)
    } else if let Ok(text) = std::env::var("TESSERA_KEK") {
        KekSource::Text(text)
    } else if dev {
        KekSource::Generate(dev_dir.join("kek"))
    } else {
        return Err(usage(
            "a key-encryption key is required: --kek-file or TESSERA_KEK (or --dev)",
        ));
    };
    let previous_kek = pick!(previous_kek_file).map(KekSource::File);
    let mut keys = KeySettings::default();
    if let Some(s) = pick!(key_rotation_period) {
        keys.rotation_period = (s > 0).then(|| Duration::from_secs(s));
    }
    if let Some(s) = pick!(key_publish_ahead) {
        keys.publish_ahead = Duration::from_secs(s);
    }
    let initial_policy = match pick!(policy) {
        Some(p) => Some(read_policy(&p)?),
        None if dev => Some(EXAMPLE_POLICY.to_string()),
        None => None,
    };
    if let Some(text) = &initial_policy {
        tessera::policy::PolicyEngine::validate(text).map_err(|e| usage(format!("policy: {e}")))?;
    }
    let defaults = TokenSettings::default();
    let token = TokenSettings {
        issuer: pick!(issuer).unwrap_or(defaults.issuer),
        default_lifetime: pick!(default_lifetime).unwrap_or(defaults.default_lifetime),
        max_lifetime: pick!(max_lifetime).unwrap_or(defaults.max_lifetime),
        max_depth: pick!(max_depth).unwrap_or(defaults.max_depth),
        max_clock_skew: pick!(max_clock_skew).unwrap_or(defaults.max_clock_skew),
        ..defaults
    };
    let audit = match pick!(audit_log) {
        Some(p) if p.as_os_str() == "-" => AuditSink::Stderr,
        Some(p) => AuditSink::File(p),
        None if dev => AuditSink::File(dev_dir.join(format!("audit-node{node_id}.jsonl"))),
        None => AuditSink::File(data_dir.join("audit.jsonl")),
    };
    let mut config = Config::new(node_id, data_dir, advertise, tls, kek);
    config.raft_advertise_addr = raft_advertise.unwrap_or_default();
    config.previous_kek = previous_kek;
    config.keys = keys;
    config.bootstrap = bootstrap;
    config.initial_policy = initial_policy;
    config.token = token;
    config.audit = audit;
    if let Some(n) = pick!(audit_max_bytes) {
        config.audit_rotation.max_bytes = n;
    }
    if let Some(n) = pick!(audit_max_files) {
        config.audit_rotation.max_files = n;
    }
    config.read_wait_max = Duration::from_secs(5);
    if let Some(n) = pick!(snapshot_every) {
        config.raft.snapshot_every = n;
    }
    if let Some(n) = pick!(keep_logs) {
        config.raft.keep_logs = n;
    }
    if let Some(n) = pick!(catch_up_lag) {
        config.raft.catch_up_lag = n;
    }
    let limits = &mut config.limits;
    for spec in file.rate_limit.iter().flatten().chain(&a.rate_limit) {
        limits.rate.apply(spec).map_err(usage)?;
    }
    if let Some(n) = pick!(rate_limit_identities) {
        limits.rate.max_identities = n;
    }
    if let Some(n) = pick!(max_connections) {
        limits.accept.max_connections = n;
    }
    if let Some(n) = pick!(max_connections_per_peer) {
        limits.accept.max_connections_per_peer = n;
    }
    if let Some(s) = pick!(preface_timeout) {
        limits.accept.preface_timeout = Duration::from_secs(s);
    }
    if let Some(n) = pick!(max_concurrent_streams) {
        limits.http2.max_concurrent_streams = n;
    }
    if let Some(n) = pick!(max_header_list_size) {
        limits.http2.max_header_list_size = n;
    }
    if let Some(n) = pick!(watch_per_identity) {
        config.watch.max_per_identity = n;
    }
    if let Some(secs) = pick!(watch_snapshot_deadline) {
        config.watch.snapshot_deadline = std::time::Duration::from_secs(secs);
    }
    if let Some(a) = pick!(http_advertise) {
        config.http.advertise_addr = a;
    }
    if let Some(s) = pick!(tls_reload_interval) {
        config.tls_reload.check_interval = Duration::from_secs(s);
    }
    if let Some(s) = pick!(cert_expiry_margin) {
        config.tls_reload.expiry_margin = Duration::from_secs(s);
    }
    if let Some(s) = pick!(cert_expiry_warning) {
        config.tls_reload.expiry_warning = Duration::from_secs(s);
    }
    if let Some(m) = pick!(anomaly_multiple) {
        config.metrics.anomaly.multiple = m;
    }
    if let Some(n) = pick!(anomaly_min_rate) {
        config.metrics.anomaly.min_rate = n;
    }
    if let Some(n) = pick!(metrics_caller_labels) {
        config.metrics.max_caller_labels = n;
    }
    config.validate().map_err(usage)?;
    Ok((
        config,
        ListenAddrs {
            api: listen,
            raft: raft_listen,
            http: http_listen,
        },
    ))
}

/// Runs `tessera serve`.
pub async fn serve(args: ServeArgs) -> Result<(), CliError> {
    let (mut config, addrs) = build(args)?;
    let bind = |addr: String| async move {
        let l = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| usage(format!("cannot listen on {addr}: {e}")))?;
        let bound = l
            .local_addr()
            .map_err(|e| usage(format!("cannot listen on {addr}: {e}")))?;
        Ok::<_, CliError>((l, bound))
    };
    let (api, api_bound) = bind(addrs.api).await?;
    let (raft, raft_bound) = bind(addrs.raft).await?;
    let (http, http_bound) = match addrs.http {
        Some(a) => {
            let (l, bound) = bind(a).await?;
            (Some(l), Some(bound))
        }
        None => (None, None),
    };
    // Advertise what was bound when nothing else was asked for (port 0).
    if config.advertise_addr.ends_with(":0") {
        config.advertise_addr = api_bound.to_string();
    }
    if config.raft_advertise_addr.is_empty() {
        config.raft_advertise_addr = raft_bound.to_string();
    }
    // The bound addresses, not the requested ones: with port 0 this is how
    // a supervisor (or a test) learns the ports.
    let http_part = http_bound.map(|h| format!(" http {h}")).unwrap_or_default();
    eprintln!(
        "tessera node {} listening on {api_bound} raft {raft_bound}{http_part}",
        config.node_id
    );
    node::run_with_reload(
        config,
        Listeners { api, raft, http },
        shutdown_signal(),
        hangups(),
    )
    .await
    .map_err(|e| CliError::Failed(e.into()))
}

/// One item per SIGHUP: reload the TLS files. Without a handler (it could
/// not be installed) the stream never yields.
fn hangups() -> impl futures_util::Stream<Item = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler; TLS reload on SIGHUP is off");
            None
        }
    };
    futures_util::stream::unfold(hup, |hup| async move {
        let mut hup = hup?;
        hup.recv().await?;
        Some(((), Some(hup)))
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
