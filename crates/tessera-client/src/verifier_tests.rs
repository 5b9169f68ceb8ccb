//! Unit tests of the verifier, and the fixtures other modules' tests share
//! (keys, claims, revocation snapshots).

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

    /// A verifier with the fixture's key over `cache`, with every check
    /// that can be relaxed relaxed: unbounded staleness, no binding.
    pub(crate) fn relaxed_verifier(&self, cache: &RevocationCache) -> Verifier {
        let mut cfg = self.config();
        cfg.danger_accept_unbounded_staleness()
            .danger_skip_certificate_binding();
        let v = Verifier::new(cfg, cache.clone()).unwrap();
        v.set_keys(KeySet::new([self.key.verifying_key()]));
        v
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

/// Applies a snapshot that replaces what `cache` had, then gives `v` the
/// fixture's key again (a replacing snapshot makes the verifier fetch the
/// JWKS, which these tests have no server for).
pub(crate) fn replace(
    f: &Fixture,
    v: &Verifier,
    cache: &RevocationCache,
    events: Vec<pb::WatchEvent>,
) {
    cache.apply_for_tests(events);
    v.set_keys(KeySet::new([f.key.verifying_key()]));
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
    // The first sync: keys from after it (those set before it are not used).
    replace(&f, &v, &cache, snapshot(6, vec![]));
    assert_eq!(v.verify(&token, Some(cert)).await.unwrap().revision, 6);

    // An ancestor.
    replace(
        &f,
        &v,
        &cache,
        snapshot(7, vec![revocation(Target::Jti("j1".into()), 0)]),
    );
    assert!(matches!(
        v.verify(&token, Some(cert)).await,
        Err(VerifyError::Revoked)
    ));
    // Its own jti.
    replace(
        &f,
        &v,
        &cache,
        snapshot(8, vec![revocation(Target::Jti("j3".into()), 0)]),
    );
    assert!(matches!(
        v.verify(&token, Some(cert)).await,
        Err(VerifyError::Revoked)
    ));
    // A descendant's revocation does not touch the ancestor.
    replace(
        &f,
        &v,
        &cache,
        snapshot(9, vec![revocation(Target::Jti("j4".into()), 0)]),
    );
    assert_eq!(v.verify(&token, Some(cert)).await.unwrap().revision, 9);
    // Subject cut-off at iat, then before it.
    let sub = || Target::Subject(claims().sub);
    replace(&f, &v, &cache, snapshot(10, vec![revocation(sub(), NOW)]));
    assert!(matches!(
        v.verify(&token, Some(cert)).await,
        Err(VerifyError::Revoked)
    ));
    replace(
        &f,
        &v,
        &cache,
        snapshot(11, vec![revocation(sub(), NOW - 1)]),
    );
    assert!(v.verify(&token, Some(cert)).await.is_ok());
    // Client cut-off.
    let client = Target::Client(claims().client_id);
    replace(
        &f,
        &v,
        &cache,
        snapshot(12, vec![revocation(client, NOW + 5)]),
    );
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
    let v = f.relaxed_verifier(&cache);
    let token = f.key.sign(&claims()).unwrap();
    assert!(matches!(
        v.verify(&token, CERT).await,
        Err(VerifyError::NotSynced)
    ));
    replace(&f, &v, &cache, snapshot(3, vec![]));
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
    replace(&f, &v, &cache, snapshot(3, vec![]));
    assert!(v.verify(&token, CERT).await.is_ok());
    // Revoked wins over stale: it is certain.
    replace(
        &f,
        &v,
        &cache,
        snapshot(4, vec![revocation(Target::Jti("j3".into()), 0)]),
    );
    cache.make_stale_for_tests(Duration::from_secs(31));
    assert!(matches!(
        v.verify(&token, CERT).await,
        Err(VerifyError::Revoked)
    ));
    replace(&f, &v, &cache, snapshot(5, vec![]));
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

/// A restore replaces the revocation set with the backup's (without the
/// revocations taken after it) and drops the backup's signing keys so that
/// those tokens stay dead. The verifier kept its cached JWKS for its whole
/// max-age, so a token revoked after the backup verified again.
#[tokio::test]
async fn a_restore_revived_a_token_revoked_after_the_backup_at_the_resource_server() {
    let f = fixture();
    let cache = RevocationCache::detached(f.clock.clone());
    cache.apply_for_tests(snapshot(100, vec![revocation(Target::Jti("j3".into()), 0)]));
    let v = f.verifier(Some(cache.clone()));
    v.install(KeySet::new([f.key.verifying_key()]), 600);
    let token = f.key.sign(&claims()).unwrap();
    assert!(matches!(
        v.verify(&token, CERT).await,
        Err(VerifyError::Revoked)
    ));
    // The restored cluster: a backup at revision 90, lifted by 2^32.
    let restored = 90 + (1u64 << 32) + 2;
    cache.apply_for_tests(snapshot(restored, vec![]));
    let fetches = v.fetches.load(std::sync::atomic::Ordering::Relaxed);
    let r = v.verify(&token, CERT).await;
    assert!(
        matches!(r, Err(VerifyError::Keys(_))),
        "keys older than the snapshot were used: {:?}",
        r.map(|t| t.claims.jti)
    );
    assert_eq!(
        v.fetches.load(std::sync::atomic::Ordering::Relaxed),
        fetches + 1,
        "the JWKS was fetched again"
    );
}

/// Keys were dated by the count of replacing snapshots, which the first
/// sync does not move: keys fetched before it (`refresh_keys` at start-up)
/// stayed in use after it, for their whole max-age, even when the first
/// snapshot came from a cluster restored since, which no longer signs with
/// them.
#[tokio::test]
async fn keys_fetched_before_the_first_sync_were_never_checked_against_it() {
    use std::sync::atomic::Ordering::Relaxed;
    let f = fixture();
    let cache = RevocationCache::detached(f.clock.clone());
    let v = Verifier::new(f.config(), cache.clone()).unwrap();
    v.install(KeySet::new([f.key.verifying_key()]), 600);
    let token = f.key.sign(&claims()).unwrap();
    cache.apply_for_tests(snapshot(1, vec![]));
    let r = v.verify(&token, CERT).await;
    assert!(
        matches!(r, Err(VerifyError::Keys(_))),
        "keys from before the first sync were used: {:?}",
        r.map(|t| t.claims.jti)
    );
    assert_eq!(v.fetches.load(Relaxed), 1, "the JWKS was fetched again");
    // Keys fetched after it serve; one more snapshot makes them old again.
    v.set_keys(KeySet::new([f.key.verifying_key()]));
    assert!(v.verify(&token, CERT).await.is_ok());
    cache.apply_for_tests(snapshot(2, vec![]));
    assert!(matches!(
        v.verify(&token, CERT).await,
        Err(VerifyError::Keys(_))
    ));
    assert_eq!(v.fetches.load(Relaxed), 2);
}

/// `Instant::now() + interval` panicked installing keys with a max-age when
/// the refresh interval was too large to add (`Duration::MAX`).
#[tokio::test]
async fn a_refresh_interval_too_large_to_add_panicked_the_key_install() {
    let f = fixture();
    let mut cfg = f.config();
    cfg.jwks_refresh_min_interval = Duration::MAX;
    let cache = RevocationCache::detached(f.clock.clone());
    cache.apply_for_tests(snapshot(1, vec![]));
    let v = Verifier::new(cfg, cache).unwrap();
    v.install(KeySet::new([f.key.verifying_key()]), 60);
    // Never ages out: refreshed on unknown `kid`s only.
    assert_eq!(*v.fresh_until(), None);
    let token = f.key.sign(&claims()).unwrap();
    assert!(v.verify(&token, CERT).await.is_ok());
}

/// A snapshot replacing the revocation set between a token's signature
/// check and its revocation check paired the keys fetched before it with
/// the revocations after it: after a restore, a token revoked after the
/// backup (signed by a key the restore dropped) was accepted.
#[tokio::test]
async fn a_snapshot_between_the_signature_and_the_revocation_check_paired_old_keys_with_new_revocations(
) {
    let f = fixture();
    let cache = RevocationCache::detached(f.clock.clone());
    cache.apply_for_tests(snapshot(100, vec![revocation(Target::Jti("j3".into()), 0)]));
    let v = f.verifier(Some(cache.clone()));
    let token = f.key.sign(&claims()).unwrap();
    assert!(matches!(
        v.verify(&token, CERT).await,
        Err(VerifyError::Revoked)
    ));
    let restored = 90 + (1u64 << 32) + 2;
    let landing = cache.clone();
    *v.race.lock().unwrap() = Some(Box::new(move || {
        if landing.revision() != restored {
            landing.apply_for_tests(snapshot(restored, vec![]));
        }
    }));
    let r = v.verify(&token, CERT).await;
    assert!(
        matches!(r, Err(VerifyError::Keys(_))),
        "keys older than the snapshot were used: {:?}",
        r.map(|t| t.claims.jti)
    );
    // Keys fetched after the snapshot serve again.
    *v.race.lock().unwrap() = None;
    v.set_keys(KeySet::new([f.key.verifying_key()]));
    assert_eq!(v.verify(&token, CERT).await.unwrap().claims.jti, "j3");
}

/// A revocation of a kind newer than this client must not pass for none:
/// the verifier refuses every token while the cache holds one, whatever
/// staleness it was told to accept.
#[tokio::test]
async fn an_unreadable_revocation_let_the_tokens_it_revoked_pass() {
    let f = fixture();
    let cache = RevocationCache::detached(f.clock.clone());
    let v = f.relaxed_verifier(&cache);
    let token = f.key.sign(&claims()).unwrap();
    replace(&f, &v, &cache, snapshot(3, vec![]));
    assert!(v.verify(&token, CERT).await.is_ok());
    let unknown = tessera_proto::WatchEvent {
        revision: 4,
        kind: Some(tessera_proto::watch_event::Kind::Revoked(
            tessera_proto::Revocations {
                revocations: vec![tessera_proto::Revocation {
                    target: None,
                    cutoff: 0,
                    until: u64::MAX,
                    cutoff_revision: 0,
                }],
            },
        )),
    };
    assert!(cache.try_apply_for_tests(unknown).is_err());
    assert!(matches!(
        v.verify(&token, CERT).await,
        Err(VerifyError::UnreadableRevocations { revision: 4 })
    ));
    // A snapshot replacing the set makes the verifier fetch keys again.
    replace(&f, &v, &cache, snapshot(5, vec![]));
    assert!(v.verify(&token, CERT).await.is_ok());
}

/// A revocation recorded unreadable while a verification fetched its keys
/// (between the early check and the revocation check) let the token pass
/// when unbounded staleness was accepted.
#[tokio::test]
async fn an_unreadable_revocation_landing_mid_verification_let_the_token_pass() {
    let f = fixture();
    let cache = RevocationCache::detached(f.clock.clone());
    let v = f.relaxed_verifier(&cache);
    let token = f.key.sign(&claims()).unwrap();
    replace(&f, &v, &cache, snapshot(3, vec![]));
    let landing = cache.clone();
    *v.race.lock().unwrap() = Some(Box::new(move || {
        let _ = landing.try_apply_for_tests(tessera_proto::WatchEvent {
            revision: 4,
            kind: None,
        });
    }));
    assert!(matches!(
        v.verify(&token, CERT).await,
        Err(VerifyError::UnreadableRevocations { revision: 4 })
    ));
}
