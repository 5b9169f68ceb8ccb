//! The public gRPC services (`tessera.v1`): `TokenService`, `KeyService`,
//! standard health and server reflection, served over mutual TLS.
//!
//! Each handler takes the caller identity from the client certificate,
//! asks the token rules and the policy, and writes through Raft. Errors of
//! every layer become statuses in one place, [`error`].

mod audit;
pub mod error;
mod keys_service;
mod token_service;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;

pub use audit::{AuditEvent, AuditLog, AuditSink};
pub use error::ApiError;

use crate::clock::Clock;
use crate::keys::{Kek, KeyRing};
use crate::pb;
use crate::policy::PolicyEngine;
use crate::raft::{Command, CommandResponse, Op, TypeConfig};
use crate::store::StateView;
use crate::token::{Claims, VerifyParams};

/// The Raft handle type.
pub type Raft = openraft::Raft<TypeConfig>;

/// Largest request message the public services accept. Big enough that an
/// oversized token reaches the token rules (and gets their precise answer),
/// small enough to bound memory per call.
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
    /// Largest token accepted, bytes.
    pub max_token_len: usize,
    /// How many verified tokens to remember (0: verify every signature).
    pub verified_cache: usize,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            issuer: "https://tessera.dev".into(),
            default_lifetime: 300,
            max_lifetime: 3600,
            max_depth: 5,
            leeway: 30,
            max_token_len: 8 * 1024,
            verified_cache: 16 * 1024,
        }
    }
}

/// What every handler shares: Raft, the applied state, and the derived
/// key ring and policy engine, each cached by the state version it was
/// built from.
pub struct Shared {
    raft: Raft,
    state: StateView,
    kek: Arc<Kek>,
    settings: TokenSettings,
    read_wait_max: Duration,
    clock: Arc<dyn Clock>,
    audit: AuditLog,
    // std locks: held for a pointer copy, never across an await.
    ring: RwLock<Option<Arc<KeyRing>>>,
    policy: RwLock<Option<Arc<PolicyEngine>>>,
    verified: Mutex<VerifiedTokens>,
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
    pub fn new(
        raft: Raft,
        state: StateView,
        kek: Arc<Kek>,
        settings: TokenSettings,
        read_wait_max: Duration,
        clock: Arc<dyn Clock>,
        audit: AuditLog,
    ) -> Self {
        Self {
            raft,
            state,
            kek,
            settings,
            read_wait_max,
            clock,
            audit,
            ring: RwLock::new(None),
            policy: RwLock::new(None),
            verified: Mutex::new(VerifiedTokens::default()),
        }
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
            &self.kek,
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
            return Ok(None);
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

    /// Proposes a command stamped with this node's clock and waits until it
    /// is applied.
    async fn write(&self, op: Op) -> Result<CommandResponse, ApiError> {
        let cmd = Command {
            at: self.clock.now(),
            op,
        };
        Ok(self.raft.client_write(cmd).await?.data)
    }
}

fn poisoned<T>(_: T) -> ApiError {
    ApiError::Internal("lock poisoned".into())
}

/// Serves the public API on `listener` until `shutdown` completes.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use pb::key_service_server::KeyServiceServer;
    use pb::token_service_server::TokenServiceServer;

    let (reporter, health) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(health_loop(shared.raft.clone(), reporter));

    let reflection = match tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
    {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "reflection service unavailable");
            None
        }
    };
    let tokens = TokenServiceServer::new(token_service::TokenApi::new(shared.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let keys = KeyServiceServer::new(keys_service::KeyApi::new(shared.clone()));
    let incoming = crate::tls::tls_incoming(listener, tls);
    let result = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(1024)
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .add_service(health)
        .add_optional_service(reflection)
        .add_service(tokens)
        .add_service(keys)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    health_task.abort();
    if let Err(e) = result {
        tracing::error!(error = %e, "API server failed");
    }
}

/// Health follows Raft: `SERVING` while a leader is known and this node's
/// applied index is close to what it has in its log.
async fn health_loop(raft: Raft, reporter: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    const SERVICES: [&str; 3] = ["", "tessera.v1.TokenService", "tessera.v1.KeyService"];
    const MAX_LAG: u64 = 1_000;
    let mut metrics = raft.metrics();
    let mut last = None;
    loop {
        let status = {
            let m = metrics.borrow_and_update();
            let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
            let log = m.last_log_index.unwrap_or(0);
            if m.current_leader.is_some() && log.saturating_sub(applied) <= MAX_LAG {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            for s in SERVICES {
                reporter.set_service_status(s, status).await;
            }
            last = Some(status);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
