//! Per-caller rate limits: one token bucket per caller identity (the client
//! certificate's SPIFFE ID or DNS name) and RPC class, checked in a tower
//! layer in front of every gRPC route, before the request body is decoded.
//!
//! A refused call gets `RESOURCE_EXHAUSTED` with the time after which a
//! retry can succeed in the [`RETRY_AFTER_METADATA`] metadata (whole
//! milliseconds) and in the message. Refusals are counted per class
//! ([`RateLimiter::refusals`]) and logged at most once per
//! [`LOG_INTERVAL`], with the number of refusals not logged.
//!
//! Memory is bounded: at most [`RateLimits::max_identities`] callers are
//! tracked. When the table is full, callers whose buckets have refilled
//! (idle long enough to be indistinguishable from new ones) are dropped; if
//! none has, new callers share one overflow bucket set until room frees up,
//! so a flood of new identities cannot grow the table nor escape limits.
//!
//! [`WatchSlots`] is the per-identity share of a node's watch subscriber
//! limit: one caller cannot take every slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use super::rate_layer::{RateLimitLayer, RateLimited};
use super::ApiError;

/// Metadata key of a rate-limit refusal: milliseconds until a retry can
/// succeed (spelled once, in `tessera-proto`, for servers and clients).
pub const RETRY_AFTER_METADATA: &str = tessera_proto::RETRY_AFTER_METADATA;

/// Least time between two log lines about refusals.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Least time between two sweeps of a full identity table: a sweep is
/// linear in the table, so a full table of active callers is not swept on
/// every new caller.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What a call costs against: each class has its own bucket per caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcClass {
    /// `IssueToken` and `ExchangeToken`: signing and a policy decision.
    Issue,
    /// `Introspect` and `GetJwks`: reads.
    Introspect,
    /// `Revoke`: a replicated write.
    Revoke,
    /// `WatchRevocations`: new subscriptions (not the events they carry).
    Watch,
    /// Every `AdminService` call.
    Admin,
}

impl RpcClass {
    /// Every class, in the order of [`RpcClass::index`].
    pub const ALL: [RpcClass; 5] = [
        RpcClass::Issue,
        RpcClass::Introspect,
        RpcClass::Revoke,
        RpcClass::Watch,
        RpcClass::Admin,
    ];

    /// The name used in configuration, messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            RpcClass::Issue => "issue",
            RpcClass::Introspect => "introspect",
            RpcClass::Revoke => "revoke",
            RpcClass::Watch => "watch",
            RpcClass::Admin => "admin",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The class of a gRPC path (`/package.Service/Method`); `None` for
    /// calls that are not limited (health, reflection).
    pub fn of_path(path: &str) -> Option<RpcClass> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        match service {
            "tessera.v1.TokenService" => match method {
                "IssueToken" | "ExchangeToken" => Some(RpcClass::Issue),
                "Revoke" => Some(RpcClass::Revoke),
                // Introspect, and any method added later: the cheap class's
                // bucket is better than none.
                _ => Some(RpcClass::Introspect),
            },
            "tessera.v1.KeyService" => Some(RpcClass::Introspect),
            "tessera.v1.RevocationService" => Some(RpcClass::Watch),
            "tessera.v1.AdminService" => Some(RpcClass::Admin),
            _ => None,
        }
    }
}

impl std::str::FromStr for RpcClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RpcClass::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!("unknown RPC class {s:?} (issue, introspect, revoke, watch, admin, all)")
            })
    }
}

/// A token bucket's size: `per_second` tokens refill each second, up to
/// `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained calls per second.
    pub per_second: u32,
    /// Calls allowed at once after an idle period.
    pub burst: u32,
}

impl Rate {
    /// `per_second` sustained, `burst` at once.
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }

    /// Time for an empty bucket to refill: after this long idle, a caller's
    /// bucket is as good as new.
    fn refill_time(self) -> Duration {
        Duration::from_secs_f64(f64::from(self.burst) / f64::from(self.per_second.max(1)))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.per_second, self.burst)
    }
}

/// Per-caller limits, one optional [`Rate`] per [`RpcClass`] (`None`:
/// unlimited).
///
/// The defaults are per caller identity, and one identity is often many
/// replicas of a service, so they leave room for a busy service while
/// keeping one caller from taking a node (which does roughly 20k
/// introspections or 15k exchanges per second on two cores):
///
/// | class | per second | burst |
/// |---|---|---|
/// | issue (issue, exchange) | 2,000 | 4,000 |
/// | introspect (introspect, JWKS) | 5,000 | 10,000 |
/// | revoke | 1,000 | 2,000 |
/// | watch (new subscriptions) | 100 | 500 |
/// | admin | 50 | 100 |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// `IssueToken`, `ExchangeToken`.
    pub issue: Option<Rate>,
    /// `Introspect`, `GetJwks`.
    pub introspect: Option<Rate>,
    /// `Revoke`.
    pub revoke: Option<Rate>,
    /// New `WatchRevocations` subscriptions.
    pub watch: Option<Rate>,
    /// `AdminService`.
    pub admin: Option<Rate>,
    /// Most caller identities tracked at once (memory bound).
    pub max_identities: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            issue: Some(Rate::new(2_000, 4_000)),
            introspect: Some(Rate::new(5_000, 10_000)),
            revoke: Some(Rate::new(1_000, 2_000)),
            watch: Some(Rate::new(100, 500)),
            admin: Some(Rate::new(50, 100)),
            max_identities: 10_000,
        }
    }
}

impl RateLimits {
    /// No limit on any class (benchmarks, development clusters).
    pub fn unlimited() -> Self {
        Self {
            issue: None,
            introspect: None,
            revoke: None,
            watch: None,
            admin: None,
            max_identities: RateLimits::default().max_identities,
        }
    }

    /// The limit of `class`.
    pub fn get(&self, class: RpcClass) -> Option<Rate> {
        match class {
            RpcClass::Issue => self.issue,
            RpcClass::Introspect => self.introspect,
            RpcClass::Revoke => self.revoke,
            RpcClass::Watch => self.watch,
            RpcClass::Admin => self.admin,
        }
    }

    /// Sets the limit of `class`.
    pub fn set(&mut self, class: RpcClass, rate: Option<Rate>) {
        let slot = match class {
            RpcClass::Issue => &mut self.issue,
            RpcClass::Introspect => &mut self.introspect,
            RpcClass::Revoke => &mut self.revoke,
            RpcClass::Watch => &mut self.watch,
            RpcClass::Admin => &mut self.admin,
        };
        *slot = rate;
    }

    /// Applies one setting written `CLASS=PER_SECOND/BURST` or `CLASS=off`,
    /// where `CLASS` is a class name or `all` (e.g. `issue=500/1000`,
    /// `admin=off`, `all=off`). `/BURST` may be left out: twice the rate.
    pub fn apply(&mut self, spec: &str) -> Result<(), String> {
        let (class, value) = spec.split_once('=').ok_or_else(|| {
            format!("rate limit {spec:?}: expected CLASS=RATE/BURST or CLASS=off")
        })?;
        let rate = if value == "off" {
            None
        } else {
            let (per_second, burst) = match value.split_once('/') {
                Some((r, b)) => (r, Some(b)),
                None => (value, None),
            };
            let num = |s: &str| {
                s.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("rate limit {spec:?}: {s:?} is not a positive number"))
            };
            let per_second = num(per_second)?;
            let burst = match burst {
                Some(b) => num(b)?,
                None => per_second.saturating_mul(2),
            };
            Some(Rate::new(per_second, burst))
        };
        if class == "all" {
            for c in RpcClass::ALL {
                self.set(c, rate);
            }
        } else {
            let class = class
                .parse()
                .map_err(|e| format!("rate limit {spec:?}: {e}"))?;
            self.set(class, rate);
        }
        Ok(())
    }

    /// Checks the values no type can.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_identities == 0 {
            return Err("rate limit identity table must hold at least one caller".into());
        }
        for c in RpcClass::ALL {
            if let Some(r) = self.get(c) {
                if r.per_second == 0 || r.burst == 0 {
                    return Err(format!(
                        "rate limit for {}: rate and burst must be positive",
                        c.name()
                    ));
                }
            }
        }
        Ok(())
    }

    /// How long a caller must be idle before its buckets are all full
    /// again, so that forgetting it changes nothing.
    fn idle_after(&self) -> Duration {
        RpcClass::ALL
            .into_iter()
            .filter_map(|c| self.get(c))
            .map(Rate::refill_time)
            .max()
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            updated: now,
        }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let per_second = f64::from(rate.per_second);
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(f64::from(rate.burst));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_second))
        }
    }
}

/// One caller's buckets, created full.
#[derive(Debug)]
struct Entry {
    buckets: [Option<Bucket>; 5],
    last_seen: Instant,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            buckets: [None; 5],
            last_seen: now,
        }
    }

    fn take(&mut self, class: RpcClass, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.last_seen = now;
        self.buckets[class.index()]
            .get_or_insert_with(|| Bucket::full(rate, now))
            .take(rate, now)
    }
}

#[derive(Debug)]
struct Table {
    callers: HashMap<String, Entry>,
    /// Shared by new callers while the table is full.
    overflow: Entry,
    last_sweep: Option<Instant>,
}

#[derive(Debug, Default)]
struct LogState {
    last: Option<Instant>,
    suppressed: u64,
}

/// The rate limiter of one node. See the [module documentation](self).
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    idle_after: Duration,
    // A std mutex: held for a hash lookup and a few float operations,
    // never across an await.
    table: Mutex<Table>,
    refused: [AtomicU64; 5],
    log: Mutex<LogState>,
}

impl RateLimiter {
    /// A limiter enforcing `limits`.
    pub fn new(limits: RateLimits) -> Self {
        let now = Instant::now();
        Self {
            idle_after: limits.idle_after(),
            limits,
            table: Mutex::new(Table {
                callers: HashMap::new(),
                overflow: Entry::new(now),
                last_sweep: None,
            }),
            refused: Default::default(),
            log: Mutex::new(LogState::default()),
        }
    }

    /// The limits enforced.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Refusals of `class` since start.
    pub fn refusals(&self, class: RpcClass) -> u64 {
        self.refused[class.index()].load(Ordering::Relaxed)
    }

    /// Caller identities tracked now (at most `max_identities`).
    pub fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .callers
            .len()
    }

    /// Charges one call of `class` to `caller`; a refusal is
    /// [`ApiError::RateLimited`].
    pub fn check(&self, caller: &str, class: RpcClass) -> Result<(), ApiError> {
        self.check_at(caller, class, Instant::now())
    }

    fn check_at(&self, caller: &str, class: RpcClass, now: Instant) -> Result<(), ApiError> {
        let Some(rate) = self.limits.get(class) else {
            return Ok(());
        };
        let verdict = {
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            self.entry(&mut table, caller, now).take(class, rate, now)
        };
        let Err(retry_after) = verdict else {
            return Ok(());
        };
        self.refused[class.index()].fetch_add(1, Ordering::Relaxed);
        self.log_refusal(caller, class, rate, now);
        Err(ApiError::RateLimited {
            class: class.name(),
            retry_after,
        })
    }

    /// The caller's entry: found, created, or the overflow entry when the
    /// table is full of active callers.
    fn entry<'t>(&self, table: &'t mut Table, caller: &str, now: Instant) -> &'t mut Entry {
        if !table.callers.contains_key(caller) {
            if table.callers.len() >= self.limits.max_identities {
                let due = table
                    .last_sweep
                    .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_INTERVAL);
                if due {
                    table.last_sweep = Some(now);
                    let idle = self.idle_after;
                    table
                        .callers
                        .retain(|_, e| now.saturating_duration_since(e.last_seen) < idle);
                }
            }
            if table.callers.len() >= self.limits.max_identities {
                return &mut table.overflow;
            }
            table.callers.insert(caller.to_owned(), Entry::new(now));
        }
        table
            .callers
            .get_mut(caller)
            .expect("present: found or inserted above")
    }

    fn log_refusal(&self, caller: &str, class: RpcClass, rate: Rate, now: Instant) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < LOG_INTERVAL)
        {
            log.suppressed += 1;
            return;
        }
        tracing::warn!(
            caller,
            class = class.name(),
            limit = %rate,
            not_logged_since_last = log.suppressed,
            "rate limit: call refused"
        );
        log.last = Some(now);
        log.suppressed = 0;
    }
}

/// HTTP/2 settings of the public listener (see `docs/OPERATIONS.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Limits {
    /// Streams (calls) open at once on one connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Largest header block a client may send, bytes
    /// (`SETTINGS_MAX_HEADER_LIST_SIZE`).
    pub max_header_list_size: u32,
    /// Interval of HTTP/2 pings on an idle connection.
    pub keepalive_interval: Duration,
    /// A connection whose peer does not answer a ping in this time is
    /// closed.
    pub keepalive_timeout: Duration,
    /// A connection is drained (HTTP/2 `GOAWAY`: no new calls) after this
    /// long, so one that idles (its client answering pings) does not hold
    /// a connection slot forever. Calls in flight get
    /// `max_connection_age_grace` to finish; a revocation stream still open
    /// then is cut and resumes (on this node or another) from its revision.
    pub max_connection_age: Duration,
    /// See `max_connection_age`.
    pub max_connection_age_grace: Duration,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 1024,
            max_header_list_size: 16 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(3600),
            max_connection_age_grace: Duration::from_secs(60),
        }
    }
}

/// Everything that bounds what callers can make the public listener do:
/// rate limits, connection limits, HTTP/2 settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerLimits {
    /// Per-caller, per-class rate limits.
    pub rate: RateLimits,
    /// Connection caps and handshake/preface timeouts.
    pub accept: crate::tls::AcceptOptions,
    /// HTTP/2 settings.
    pub http2: Http2Limits,
}

impl ServerLimits {
    /// Checks the values no type can.
    pub fn validate(&self) -> Result<(), String> {
        self.rate.validate()?;
        self.accept.validate()?;
        let h = &self.http2;
        if h.max_concurrent_streams == 0 || h.max_header_list_size < 1024 {
            return Err(
                "HTTP/2 limits: at least one stream and 1 KiB of headers per connection".into(),
            );
        }
        if h.keepalive_interval.is_zero() || h.keepalive_timeout.is_zero() {
            return Err("HTTP/2 keepalive interval and timeout must be positive".into());
        }
        if h.max_connection_age.is_zero() {
            return Err("the maximum connection age must be positive".into());
        }
        Ok(())
    }
}

/// The per-identity share of a node's watch subscriber slots.
#[derive(Debug)]
pub struct WatchSlots {
    per_identity: usize,
    // A std mutex: held for a map update, never across an await.
    held: Mutex<HashMap<String, usize>>,
}

/// One subscriber's slot; given back when dropped.
#[derive(Debug)]
pub struct WatchSlot {
    slots: Arc<WatchSlots>,
    caller: String,
}

impl WatchSlots {
    /// At most `per_identity` concurrent subscribers per caller identity.
    pub fn new(per_identity: usize) -> Arc<Self> {
        Arc::new(Self {
            per_identity,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `caller`, or refuses with `RESOURCE_EXHAUSTED`.
    /// The table holds only callers with a live subscriber, so it is
    /// bounded by the node's subscriber limit.
    pub fn acquire(self: &Arc<Self>, caller: &str) -> Result<WatchSlot, ApiError> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(caller.to_owned()).or_insert(0);
        if *n >= self.per_identity {
            return Err(ApiError::ResourceExhausted(format!(
                "this caller already has {} watchers on this node (the most one identity may hold)",
                self.per_identity
            )));
        }
        *n += 1;
        Ok(WatchSlot {
            slots: self.clone(),
            caller: caller.to_owned(),
        })
    }

    /// Slots `caller` holds now.
    pub fn held(&self, caller: &str) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(caller)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn limiter(rate: Rate, max_identities: usize) -> RateLimiter {
        let mut l = RateLimits::unlimited();
        l.apply(&format!("all={}/{}", rate.per_second, rate.burst))
            .unwrap();
        l.max_identities = max_identities;
        RateLimiter::new(l)
    }

    #[test]
    fn classes_of_paths() {
        let c = |p| RpcClass::of_path(p);
        assert_eq!(
            c("/tessera.v1.TokenService/IssueToken"),
            Some(RpcClass::Issue)
        );
        assert_eq!(
            c("/tessera.v1.TokenService/ExchangeToken"),
            Some(RpcClass::Issue)
        );
        assert_eq!(
            c("/tessera.v1.TokenService/Introspect"),
            Some(RpcClass::Introspect)
        );
        assert_eq!(c("/tessera.v1.TokenService/Revoke"), Some(RpcClass::Revoke));
        assert_eq!(
            c("/tessera.v1.KeyService/GetJwks"),
            Some(RpcClass::Introspect)
        );
        assert_eq!(
            c("/tessera.v1.RevocationService/WatchRevocations"),
            Some(RpcClass::Watch)
        );
        assert_eq!(
            c("/tessera.v1.AdminService/ClusterStatus"),
            Some(RpcClass::Admin)
        );
        assert_eq!(c("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            c("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(c("garbage"), None);
    }

    #[test]
    fn specs_parse_and_bad_ones_are_named() {
        let mut l = RateLimits::default();
        l.apply("issue=10/20").unwrap();
        assert_eq!(l.issue, Some(Rate::new(10, 20)));
        l.apply("revoke=7").unwrap();
        assert_eq!(l.revoke, Some(Rate::new(7, 14)));
        l.apply("admin=off").unwrap();
        assert_eq!(l.admin, None);
        l.apply("all=off").unwrap();
        assert_eq!(l, RateLimits::unlimited());
        for bad in [
            "issue",
            "bogus=1/2",
            "issue=0/1",
            "issue=1/0",
            "issue=x",
            "issue=1/2/3",
        ] {
            assert!(l.apply(bad).is_err(), "{bad}");
        }
        assert!(RateLimits::default().validate().is_ok());
    }

    #[test]
    fn burst_then_refusal_with_retry_hint_then_refill() {
        let l = limiter(Rate::new(10, 3), 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.check_at("a", RpcClass::Issue, t0).unwrap();
        }
        let e = l.check_at("a", RpcClass::Issue, t0).unwrap_err();
        let ApiError::RateLimited { class, retry_after } = e.clone() else {
            panic!("{e:?}")
        };
        assert_eq!(class, "issue");
        assert_eq!(retry_after, Duration::from_millis(100));
        assert_eq!(l.refusals(RpcClass::Issue), 1);
        // Other classes and other callers have their own buckets.
        l.check_at("a", RpcClass::Revoke, t0).unwrap();
        l.check_at("b", RpcClass::Issue, t0).unwrap();
        // After the hinted wait, one more call goes through.
        l.check_at("a", RpcClass::Issue, t0 + retry_after).unwrap();
        assert!(l.check_at("a", RpcClass::Issue, t0 + retry_after).is_err());
        assert_eq!(l.refusals(RpcClass::Issue), 2);
    }

    #[test]
    fn unlimited_class_is_not_tracked() {
        let l = RateLimiter::new(RateLimits::unlimited());
        for _ in 0..10_000 {
            l.check("a", RpcClass::Issue).unwrap();
        }
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn identity_table_is_bounded_and_idle_callers_are_evicted() {
        // Refill time 1 s: a caller idle for 1 s is forgotten.
        let l = limiter(Rate::new(2, 2), 3);
        let t0 = Instant::now();
        for c in ["a", "b", "c"] {
            l.check_at(c, RpcClass::Issue, t0).unwrap();
        }
        // Full of active callers: newcomers share the overflow bucket.
        for c in 0..100 {
            let _ = l.check_at(&format!("new{c}"), RpcClass::Issue, t0);
        }
        assert_eq!(l.tracked(), 3);
        assert!(l.check_at("new-x", RpcClass::Issue, t0).is_err());
        // Once the others are idle, a newcomer gets its own entry.
        let later = t0 + Duration::from_secs(2);
        l.check_at("d", RpcClass::Issue, later).unwrap();
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn rate_limited_error_carries_the_retry_hint() {
        let s = tonic::Status::from(ApiError::RateLimited {
            class: "issue",
            retry_after: Duration::from_micros(1_500),
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get(RETRY_AFTER_METADATA).unwrap(), "2");
        assert!(s.message().contains("issue"), "{}", s.message());
    }

    #[test]
    fn watch_slots_per_identity() {
        let slots = WatchSlots::new(2);
        let a1 = slots.acquire("a").unwrap();
        let _a2 = slots.acquire("a").unwrap();
        let e = slots.acquire("a").unwrap_err();
        assert_eq!(tonic::Status::from(e).code(), Code::ResourceExhausted);
        let _b = slots.acquire("b").unwrap();
        drop(a1);
        assert_eq!(slots.held("a"), 1);
        let _a3 = slots.acquire("a").unwrap();
        drop(_a2);
        drop(_a3);
        assert_eq!(slots.held("a"), 0);
        assert_eq!(slots.held.lock().unwrap().len(), 1, "only b is left");
    }
}
