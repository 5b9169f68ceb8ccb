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
    keys: RwLock<Option<Arc<KeySet>>>,
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
    cache: Option<RevocationCache>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("keys", &self.current_keys().map(|k| k.len()))
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
            cache,
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
        // Fail closed before any work: nothing is known about revocations.
        if let Some(cache) = &self.cache {
            if !cache.is_synced() {
                return Err(VerifyError::NotSynced);
            }
        }
        let params = self.params();
        let keys = self.keys().await?;
        let claims = match verify(token, &keys, &params) {
            Err(TokenError::UnknownKey(kid)) => {
                // A key published after our fetch; or a made-up kid, which
                // the rate limit makes cheap.
                let refreshed = self.refresh_limited().await;
                let keys = self.current_keys().unwrap_or(keys);
                match verify(token, &keys, &params) {
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
        let mut revision = 0;
        if let Some(cache) = &self.cache {
            if cache.is_token_revoked(&claims) {
                tracing::debug!(jti = %claims.jti, "token revoked");
                return Err(VerifyError::Revoked);
            }
            if let Some(max) = self.max_staleness {
                let staleness = cache.staleness();
                if staleness > max {
                    return Err(VerifyError::Stale { staleness });
                }
            }
            revision = cache.revision();
        }
        Ok(VerifiedToken { claims, revision })
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

    fn current_keys(&self) -> Option<Arc<KeySet>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn keys(&self) -> Result<Arc<KeySet>, VerifyError> {
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
        self.install(set, resp.max_age_seconds);
        Ok(n)
    }

    /// Makes `set` the current key set, fresh for `max_age_seconds` (0: no
    /// max-age), bounded below by the refresh interval and above by
    /// [`MAX_JWKS_AGE`].
    fn install(&self, set: KeySet, max_age_seconds: u64) {
        let fresh = (max_age_seconds > 0).then(|| {
            let age = Duration::from_secs(max_age_seconds.min(MAX_JWKS_AGE.as_secs()));
            Instant::now() + age.max(self.min_refresh)
        });
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(set));
        *self.fresh_until() = fresh;
    }

    #[cfg(test)]
    fn set_keys(&self, keys: KeySet) {
        self.install(keys, 0);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testpki::TestPki;
    use tessera_proto::revocation::Target;
    use tessera_proto::watch_event::Kind;
    use tessera_token::clock::ManualClock;
    use tessera_token::{generate_ed25519, Alg, Audience, Confirmation, SigningKey};

    const ISS: &str = "https://tessera.test";
    pub(crate) const AUD: &str = "spiffe://tessera.test/svc/ledger";
    const NOW: u64 = 1_800_000_000;
    /// What presents the fixture's tokens (their `cnf` names it).
    pub(crate) const CERT: Option<&[u8]> = Some(b"payments-cert");

    pub(crate) struct Fixture {
        _pki: TestPki,
        pub(crate) key: SigningKey,
        pub(crate) clock: Arc<ManualClock>,
        tls: TlsFiles,
    }

    pub(crate) fn fixture() -> Fixture {
        let pki = TestPki::new();
        let tls = pki.client("ledger");
        let (pkcs8, _) = generate_ed25519().unwrap();
        let key = SigningKey::from_pkcs8("k1".into(), Alg::EdDSA, &pkcs8).unwrap();
        Fixture {
            _pki: pki,
            key,
            clock: Arc::new(ManualClock::new(NOW)),
            tls,
        }
    }

    impl Fixture {
        fn config(&self) -> VerifierConfig {
            // Nothing listens on port 1: a fetch fails at once.
            let mut c = VerifierConfig::new(vec!["127.0.0.1:1".into()], self.tls.clone(), ISS, AUD);
            c.clock = self.clock.clone();
            c.request_timeout = Duration::from_secs(5);
            c
        }

        /// A verifier with the fixture's key; without a cache given, one
        /// that has synced (an empty snapshot).
        pub(crate) fn verifier(&self, cache: Option<RevocationCache>) -> Verifier {
            let cache = cache.unwrap_or_else(|| {
                let c = RevocationCache::detached(self.clock.clone());
                c.apply_for_tests(snapshot(1, vec![]));
                c
            });
            let v = Verifier::new(self.config(), cache).unwrap();
            v.set_keys(KeySet::new([self.key.verifying_key()]));
            v
        }
    }

    pub(crate) fn claims() -> Claims {
        Claims {
            iss: ISS.into(),
            sub: "spiffe://tessera.test/svc/frontend".into(),
            aud: Audience::one(AUD),
            exp: NOW + 300,
            iat: NOW,
            nbf: NOW,
            jti: "j3".into(),
            scope: "ledger:write".into(),
            client_id: "spiffe://tessera.test/svc/payments".into(),
            act: None,
            cnf: Some(Confirmation::from_cert_der(b"payments-cert")),
            may_act: None,
            chain: vec!["j1".into(), "j2".into()],
            rev: None,
            ancestor_clients: Vec::new(),
        }
    }

    pub(crate) fn revocation(target: Target, cutoff: u64) -> pb::Revocation {
        pb::Revocation {
            target: Some(target),
            cutoff,
            until: NOW + 1000,
            cutoff_revision: 0,
        }
    }

    pub(crate) fn snapshot(revision: u64, rs: Vec<pb::Revocation>) -> Vec<pb::WatchEvent> {
        let count = rs.len() as u64;
        vec![
            pb::WatchEvent {
                revision,
                kind: Some(Kind::Snapshot(pb::Revocations { revocations: rs })),
            },
            pb::WatchEvent {
                revision,
                kind: Some(Kind::SnapshotEnd(pb::SnapshotEnd { count })),
            },
        ]
    }

    #[tokio::test]
    async fn accepts_a_good_bound_token() {
        let f = fixture();
        let v = f.verifier(None);
        let token = f.key.sign(&claims()).unwrap();
        let ok = v.verify(&token, CERT).await.unwrap();
        assert_eq!(ok.claims, claims());
        assert_eq!(ok.revision, 1);
    }

    #[tokio::test]
    async fn token_without_presenting_certificate_was_accepted_unbound() {
        let f = fixture();
        let v = f.verifier(None);
        let token = f.key.sign(&claims()).unwrap();
        assert!(matches!(
            v.verify(&token, None).await,
            Err(VerifyError::NoCertificate)
        ));
        // Only the explicit opt-out skips the binding.
        let mut cfg = f.config();
        cfg.danger_skip_certificate_binding();
        let cache = RevocationCache::detached(f.clock.clone());
        cache.apply_for_tests(snapshot(1, vec![]));
        let lax = Verifier::new(cfg, cache).unwrap();
        lax.set_keys(KeySet::new([f.key.verifying_key()]));
        assert!(lax.verify(&token, None).await.is_ok());
        assert!(lax.verify(&token, Some(b"another-cert")).await.is_ok());
    }

    #[tokio::test]
    async fn binding_is_checked_against_the_presenter() {
        let f = fixture();
        let v = f.verifier(None);
        let token = f.key.sign(&claims()).unwrap();
        assert!(matches!(
            v.verify(&token, Some(b"another-cert")).await,
            Err(VerifyError::BindingMismatch)
        ));
        let mut c = claims();
        c.cnf = None;
        let unbound = f.key.sign(&c).unwrap();
        assert!(matches!(
            v.verify(&unbound, CERT).await,
            Err(VerifyError::Unbound)
        ));
        assert!(matches!(
            v.verify(&unbound, None).await,
            Err(VerifyError::NoCertificate)
        ));
    }

    #[tokio::test]
    async fn token_rules_come_from_the_token_layer() {
        let f = fixture();
        let v = f.verifier(None);
        let check = |c: Claims, want: TokenError| {
            let token = f.key.sign(&c).unwrap();
            let v = &v;
            async move {
                match v.verify(&token, CERT).await {
                    Err(VerifyError::Invalid(e)) => assert_eq!(e, want),
                    other => panic!("expected {want:?}, got {other:?}"),
                }
            }
        };
        let mut c = claims();
        c.aud = Audience::one("spiffe://tessera.test/svc/other");
        check(c, TokenError::WrongAudience).await;
        let mut c = claims();
        c.iss = "https://evil.test".into();
        check(c, TokenError::WrongIssuer).await;
        let mut c = claims();
        c.exp = NOW - 31;
        check(c, TokenError::Expired).await;
        let mut c = claims();
        c.exp = NOW - 29;
        let token = f.key.sign(&c).unwrap();
        assert!(v.verify(&token, CERT).await.is_ok(), "within the leeway");
        assert!(matches!(
            v.verify("not.a-token", CERT).await,
            Err(VerifyError::Invalid(TokenError::Malformed(_)))
        ));
        // Moving the clock moves `now`.
        let token = f.key.sign(&claims()).unwrap();
        f.clock.advance(400);
        assert!(matches!(
            v.verify(&token, CERT).await,
            Err(VerifyError::Invalid(TokenError::Expired))
        ));
    }

    #[tokio::test]
    async fn revocation_rules_use_the_cache() {
        let f = fixture();
        let cache = RevocationCache::detached(f.clock.clone());
        let v = f.verifier(Some(cache.clone()));
        let token = f.key.sign(&claims()).unwrap();
        let cert: &[u8] = b"payments-cert";
        assert!(matches!(
            v.verify(&token, Some(cert)).await,
            Err(VerifyError::NotSynced)
        ));
        cache.apply_for_tests(snapshot(6, vec![]));
        assert_eq!(v.verify(&token, Some(cert)).await.unwrap().revision, 6);

        // An ancestor.
        cache.apply_for_tests(snapshot(7, vec![revocation(Target::Jti("j1".into()), 0)]));
        assert!(matches!(
            v.verify(&token, Some(cert)).await,
            Err(VerifyError::Revoked)
        ));
        // Its own jti.
        cache.apply_for_tests(snapshot(8, vec![revocation(Target::Jti("j3".into()), 0)]));
        assert!(matches!(
            v.verify(&token, Some(cert)).await,
            Err(VerifyError::Revoked)
        ));
        // A descendant's revocation does not touch the ancestor.
        cache.apply_for_tests(snapshot(9, vec![revocation(Target::Jti("j4".into()), 0)]));
        assert_eq!(v.verify(&token, Some(cert)).await.unwrap().revision, 9);
        // Subject cut-off at iat, then before it.
        let sub = || Target::Subject(claims().sub);
        cache.apply_for_tests(snapshot(10, vec![revocation(sub(), NOW)]));
        assert!(matches!(
            v.verify(&token, Some(cert)).await,
            Err(VerifyError::Revoked)
        ));
        cache.apply_for_tests(snapshot(11, vec![revocation(sub(), NOW - 1)]));
        assert!(v.verify(&token, Some(cert)).await.is_ok());
        // Client cut-off.
        let client = Target::Client(claims().client_id);
        cache.apply_for_tests(snapshot(12, vec![revocation(client, NOW + 5)]));
        assert!(matches!(
            v.verify(&token, Some(cert)).await,
            Err(VerifyError::Revoked)
        ));
    }

    #[tokio::test]
    async fn never_synced_cache_said_not_revoked() {
        let f = fixture();
        let cache = RevocationCache::detached(f.clock.clone());
        // Even with every other check relaxed.
        let mut cfg = f.config();
        cfg.danger_accept_unbounded_staleness()
            .danger_skip_certificate_binding();
        let v = Verifier::new(cfg, cache.clone()).unwrap();
        v.set_keys(KeySet::new([f.key.verifying_key()]));
        let token = f.key.sign(&claims()).unwrap();
        assert!(matches!(
            v.verify(&token, CERT).await,
            Err(VerifyError::NotSynced)
        ));
        cache.apply_for_tests(snapshot(3, vec![]));
        assert!(v.verify(&token, CERT).await.is_ok());
        // Unbounded staleness was asked for explicitly.
        cache.make_stale_for_tests(Duration::from_secs(3600));
        assert!(v.verify(&token, CERT).await.is_ok());
    }

    #[tokio::test]
    async fn staleness_was_unbounded_by_default() {
        let f = fixture();
        let cache = RevocationCache::detached(f.clock.clone());
        // The default configuration, no staleness setting.
        let v = Verifier::new(f.config(), cache.clone()).unwrap();
        v.set_keys(KeySet::new([f.key.verifying_key()]));
        let token = f.key.sign(&claims()).unwrap();
        assert!(matches!(
            v.verify(&token, CERT).await,
            Err(VerifyError::NotSynced)
        ));
        cache.apply_for_tests(snapshot(3, vec![]));
        assert!(v.verify(&token, CERT).await.is_ok());
        // Revoked wins over stale: it is certain.
        cache.apply_for_tests(snapshot(4, vec![revocation(Target::Jti("j3".into()), 0)]));
        cache.make_stale_for_tests(Duration::from_secs(31));
        assert!(matches!(
            v.verify(&token, CERT).await,
            Err(VerifyError::Revoked)
        ));
        cache.apply_for_tests(snapshot(5, vec![]));
        assert!(v.verify(&token, CERT).await.is_ok());
        cache.make_stale_for_tests(Duration::from_secs(31));
        assert!(matches!(
            v.verify(&token, CERT).await,
            Err(VerifyError::Stale { .. })
        ));
    }

    #[tokio::test]
    async fn unknown_kid_refreshes_at_most_once_per_interval() {
        let f = fixture();
        let v = f.verifier(None);
        let (pkcs8, _) = generate_ed25519().unwrap();
        let new_key = SigningKey::from_pkcs8("k2".into(), Alg::EdDSA, &pkcs8).unwrap();
        let token = new_key.sign(&claims()).unwrap();
        // The refresh is attempted and fails (nothing listens).
        assert!(matches!(
            v.verify(&token, CERT).await,
            Err(VerifyError::Keys(ClientError::Status { .. }))
        ));
        // Within the interval: no new attempt, the kid is just unknown.
        match v.verify(&token, CERT).await {
            Err(VerifyError::Invalid(TokenError::UnknownKey(kid))) => assert_eq!(kid, "k2"),
            other => panic!("{other:?}"),
        }
        // Known keys keep working meanwhile.
        let good = f.key.sign(&claims()).unwrap();
        assert!(v.verify(&good, CERT).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_refreshed_once_past_their_max_age() {
        use std::sync::atomic::Ordering;
        let f = fixture();
        // A failed fetch may move paused time by a connect timeout (5 s):
        // a refresh interval well above it keeps the counts exact. The
        // cache's staleness is not what this test is about.
        let mut cfg = f.config();
        cfg.jwks_refresh_min_interval = Duration::from_secs(30);
        cfg.danger_accept_unbounded_staleness();
        let cache = RevocationCache::detached(f.clock.clone());
        cache.apply_for_tests(snapshot(1, vec![]));
        let v = Verifier::new(cfg, cache).unwrap();
        // As a fetch would leave them: fresh for the 60 s the cluster said.
        v.install(KeySet::new([f.key.verifying_key()]), 60);
        let token = f.key.sign(&claims()).unwrap();
        assert!(v.verify(&token, CERT).await.is_ok());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(v.verify(&token, CERT).await.is_ok());
        assert_eq!(v.fetches.load(Ordering::Relaxed), 0, "fresh: no fetch");
        // Past the max-age: one refresh is attempted. It fails (nothing
        // listens), and the current keys stay in use.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(v.verify(&token, CERT).await.is_ok());
        assert_eq!(v.fetches.load(Ordering::Relaxed), 1);
        // The next attempt waits for the refresh interval.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(v.verify(&token, CERT).await.is_ok());
        assert_eq!(v.fetches.load(Ordering::Relaxed), 1);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(v.verify(&token, CERT).await.is_ok());
        assert_eq!(v.fetches.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_max_age_is_bounded_both_ways() {
        let f = fixture();
        let v = f.verifier(None);
        let keys = || KeySet::new([f.key.verifying_key()]);
        let left = |v: &Verifier| v.fresh_until().map(|t| t - Instant::now());
        v.install(keys(), 0);
        assert_eq!(left(&v), None, "no max-age: refreshed on unknown kids only");
        v.install(keys(), 1);
        assert!(
            left(&v).unwrap() > Duration::from_secs(4),
            "at least the refresh interval"
        );
        v.install(keys(), u64::MAX);
        assert!(left(&v).unwrap() <= MAX_JWKS_AGE);
    }

    #[tokio::test]
    async fn no_keys_and_unreachable_cluster() {
        let f = fixture();
        let cache = RevocationCache::detached(f.clock.clone());
        cache.apply_for_tests(snapshot(1, vec![]));
        let v = Verifier::new(f.config(), cache).unwrap();
        let token = f.key.sign(&claims()).unwrap();
        assert!(matches!(
            v.verify(&token, CERT).await,
            Err(VerifyError::Keys(ClientError::Status { .. }))
        ));
        assert!(matches!(
            v.verify(&token, CERT).await,
            Err(VerifyError::Keys(ClientError::NoKeys))
        ));
    }

    #[test]
    fn config_is_checked() {
        let f = fixture();
        let mut c = f.config();
        c.audience.clear();
        assert!(matches!(
            Verifier::danger_without_revocations(c),
            Err(ClientError::InvalidConfig(_))
        ));
        let mut c = f.config();
        c.endpoints.clear();
        assert!(matches!(
            Verifier::danger_without_revocations(c),
            Err(ClientError::NoEndpoints)
        ));
    }

    #[test]
    fn errors_never_quote_the_token() {
        let errors = [
            VerifyError::Invalid(TokenError::BadSignature),
            VerifyError::Revoked,
            VerifyError::BindingMismatch,
            VerifyError::Unbound,
            VerifyError::Stale {
                staleness: Duration::from_secs(3),
            },
            VerifyError::Keys(ClientError::NoKeys),
            VerifyError::NotSynced,
            VerifyError::NoCertificate,
        ];
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "invalid token: bad signature",
                "token is revoked",
                "token is bound to another certificate",
                "token is not certificate-bound",
                "revocation data is stale (3s since the last fresh message)",
                "verification keys unavailable: no verification keys loaded yet",
                "revocation data not synced yet",
                "no presenting certificate to check the token's binding against",
            ]
        );
    }
}
