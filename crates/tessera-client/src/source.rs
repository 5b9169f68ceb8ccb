//! [`TokenSource`]: the caller's side. Gets the caller's own tokens
//! (`IssueToken`) and exchanged tokens (`ExchangeToken`), caches them per
//! audience and scopes, and renews them before they expire.
//!
//! Renewal is lazy: there is no background task. A call that finds its
//! cached token past its renewal point asks the cluster for a new one; while
//! the old token is still valid, concurrent callers keep getting it instead
//! of waiting, and if the renewal fails the old token is handed out until it
//! expires. An expired token is never handed out: past `exp`, a failed
//! renewal is an error. The renewal point is drawn per token, by default at
//! 80% of its lifetime ± 10%, so that many processes started together do
//! not renew together.
//!
//! Calls fail over across the cluster's nodes on `UNAVAILABLE` and
//! connection errors (following a leader hint when a node gives one);
//! refusals (`PERMISSION_DENIED`, `INVALID_ARGUMENT`, ...) are returned as
//! they are.
//!
//! A `RESOURCE_EXHAUSTED` or `UNAVAILABLE` answer may carry a retry hint
//! (`x-tessera-retry-after-ms`: a rate limit's refusal). The source honours
//! it: while it still holds a valid token it hands that one out and asks
//! the cluster again only once the hint has passed; without one it waits
//! for the hint and tries again, as long as the waits stay within
//! [`TokenSourceConfig::max_retry_wait`] — beyond that the error is
//! returned at once, carrying the hint ([`ClientError::retry_after`]).
//!
//! Any failed attempt, hint or not, also holds the token's slot off for a
//! backoff (or the hint, if longer): 1 s after the first failure, doubling
//! with each one after it up to 10 s, and reset by a success. Otherwise a
//! fast refusal (`PERMISSION_DENIED`, a refused connection) would cost the
//! cluster one request per caller request. With a valid token the backoff
//! is also at most a quarter of the time the token has left (so a few
//! attempts still fit before it expires), the hold never reaches its
//! expiry, and the token is handed out meanwhile. Without a valid token,
//! callers during the hold get the failed attempt's error again at once,
//! without a request and without waiting: a caller is never kept waiting
//! by the backoff, only told sooner. (The rare error that cannot be
//! copied, a failed connection set-up to a leader named in a hint, lets
//! the next call through.)
//!
//! A renewal point is never earlier than a tenth of the token's remaining
//! life (at least 1 s) after the token was received, whatever the renewal
//! settings and clocks say: a renewal point already passed on receipt
//! (`Renewal::Before` at least the lifetime, a fraction of 0, a local clock
//! ahead of the cluster's) would otherwise renew on every call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::Deserialize;

use super::conn::Pool;
use super::error::ClientError;
use crate::TlsFiles;
use tessera_proto as pb;
use tessera_token::clock::{Clock, SystemClock};

use tessera_proto::{
    GRANT_TYPE_TOKEN_EXCHANGE as EXCHANGE_GRANT, TOKEN_TYPE_ACCESS as ACCESS_TOKEN_TYPE,
};

/// When a cached token is renewed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Renewal {
    /// Once `fraction` of the token's lifetime has passed, moved by a random
    /// amount of at most ± `jitter` × lifetime.
    AtFraction {
        /// Between 0 and 1.
        fraction: f64,
        /// Between 0 and 1.
        jitter: f64,
    },
    /// `before` the token's expiry, moved by a random amount of at most
    /// ± `jitter`.
    Before {
        /// How long before expiry.
        before: Duration,
        /// Random spread around that point.
        jitter: Duration,
    },
}

impl Default for Renewal {
    /// At 80% of the lifetime ± 10%.
    fn default() -> Self {
        Renewal::AtFraction {
            fraction: 0.8,
            jitter: 0.1,
        }
    }
}

impl Renewal {
    fn check(&self) -> Result<(), ClientError> {
        let ok = match *self {
            Renewal::AtFraction { fraction, jitter } => {
                (0.0..=1.0).contains(&fraction) && (0.0..=1.0).contains(&jitter)
            }
            Renewal::Before { .. } => true,
        };
        if ok {
            Ok(())
        } else {
            Err(ClientError::InvalidConfig(
                "renewal fraction and jitter must be between 0 and 1",
            ))
        }
    }

    /// The unix second at which a token valid from `iat` to `exp` is
    /// renewed, for a uniform `r` in [0, 1). Always within
    /// [`iat`, `exp` - 1] (or `iat` for a token of at most one second).
    fn renew_at(&self, iat: u64, exp: u64, r: f64) -> u64 {
        let life = exp.saturating_sub(iat) as f64;
        let spread = 2.0 * r - 1.0;
        let offset = match *self {
            Renewal::AtFraction { fraction, jitter } => life * (fraction + jitter * spread),
            Renewal::Before { before, jitter } => {
                life - before.as_secs_f64() + jitter.as_secs_f64() * spread
            }
        };
        let latest = (life - 1.0).max(0.0);
        // `as` saturates, and the clamp keeps NaN out.
        iat.saturating_add(offset.clamp(0.0, latest) as u64)
    }
}

/// The earliest renewal point of a token received at `received` and kept
/// until `exp` (unix seconds): a tenth of its remaining life later, at
/// least a second. A point at or before receipt would renew on every call
/// (see the module docs); this bounds that to one renewal per second, and
/// to one per tenth of the lifetime for tokens of 20 s and more. It is at
/// most `exp` (a token of one second is renewed when it expires).
fn earliest_renewal(received: u64, exp: u64) -> u64 {
    let left = exp.saturating_sub(received);
    received.saturating_add((left / 10).max(1))
}

/// Default for [`TokenSourceConfig::max_retry_wait`].
pub const DEFAULT_MAX_RETRY_WAIT: Duration = Duration::from_secs(2);

/// Most attempts of one call that follows retry hints.
const MAX_ATTEMPTS: usize = 4;

/// The hold after a slot's first failed attempt (see the module docs).
const BACKOFF_MIN: Duration = Duration::from_secs(1);

/// The longest hold after failed attempts, however many failed: long
/// enough that a refusing cluster sees a trickle, short enough that a
/// caller without a token is not refused for long once it recovers.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Settings of a [`TokenSource`]. Build with [`TokenSourceConfig::new`]
/// and adjust the public fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct TokenSourceConfig {
    /// API addresses of the cluster's nodes.
    pub endpoints: Vec<String>,
    /// The caller's identity (its client certificate) and the cluster CA.
    /// Tokens are issued to, and bound to, this certificate.
    pub tls: TlsFiles,
    /// Server name to check in the nodes' certificates; `None`: each
    /// endpoint's host (a DNS name or an IP address).
    pub server_name: Option<String>,
    /// When to renew.
    pub renewal: Renewal,
    /// Lifetime to ask for; `None` takes the cluster's default. Policy may
    /// shorten it, and an exchanged token never outlives its subject token.
    pub lifetime: Option<Duration>,
    /// Bound on one call to a node.
    pub request_timeout: Duration,
    /// Most tokens kept (own and exchanged together); the ones expiring
    /// first are dropped beyond it.
    pub max_cached: usize,
    /// Wall clock, compared with the tokens' `iat` and `exp`.
    pub clock: Arc<dyn Clock>,
    /// Longest a call without a valid cached token waits in total for the
    /// cluster's retry hints before giving up (zero: never waits).
    pub max_retry_wait: Duration,
}

impl std::fmt::Debug for TokenSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSourceConfig")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls)
            .field("renewal", &self.renewal)
            .field("lifetime", &self.lifetime)
            .field("max_cached", &self.max_cached)
            .field("max_retry_wait", &self.max_retry_wait)
            .finish_non_exhaustive()
    }
}

impl TokenSourceConfig {
    /// Settings with the defaults: renew at 80% ± 10% of the lifetime, the
    /// cluster's default lifetime, 10 s calls, 1024 cached tokens, system
    /// clock.
    pub fn new(endpoints: Vec<String>, tls: TlsFiles) -> Self {
        Self {
            endpoints,
            tls,
            server_name: None,
            renewal: Renewal::default(),
            lifetime: None,
            request_timeout: Duration::from_secs(10),
            max_cached: 1024,
            clock: Arc::new(SystemClock),
            max_retry_wait: DEFAULT_MAX_RETRY_WAIT,
        }
    }
}

/// What a cached token is cached under. Scopes are sorted and deduplicated,
/// so that the order a caller lists them in does not matter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Own {
        audience: String,
        scopes: String,
    },
    /// The subject token is identified by its SHA-256, not by its `jti`
    /// claim: the claim is unverified here, and a forged token reusing a
    /// real `jti` must not be answered from the cache.
    Exchange {
        subject: [u8; 32],
        audience: String,
        scopes: String,
    },
}

/// A token and the times that govern it (unix seconds).
#[derive(Clone)]
struct Cached {
    token: String,
    jti: String,
    /// When it stops being handed out: its `exp`, or the subject token's
    /// if earlier.
    exp: u64,
    renew_at: u64,
}

#[derive(Default)]
struct Slot {
    cached: Mutex<Option<Cached>>,
    /// Held by the one caller renewing this slot. An async mutex on
    /// purpose: the holder awaits the cluster, and callers without a valid
    /// token wait for its answer instead of sending their own request.
    renewing: tokio::sync::Mutex<()>,
    /// When the slot may ask the cluster again after a failed attempt.
    hold: Mutex<Hold>,
    /// Renewal attempts finished (success or failure).
    finished: std::sync::atomic::AtomicU64,
    /// The last failed renewal's answer, if it can be shared (see
    /// [`shared_copy`]), and the attempt count it ended: callers that waited
    /// for it, or come during the hold that followed it, share it instead of
    /// each resending the request that just failed.
    failure: Mutex<Option<(u64, ClientError)>>,
}

impl Slot {
    fn cached(&self) -> Option<Cached> {
        self.cached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn store(&self, c: Cached) {
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = Some(c);
    }

    /// Records the end of a renewal attempt.
    fn finish(&self, failed: Option<&ClientError>) {
        let n = self
            .finished
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) =
            failed.and_then(shared_copy).map(|e| (n, e));
    }

    /// The failure of an attempt that ended after `seen` attempts had, if
    /// the latest one failed with an error that can be shared.
    fn failure_since(&self, seen: u64) -> Option<ClientError> {
        match &*self.failure.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((n, e)) if *n > seen => shared_copy(e),
            _ => None,
        }
    }

    fn hold(&self) -> std::sync::MutexGuard<'_, Hold> {
        self.hold.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the slot must not ask the cluster yet: a retry hint or the
    /// backoff after a failed attempt.
    fn held_off(&self) -> bool {
        self.hold()
            .until
            .is_some_and(|t| tokio::time::Instant::now() < t)
    }

    /// The error of the latest attempt, if it failed with one that can be
    /// shared.
    fn last_failure(&self) -> Option<ClientError> {
        self.failure_since(0)
    }
}

/// A slot's backoff after failed attempts (see the module docs).
#[derive(Default)]
struct Hold {
    /// No request before this instant.
    until: Option<tokio::time::Instant>,
    /// The backoff of the next failure: zero while the last attempt
    /// succeeded (the next failure then waits [`BACKOFF_MIN`]).
    next: Duration,
}

impl Hold {
    /// Holds off after a failed attempt: the backoff, at most a quarter of
    /// `left` (the time a valid token has left), at least the cluster's
    /// `hint`, and never past `left`.
    fn failed(&mut self, hint: Option<Duration>, left: Option<Duration>) {
        let backoff = self.next.max(BACKOFF_MIN);
        self.next = backoff.saturating_mul(2).min(BACKOFF_MAX);
        let mut wait = match left {
            Some(left) => backoff.min(left / 4),
            None => backoff,
        };
        if let Some(hint) = hint {
            wait = wait.max(hint);
        }
        if let Some(left) = left {
            wait = wait.min(left);
        }
        // At most a minute (hints are capped), so this cannot overflow;
        // if it did, there would be no hold rather than a panic.
        self.until = tokio::time::Instant::now().checked_add(wait);
    }

    fn succeeded(&mut self) {
        *self = Hold::default();
    }
}

/// A copy of a failed attempt's error, for the callers that share it: a
/// node's answer, or a token the source could not use (clocks apart);
/// `None` for the errors holding values that cannot be copied.
fn shared_copy(e: &ClientError) -> Option<ClientError> {
    match e {
        ClientError::BadResponse(m) => Some(ClientError::BadResponse(m.clone())),
        e => e.shared_copy(),
    }
}

/// The retry hint of an error worth retrying after it (rate limited, or
/// a node that said when to come back).
fn retry_hint(e: &ClientError) -> Option<Duration> {
    match e.code() {
        Some(tonic::Code::ResourceExhausted | tonic::Code::Unavailable) => e.retry_after(),
        _ => None,
    }
}

/// The claims the source reads from a token it received, unverified: the
/// cluster sent it over mutual TLS, and they only decide when to renew.
#[derive(Deserialize)]
struct Times {
    iat: u64,
    exp: u64,
    #[serde(default)]
    jti: String,
}

fn read_times(token: &str) -> Option<Times> {
    let payload = token.split('.').nth(1)?;
    let bytes = B64.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A uniform number in [0, 1) for the jitter; 0.5 (no jitter) if the
/// system's random source fails.
fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

fn scope_key(scopes: &[&str]) -> String {
    let mut s: Vec<&str> = scopes.to_vec();
    s.sort_unstable();
    s.dedup();
    s.join(" ")
}

fn scope_list(scopes: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(scopes.len());
    for s in scopes {
        if !out.iter().any(|o| o == s) {
            out.push((*s).to_string());
        }
    }
    out
}

/// Gets, caches and renews the caller's tokens. See the [module
/// documentation](self).
///
/// ```no_run
/// # async fn demo() -> Result<(), tessera_client::ClientError> {
/// use tessera_client::{TokenSource, TokenSourceConfig};
/// use tessera_client::TlsFiles;
///
/// let me = TlsFiles {
///     ca: "certs/ca.pem".into(),
///     cert: "certs/frontend.pem".into(),
///     key: "certs/frontend.key".into(),
/// };
/// let nodes = vec!["127.0.0.1:7443".into(), "127.0.0.1:7444".into()];
/// let tokens = TokenSource::new(TokenSourceConfig::new(nodes, me))?;
/// let token = tokens
///     .token("spiffe://tessera.dev/svc/orders", &["orders:write"])
///     .await?;
/// // Send it as `authorization: Bearer {token}` over the same certificate.
/// # let _ = token; Ok(()) }
/// ```
pub struct TokenSource {
    pool: Pool,
    renewal: Renewal,
    lifetime_seconds: u64,
    max_cached: usize,
    max_retry_wait: Duration,
    clock: Arc<dyn Clock>,
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("renewal", &self.renewal)
            .field("cached", &self.len())
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A token source; connects lazily, on the first call. Fails if no
    /// endpoint is given, a TLS file cannot be read or the renewal settings
    /// are out of range.
    pub fn new(config: TokenSourceConfig) -> Result<Self, ClientError> {
        config.renewal.check()?;
        if config.max_cached == 0 {
            return Err(ClientError::InvalidConfig("max_cached must be positive"));
        }
        let pool = Pool::new(
            &config.endpoints,
            &config.tls,
            config.server_name.as_deref(),
            config.request_timeout,
        )?;
        Ok(Self {
            pool,
            renewal: config.renewal,
            lifetime_seconds: config.lifetime.map_or(0, |d| d.as_secs().max(1)),
            max_cached: config.max_cached,
            max_retry_wait: config.max_retry_wait,
            clock: config.clock,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The caller's own token for `audience` with `scopes` (`IssueToken`),
    /// from the cache while it is before its renewal point.
    pub async fn token(&self, audience: &str, scopes: &[&str]) -> Result<String, ClientError> {
        let key = Key::Own {
            audience: audience.to_string(),
            scopes: scope_key(scopes),
        };
        let request = pb::IssueTokenRequest {
            audience: vec![audience.to_string()],
            scope: scope_list(scopes),
            lifetime_seconds: self.lifetime_seconds,
            ..Default::default()
        };
        self.get(key, None, || {
            let request = request.clone();
            self.pool.call(move |ch| {
                let request = request.clone();
                async move {
                    pb::token_service_client::TokenServiceClient::new(ch)
                        .issue_token(request)
                        .await
                }
            })
        })
        .await
    }

    /// A token exchanged from `subject_token` (delegation, RFC 8693) for
    /// `audience` with `scopes` (`ExchangeToken`), cached per subject
    /// token, audience and scopes, and never kept past the subject token's
    /// expiry.
    pub async fn exchange(
        &self,
        subject_token: &str,
        audience: &str,
        scopes: &[&str],
    ) -> Result<String, ClientError> {
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, subject_token.as_bytes());
        let mut subject = [0u8; 32];
        subject.copy_from_slice(digest.as_ref());
        let key = Key::Exchange {
            subject,
            audience: audience.to_string(),
            scopes: scope_key(scopes),
        };
        // Unverified, and only ever used to shorten how long the result is
        // kept; the cluster checks the subject token itself.
        let cap = read_times(subject_token).map(|t| t.exp);
        let request = pb::ExchangeTokenRequest {
            grant_type: EXCHANGE_GRANT.into(),
            subject_token: subject_token.to_string(),
            subject_token_type: ACCESS_TOKEN_TYPE.into(),
            audience: vec![audience.to_string()],
            scope: scope_list(scopes),
            requested_token_type: ACCESS_TOKEN_TYPE.into(),
            lifetime_seconds: self.lifetime_seconds,
            ..Default::default()
        };
        self.get(key, cap, || {
            let request = request.clone();
            self.pool.call(move |ch| {
                let request = request.clone();
                async move {
                    pb::token_service_client::TokenServiceClient::new(ch)
                        .exchange_token(request)
                        .await
                }
            })
        })
        .await
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every cached token (for example after a downstream service
    /// answered that a token was revoked): the next calls get new ones.
    pub fn clear(&self) {
        self.slots().clear();
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot for `key`, making room if the cache is full: expired or
    /// empty slots go first, then the ones expiring soonest.
    fn slot(&self, key: Key) -> Arc<Slot> {
        let now = self.clock.now();
        let mut slots = self.slots();
        if let Some(s) = slots.get(&key) {
            return s.clone();
        }
        if slots.len() >= self.max_cached {
            slots.retain(|_, s| s.cached().is_some_and(|c| now < c.exp));
            while slots.len() >= self.max_cached {
                let first = slots
                    .iter()
                    .min_by_key(|(_, s)| s.cached().map_or(0, |c| c.exp))
                    .map(|(k, _)| k.clone());
                match first {
                    Some(k) => slots.remove(&k),
                    None => break,
                };
            }
        }
        slots.entry(key).or_default().clone()
    }

    /// The cached token while it is before its renewal point, else a new
    /// one from `fetch`; the cached one if that fails and it has not
    /// expired. After a failure, the slot is held off for a backoff (see
    /// the module docs).
    async fn get<F, Fut>(&self, key: Key, cap: Option<u64>, fetch: F) -> Result<String, ClientError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<pb::TokenResponse, ClientError>>,
    {
        let slot = self.slot(key);
        let now = self.clock.now();
        let valid = slot.cached().filter(|c| now < c.exp);
        match &valid {
            // Before the renewal point, or held off after a failure.
            Some(c) if now < c.renew_at || slot.held_off() => return Ok(c.token.clone()),
            // Nothing to hand out and the last attempt failed moments ago:
            // its answer, rather than the same request again.
            None if slot.held_off() => {
                if let Some(e) = slot.last_failure() {
                    return Err(e);
                }
            }
            _ => {}
        }
        let seen = slot.finished.load(std::sync::atomic::Ordering::Acquire);
        let _renewing = match &valid {
            // Someone is renewing and this token is still good: use it.
            Some(c) => match slot.renewing.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(c.token.clone()),
            },
            None => slot.renewing.lock().await,
        };
        // Renewed, or failed and held off, while we waited?
        let now = self.clock.now();
        if let Some(c) = slot.cached() {
            if now < c.exp && (now < c.renew_at || slot.held_off()) {
                return Ok(c.token.clone());
            }
        }
        // The renewal we waited for failed: its answer is ours too (it
        // already followed the cluster's retry hints).
        let fetched = match slot.failure_since(seen) {
            Some(e) => Err(e),
            None => {
                let r = match self.fetch_with_hints(&slot, &fetch).await {
                    Ok(resp) => self.accept(resp, cap),
                    Err(e) => Err(e),
                };
                match &r {
                    Ok(_) => slot.hold().succeeded(),
                    Err(e) => {
                        let now = self.clock.now();
                        let left = slot
                            .cached()
                            .filter(|c| now < c.exp)
                            .map(|c| Duration::from_secs(c.exp - now));
                        slot.hold().failed(retry_hint(e), left);
                    }
                }
                slot.finish(r.as_ref().err());
                r
            }
        };
        match fetched {
            Ok(c) => {
                tracing::debug!(jti = %c.jti, exp = c.exp, renew_at = c.renew_at, "token obtained");
                let token = c.token.clone();
                slot.store(c);
                Ok(token)
            }
            Err(e) => match slot.cached() {
                Some(c) if self.clock.now() < c.exp => {
                    tracing::warn!(jti = %c.jti, exp = c.exp, error = %e, "token renewal failed; using the current token until it expires");
                    Ok(c.token)
                }
                _ => Err(e),
            },
        }
    }

    /// Calls `fetch`, following the cluster's retry hints (see the module
    /// docs): with a valid token cached, a hint only defers the next
    /// renewal (through the slot's hold, set by the caller); without one,
    /// the call waits for it while the waits fit in `max_retry_wait`, at
    /// most [`MAX_ATTEMPTS`] attempts.
    async fn fetch_with_hints<F, Fut>(
        &self,
        slot: &Slot,
        fetch: &F,
    ) -> Result<pb::TokenResponse, ClientError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<pb::TokenResponse, ClientError>>,
    {
        let mut waited = Duration::ZERO;
        let mut attempt = 1;
        loop {
            let e = match fetch().await {
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            };
            let Some(hint) = retry_hint(&e) else {
                return Err(e);
            };
            let valid = slot.cached().is_some_and(|c| self.clock.now() < c.exp);
            if valid || attempt >= MAX_ATTEMPTS || waited + hint > self.max_retry_wait {
                return Err(e);
            }
            tracing::debug!(wait_ms = hint.as_millis() as u64, error = %e, "retrying after the cluster's hint");
            tokio::time::sleep(hint).await;
            waited += hint;
            attempt += 1;
        }
    }

    /// Reads the times of a token the cluster sent and decides when to
    /// renew it. A token that is already expired (clocks apart) is refused
    /// rather than handed out.
    fn accept(&self, resp: pb::TokenResponse, cap: Option<u64>) -> Result<Cached, ClientError> {
        let times = read_times(&resp.access_token).ok_or_else(|| {
            ClientError::BadResponse("the issued token's claims are unreadable".into())
        })?;
        let exp = cap.map_or(times.exp, |cap| cap.min(times.exp));
        let now = self.clock.now();
        if exp <= now {
            return Err(ClientError::BadResponse(
                "the issued token has already expired (are the clocks apart?)".into(),
            ));
        }
        let jti = if times.jti.is_empty() {
            resp.jti
        } else {
            times.jti
        };
        let renew_at = self
            .renewal
            .renew_at(times.iat, exp, unit_random())
            .max(earliest_renewal(now, exp));
        Ok(Cached {
            renew_at,
            token: resp.access_token,
            jti,
            exp,
        })
    }

    #[cfg(test)]
    fn seed(&self, audience: &str, scopes: &[&str], c: Cached) {
        let key = Key::Own {
            audience: audience.to_string(),
            scopes: scope_key(scopes),
        };
        self.slot(key).store(c);
    }
}

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;
