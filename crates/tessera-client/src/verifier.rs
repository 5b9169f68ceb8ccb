//! [`Verifier`]: local verification of Tessera access tokens for a resource
//! server, with no network call per request.
//!
//! It fails closed. A token is accepted only when, in this order:
//!
//! 1. the [`RevocationCache`] has synced (received a complete snapshot) at
//!    least once;
//! 2. it passes [`tessera_token::verify`] (RFC 8725: allow-listed algorithm,
//!    key from the cluster's JWKS by `kid` only, `typ`, exact issuer and
//!    audience, times with a bounded leeway, bounded size and chain);
//! 3. it is bound to the certificate that presented it (`cnf.x5t#S256`,
//!    RFC 8705): the resource server must pass that certificate;
//! 4. neither it nor any ancestor of its delegation chain is revoked, and
//!    its subject's and client's cut-offs are before its `iat` — the
//!    server's rules, applied to the cache;
//! 5. the cache has heard from the cluster within
//!    [`VerifierConfig::max_staleness`] (30 s by default).
//!
//! Each of these can be turned off only by a method whose name starts with
//! `danger_`: [`Verifier::danger_without_revocations`],
//! [`VerifierConfig::danger_accept_unbounded_staleness`],
//! [`VerifierConfig::danger_skip_certificate_binding`].
//!
//! The JWKS is fetched from `KeyService.GetJwks` (failing over across the
//! nodes) on first use and cached. A token signed with an unknown `kid`
//! (a key published since) triggers one refresh and one more try; refreshes
//! are rate limited, so a stream of tokens with made-up `kid`s costs at most
//! one fetch per interval.
//!
//! The set is also refreshed once it is older than the `max_age_seconds`
//! the cluster sends with it (its key publish-ahead window; at least
//! `jwks_refresh_min_interval`, at most [`MAX_JWKS_AGE`]), so that retired
//! and removed keys leave the set without waiting for an unknown `kid`.
//! That refresh runs in the call that finds the set old, while concurrent
//! calls keep using the current set; if it fails, the current set stays in
//! use and the next attempt waits for the rate limit. Keeping it is safe:
//! the cluster publishes a key at least a max-age before it signs with it,
//! and removes one only after every token it signed has expired.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use super::cache::RevocationCache;
use super::conn::Pool;
use super::error::ClientError;
use crate::TlsFiles;
use tessera_proto as pb;
use tessera_token::clock::{Clock, SystemClock};
use tessera_token::x5t_s256 as thumbprint;
use tessera_token::{
    verify, Claims, KeySet, TokenError, VerifyParams, DEFAULT_LEEWAY, DEFAULT_MAX_CHAIN,
    DEFAULT_MAX_LEN,
};

/// How many times a verification is redone when a snapshot replaced the
/// revocation set while it ran (see [`Verifier::verify`]).
const VERIFY_ATTEMPTS: usize = 3;

/// A fetched key set and the cache's count of complete sets taken (its
/// first sync and each replacing snapshot) when its fetch started, read
/// together: keys older than the last set are not used.
#[derive(Clone)]
struct Keys {
    set: Arc<KeySet>,
    epoch: u64,
}

/// Longest the verifier keeps a JWKS without refreshing it, whatever
/// max-age the cluster advertises.
pub const MAX_JWKS_AGE: Duration = Duration::from_secs(24 * 3600);

/// Settings of a [`Verifier`]. Build with [`VerifierConfig::new`] and adjust
/// the public fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct VerifierConfig {
    /// API addresses of the cluster's nodes, for the JWKS.
    pub endpoints: Vec<String>,
    /// The resource server's TLS identity and the cluster CA.
    pub tls: TlsFiles,
    /// Server name to check in the nodes' certificates; `None`: each
    /// endpoint's host (a DNS name or an IP address).
    pub server_name: Option<String>,
    /// The exact `iss` of the cluster's tokens.
    pub issuer: String,
    /// This resource server's audience: tokens must name it in `aud`.
    pub audience: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (whole seconds).
    pub leeway: Duration,
    /// Least time between two JWKS refreshes triggered by unknown `kid`s.
    pub jwks_refresh_min_interval: Duration,
    /// Refuse tokens ([`VerifyError::Stale`]) when the revocation cache has
    /// heard nothing fresh for longer than this. To accept any staleness,
    /// call [`danger_accept_unbounded_staleness`](Self::danger_accept_unbounded_staleness).
    pub max_staleness: Duration,
    /// Set only by `danger_accept_unbounded_staleness`.
    unbounded_staleness: bool,
    /// Set only by `danger_skip_certificate_binding`.
    skip_binding: bool,
    /// Longest token accepted, bytes.
    pub max_token_len: usize,
    /// Longest delegation chain accepted.
    pub max_chain: usize,
    /// Bound on one JWKS call.
    pub request_timeout: Duration,
    /// Wall clock for the token's times.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for VerifierConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierConfig")
            .field("endpoints", &self.endpoints)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("jwks_refresh_min_interval", &self.jwks_refresh_min_interval)
            .field("max_staleness", &self.max_staleness)
            .field("unbounded_staleness", &self.unbounded_staleness)
            .field("skip_binding", &self.skip_binding)
            .finish_non_exhaustive()
    }
}

impl VerifierConfig {
    /// Settings with the defaults: 30 s leeway, JWKS refreshed at most every
    /// 5 s, revocation data at most 30 s stale, certificate binding checked,
    /// the token layer's size and chain bounds, 10 s calls, system clock.
    pub fn new(
        endpoints: Vec<String>,
        tls: TlsFiles,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Self {
        Self {
            endpoints,
            tls,
            server_name: None,
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(DEFAULT_LEEWAY),
            jwks_refresh_min_interval: Duration::from_secs(5),
            max_staleness: DEFAULT_MAX_STALENESS,
            unbounded_staleness: false,
            skip_binding: false,
            max_token_len: DEFAULT_MAX_LEN,
            max_chain: DEFAULT_MAX_CHAIN,
            request_timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
        }
    }

    /// Accepts tokens however long the revocation cache has been cut off
    /// from the cluster (still only once it has synced). A resource server
    /// doing this accepts a revoked token for as long as its stream is
    /// down.
    pub fn danger_accept_unbounded_staleness(&mut self) -> &mut Self {
        self.unbounded_staleness = true;
        self
    }

    /// Does not check that a token is bound to the certificate presenting
    /// it: a stolen token then works from any certificate.
    pub fn danger_skip_certificate_binding(&mut self) -> &mut Self {
        self.skip_binding = true;
        self
    }
}

/// Default of [`VerifierConfig::max_staleness`]: thirty heartbeats.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(30);

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedToken {
    /// Its claims.
    pub claims: Claims,
    /// The revocation cache's revision it was checked against (0 when
    /// revocations are not checked).
    pub revision: u64,
}

/// Why a token was refused. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The token failed RFC 8725 verification (shape, key, signature,
    /// issuer, audience, times, chain length).
    #[error("invalid token: {0}")]
    Invalid(TokenError),
    /// The token, an ancestor of its chain, its subject or its client is
    /// revoked.
    #[error("token is revoked")]
    Revoked,
    /// The token is bound to another certificate than the one that
    /// presented it.
    #[error("token is bound to another certificate")]
    BindingMismatch,
    /// A certificate presented the token, but the token is not bound to
    /// any.
    #[error("token is not certificate-bound")]
    Unbound,
    /// The revocation cache has not received its first complete snapshot:
    /// no token can be known not to be revoked yet.
    #[error("revocation data not synced yet")]
    NotSynced,
    /// The revocation stream held, at `revision`, a revocation of a kind
    /// this client does not know (a newer server's): the cache cannot say
    /// that any token is not revoked until a snapshot without it arrives.
    /// See [`RevocationCache::unreadable_revision`](crate::RevocationCache::unreadable_revision).
    #[error("revocation data unreadable from revision {revision} (a kind newer than this client): upgrade tessera-client")]
    UnreadableRevocations {
        /// The revision of the first message the cache could not read.
        revision: u64,
    },
    /// No certificate was given to check the token's binding against.
    #[error("no presenting certificate to check the token's binding against")]
    NoCertificate,
    /// The revocation cache has heard nothing fresh for longer than the
    /// configured maximum: revocations may be missing.
    #[error("revocation data is stale ({staleness:?} since the last fresh message)")]
    Stale {
        /// How long since the last fresh message.
        staleness: Duration,
    },
    /// The verification keys could not be fetched.
    #[error("verification keys unavailable: {0}")]
    Keys(ClientError),
}

/// Verifies tokens locally. See the [module documentation](self).
///
/// ```no_run
/// # async fn demo(token: &str, peer_cert_der: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
/// use tessera_client::{CacheConfig, RevocationCache, Verifier, VerifierConfig, VerifyError};
/// use tessera_client::TlsFiles;
///
/// let tls = TlsFiles {
///     ca: "certs/ca.pem".into(),
///     cert: "certs/ledger.pem".into(),
///     key: "certs/ledger.key".into(),
/// };
/// let nodes: Vec<String> = vec!["127.0.0.1:7443".into(), "127.0.0.1:7444".into()];
/// let cache = RevocationCache::start(CacheConfig::new(nodes.clone(), tls.clone()))?;
/// let verifier = Verifier::new(
///     VerifierConfig::new(nodes, tls, "https://tessera.dev", "spiffe://tessera.dev/svc/ledger"),
///     cache,
/// )?;
/// // Every token is refused until the cache has synced.
/// match verifier.verify(token, Some(peer_cert_der)).await {
///     Ok(t) => println!("caller {} acting for {}", t.claims.client_id, t.claims.sub),
///     Err(VerifyError::Revoked) => println!("revoked"),
///     Err(e) => println!("refused: {e}"),
/// }
/// # Ok(()) }
/// ```
pub struct Verifier {
    pool: Pool,
    issuer: String,
    audience: String,
    leeway: u64,
    max_token_len: usize,
    max_chain: usize,
    min_refresh: Duration,
    /// `None`: any staleness (the explicit opt-out).
    max_staleness: Option<Duration>,
    skip_binding: bool,
    clock: Arc<dyn Clock>,
    keys: RwLock<Option<Keys>>,
    /// When the current set passes the max-age it was served with (`None`:
    /// no max-age given; refreshed on unknown `kid`s only).
    // A std lock: held to copy an instant, never across an await.
    fresh_until: std::sync::Mutex<Option<Instant>>,
    /// Fetches attempted (tests count them).
    fetches: std::sync::atomic::AtomicU64,
    /// When the last fetch started. An async mutex: it also makes callers
    /// that miss a `kid` at the same time wait for the one fetch rather than
    /// start their own.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    /// The set count ([`Self::epoch`]) the last snapshot-driven fetch was
    /// for.
    epoch_tried: std::sync::atomic::AtomicU64,
    cache: Option<RevocationCache>,
    /// Runs between the signature and the revocation check (tests use it to
    /// land a snapshot there).
    #[cfg(test)]
    pub(crate) race: std::sync::Mutex<Option<Box<dyn FnMut() + Send>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("keys", &self.current_keys().map(|k| k.set.len()))
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for `config.audience`, checking revocations against
    /// `cache`; it refuses every token until the cache has synced. Fetches
    /// nothing yet: the JWKS is fetched on first use or by
    /// [`refresh_keys`](Self::refresh_keys).
    pub fn new(config: VerifierConfig, cache: RevocationCache) -> Result<Self, ClientError> {
        Self::build(config, Some(cache))
    }

    /// A verifier that checks signatures, claims and binding but no
    /// revocation at all: a revoked token is accepted until it expires.
    pub fn danger_without_revocations(config: VerifierConfig) -> Result<Self, ClientError> {
        Self::build(config, None)
    }

    fn build(config: VerifierConfig, cache: Option<RevocationCache>) -> Result<Self, ClientError> {
        if config.issuer.is_empty() {
            return Err(ClientError::InvalidConfig("issuer must not be empty"));
        }
        if config.audience.is_empty() {
            return Err(ClientError::InvalidConfig("audience must not be empty"));
        }
        let pool = Pool::new(
            &config.endpoints,
            &config.tls,
            config.server_name.as_deref(),
            config.request_timeout,
        )?;
        Ok(Self {
            pool,
            issuer: config.issuer,
            audience: config.audience,
            leeway: config.leeway.as_secs(),
            max_token_len: config.max_token_len,
            max_chain: config.max_chain,
            min_refresh: config.jwks_refresh_min_interval,
            max_staleness: (!config.unbounded_staleness).then_some(config.max_staleness),
            skip_binding: config.skip_binding,
            clock: config.clock,
            keys: RwLock::new(None),
            fresh_until: std::sync::Mutex::new(None),
            fetches: std::sync::atomic::AtomicU64::new(0),
            refreshed: tokio::sync::Mutex::new(None),
            epoch_tried: std::sync::atomic::AtomicU64::new(0),
            cache,
            #[cfg(test)]
            race: std::sync::Mutex::new(None),
        })
    }

    /// The audience tokens must name (this resource server).
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The revocation cache (`None` only for
    /// [`danger_without_revocations`](Self::danger_without_revocations)).
    pub fn cache(&self) -> Option<&RevocationCache> {
        self.cache.as_ref()
    }

    /// Verifies `token`, presented over TLS by the client certificate
    /// `presenter_cert_der` (DER). Without a certificate the token is
    /// refused ([`VerifyError::NoCertificate`]) unless the configuration
    /// skips the binding check.
    pub async fn verify(
        &self,
        token: &str,
        presenter_cert_der: Option<&[u8]>,
    ) -> Result<VerifiedToken, VerifyError> {
        // A snapshot that replaces the revocation set while a token is
        // checked could pair keys fetched before it with revocations after
        // it (a restore drops the backup's keys because the revocations
        // taken after the backup are gone): the check is then redone with
        // keys fetched since. Bounded, as snapshots are.
        for _ in 0..VERIFY_ATTEMPTS {
            let (verified, keys_epoch) = self.verify_once(token, presenter_cert_der).await?;
            if keys_epoch == self.epoch() {
                return Ok(verified);
            }
        }
        Err(VerifyError::Keys(ClientError::NoKeys))
    }

    /// One verification; also returns the set count the keys used were
    /// fetched at, for [`verify`](Self::verify) to compare with the cache's
    /// after the revocation check.
    async fn verify_once(
        &self,
        token: &str,
        presenter_cert_der: Option<&[u8]>,
    ) -> Result<(VerifiedToken, u64), VerifyError> {
        // Fail closed before any work: nothing is known about revocations.
        if let Some(cache) = &self.cache {
            // Unreadable first: for a cache that cannot read even its
            // first snapshot, it is the more useful answer.
            if let Some(revision) = cache.unreadable_revision() {
                return Err(VerifyError::UnreadableRevocations { revision });
            }
            if !cache.is_synced() {
                return Err(VerifyError::NotSynced);
            }
        }
        let params = self.params();
        let mut keys = self.keys().await?;
        let claims = match verify(token, &keys.set, &params) {
            Err(TokenError::UnknownKey(kid)) => {
                // A key published after our fetch; or a made-up kid, which
                // the rate limit makes cheap.
                let refreshed = self.refresh_limited().await;
                keys = self.current_keys().unwrap_or(keys);
                match verify(token, &keys.set, &params) {
                    Err(TokenError::UnknownKey(_)) => {
                        if let Err(e) = refreshed {
                            return Err(VerifyError::Keys(e));
                        }
                        return Err(VerifyError::Invalid(TokenError::UnknownKey(kid)));
                    }
                    other => other.map_err(VerifyError::Invalid)?,
                }
            }
            other => other.map_err(VerifyError::Invalid)?,
        };
        if !self.skip_binding {
            let der = presenter_cert_der.ok_or(VerifyError::NoCertificate)?;
            match claims.thumbprint() {
                None => return Err(VerifyError::Unbound),
                Some(t) if t != thumbprint(der) => return Err(VerifyError::BindingMismatch),
                Some(_) => {}
            }
        }
        #[cfg(test)]
        self.before_revocation_check();
        let mut revision = 0;
        if let Some(cache) = &self.cache {
            // Checked again with the revocations: one recorded unreadable
            // while the keys were fetched must not let the token pass.
            match cache.token_revoked_checked(&claims) {
                Ok(true) => {
                    tracing::debug!(jti = %claims.jti, "token revoked");
                    return Err(VerifyError::Revoked);
                }
                Ok(false) => {}
                Err(revision) => return Err(VerifyError::UnreadableRevocations { revision }),
            }
            if let Some(max) = self.max_staleness {
                let staleness = cache.staleness();
                if staleness > max {
                    return Err(VerifyError::Stale { staleness });
                }
            }
            revision = cache.revision();
        }
        Ok((VerifiedToken { claims, revision }, keys.epoch))
    }

    /// Fetches the JWKS now, whatever the rate limit, and returns the number
    /// of keys. Resource servers may call it at start-up to fail early.
    pub async fn refresh_keys(&self) -> Result<usize, ClientError> {
        let mut last = self.refreshed.lock().await;
        *last = Some(Instant::now());
        self.fetch().await
    }

    fn params(&self) -> VerifyParams {
        let mut p =
            VerifyParams::new(self.issuer.clone(), self.clock.now()).with_audience(&self.audience);
        p.leeway = self.leeway;
        p.max_len = self.max_token_len;
        p.max_chain = self.max_chain;
        p
    }

    fn current_keys(&self) -> Option<Keys> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The cache's count of complete sets taken (0 without a cache). The
    /// first sync counts: keys fetched before it (by
    /// [`refresh_keys`](Self::refresh_keys) at start-up) are fetched again
    /// once it lands, as the first snapshot may come from a cluster
    /// restored since and without their signing keys.
    fn epoch(&self) -> u64 {
        self.cache.as_ref().map_or(0, RevocationCache::sets_applied)
    }

    async fn keys(&self) -> Result<Keys, VerifyError> {
        if self.keys_behind() {
            // The revocation set was replaced since these keys were
            // fetched (a restore drops the backup's keys and the
            // revocations taken after it): no token is checked against
            // them until the JWKS is fetched again. A failed fetch refuses.
            self.refresh_for_snapshot().await?;
        }
        if let Some(k) = self.current_keys() {
            if self.keys_expired() {
                self.refresh_expired().await;
                return Ok(self.current_keys().unwrap_or(k));
            }
            return Ok(k);
        }
        self.refresh_limited().await.map_err(VerifyError::Keys)?;
        self.current_keys()
            .ok_or(VerifyError::Keys(ClientError::NoKeys))
    }

    fn fresh_until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.fresh_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the current set is past the max-age it was served with.
    fn keys_expired(&self) -> bool {
        self.fresh_until().is_some_and(|t| Instant::now() >= t)
    }

    /// Whether the current keys were fetched before the cache's first sync
    /// or its latest replacing snapshot.
    fn keys_behind(&self) -> bool {
        self.current_keys().is_some_and(|k| k.epoch != self.epoch())
    }

    /// Fetches the JWKS after the first sync or a replacing snapshot. The
    /// first attempt for a set goes out whatever the refresh interval (a
    /// resubscription after a node restart is ordinary, and must not refuse
    /// valid tokens for the rest of an interval; nor must keys fetched at
    /// start-up, just before the first sync); later ones, after a failure,
    /// wait for the interval. One fetch at a time: concurrent callers wait
    /// for it.
    async fn refresh_for_snapshot(&self) -> Result<(), VerifyError> {
        let mut last = self.refreshed.lock().await;
        // A snapshot landing during a fetch gets an attempt of its own;
        // bounded, as snapshots are (one per resubscription).
        for _ in 0..3 {
            if !self.keys_behind() {
                return Ok(());
            }
            let epoch = self.epoch();
            let first = self
                .epoch_tried
                .swap(epoch, std::sync::atomic::Ordering::AcqRel)
                != epoch;
            if !first && last.is_some_and(|t| t.elapsed() < self.min_refresh) {
                return Err(VerifyError::Keys(ClientError::NoKeys));
            }
            *last = Some(Instant::now());
            self.fetch().await.map_err(VerifyError::Keys)?;
        }
        if self.keys_behind() {
            return Err(VerifyError::Keys(ClientError::NoKeys));
        }
        Ok(())
    }

    /// Refreshes a set past its max-age, unless another call is fetching
    /// (the current set serves meanwhile) or the rate limit says wait. A
    /// failure keeps the current set (see the module docs).
    async fn refresh_expired(&self) {
        let Ok(mut last) = self.refreshed.try_lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(error = %e, "JWKS refresh after its max-age failed; the current keys stay in use");
        }
    }

    /// Fetches the JWKS unless a fetch started less than the minimum
    /// interval ago. `Ok(false)` when rate limited.
    async fn refresh_limited(&self) -> Result<bool, ClientError> {
        let mut last = self.refreshed.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return Ok(false);
        }
        *last = Some(Instant::now());
        self.fetch().await.map(|_| true)
    }

    async fn fetch(&self) -> Result<usize, ClientError> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Taken before the call: a snapshot applied while it runs makes the
        // next verification fetch again.
        let epoch = self.epoch();
        let resp = self
            .pool
            .call(|ch| async move {
                pb::key_service_client::KeyServiceClient::new(ch)
                    .get_jwks(pb::GetJwksRequest {})
                    .await
            })
            .await?;
        let set = KeySet::from_jwks_json(&resp.jwks_json)
            .map_err(|e| ClientError::BadResponse(format!("JWKS: {e}")))?;
        let n = set.len();
        tracing::debug!(
            keys = n,
            revision = resp.revision,
            max_age_s = resp.max_age_seconds,
            "JWKS fetched"
        );
        self.install_at(set, resp.max_age_seconds, epoch);
        Ok(n)
    }

    /// [`install_at`](Self::install_at) the cache's current set count.
    #[cfg(test)]
    fn install(&self, set: KeySet, max_age_seconds: u64) {
        self.install_at(set, max_age_seconds, self.epoch());
    }

    /// Makes `set` the current key set, fresh for `max_age_seconds` (0: no
    /// max-age), bounded below by the refresh interval and above by
    /// [`MAX_JWKS_AGE`]; it was fetched when the cache's set count was
    /// `epoch`. A refresh interval too long to add to now (a configured
    /// `Duration::MAX`) means the set never ages out: it is then refreshed
    /// on unknown `kid`s only, as without a max-age.
    fn install_at(&self, set: KeySet, max_age_seconds: u64, epoch: u64) {
        let fresh = (max_age_seconds > 0)
            .then(|| {
                let age = Duration::from_secs(max_age_seconds.min(MAX_JWKS_AGE.as_secs()));
                Instant::now().checked_add(age.max(self.min_refresh))
            })
            .flatten();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(Keys {
            set: Arc::new(set),
            epoch,
        });
        *self.fresh_until() = fresh;
    }

    #[cfg(test)]
    fn before_revocation_check(&self) {
        let mut race = self.race.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = race.as_mut() {
            f();
        }
    }

    #[cfg(test)]
    fn set_keys(&self, keys: KeySet) {
        self.install(keys, 0);
    }
}

#[cfg(test)]
#[path = "verifier_tests.rs"]
pub(crate) mod tests;
