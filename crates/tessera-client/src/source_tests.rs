//! Unit tests of the token source: renewal timing, failover and errors.

use super::*;
use crate::testpki::TestPki;
use tessera_token::clock::ManualClock;

const T0: u64 = 1_800_000_000;

#[test]
fn renewal_points() {
    let r = Renewal::default();
    // 100 s token: 80 s ± 10 s.
    assert_eq!(r.renew_at(T0, T0 + 100, 0.5), T0 + 80);
    assert_eq!(r.renew_at(T0, T0 + 100, 0.0), T0 + 70);
    assert_eq!(r.renew_at(T0, T0 + 100, 0.999_999), T0 + 89);
    // Always before expiry, never before issuance.
    let late = Renewal::AtFraction {
        fraction: 1.0,
        jitter: 1.0,
    };
    assert_eq!(late.renew_at(T0, T0 + 100, 0.999), T0 + 99);
    assert_eq!(late.renew_at(T0, T0 + 100, 0.0), T0);
    let before = Renewal::Before {
        before: Duration::from_secs(30),
        jitter: Duration::from_secs(5),
    };
    assert_eq!(before.renew_at(T0, T0 + 100, 0.5), T0 + 70);
    assert_eq!(before.renew_at(T0, T0 + 100, 0.0), T0 + 65);
    assert_eq!(before.renew_at(T0, T0 + 10, 0.5), T0);
    // Degenerate tokens.
    assert_eq!(r.renew_at(T0, T0 + 1, 0.5), T0);
    assert_eq!(r.renew_at(T0, T0, 0.5), T0);
    assert_eq!(r.renew_at(T0 + 5, T0, 0.5), T0 + 5);
}

#[test]
fn jitter_spreads_renewals() {
    let r = Renewal::default();
    let points: std::collections::BTreeSet<u64> = (0..200)
        .map(|_| r.renew_at(T0, T0 + 1000, unit_random()))
        .collect();
    assert!(points.len() > 20, "{points:?}");
    assert!(points.iter().all(|p| (T0 + 700..=T0 + 900).contains(p)));
}

#[test]
fn renewal_settings_are_checked() {
    for (fraction, jitter) in [(1.5, 0.1), (0.8, -0.1), (f64::NAN, 0.1), (0.8, 2.0)] {
        assert!(Renewal::AtFraction { fraction, jitter }.check().is_err());
    }
    assert!(Renewal::default().check().is_ok());
}

#[test]
fn scopes_are_keyed_in_any_order() {
    assert_eq!(scope_key(&["b", "a", "b"]), "a b");
    assert_eq!(scope_key(&["a", "b"]), scope_key(&["b", "a"]));
    assert_eq!(scope_list(&["b", "a", "b"]), ["b", "a"]);
}

#[test]
fn times_are_read_from_the_payload() {
    let payload = B64.encode(br#"{"iat":10,"exp":20,"jti":"j","sub":"x"}"#);
    let t = read_times(&format!("h.{payload}.s")).unwrap();
    assert_eq!((t.iat, t.exp, t.jti.as_str()), (10, 20, "j"));
    assert!(read_times("nodots").is_none());
    assert!(read_times("h.!!!.s").is_none());
    assert!(read_times(&format!("h.{}.s", B64.encode(b"{\"iat\":\"10\"}"))).is_none());
}

struct Fixture {
    _pki: TestPki,
    clock: Arc<ManualClock>,
    source: TokenSource,
}

/// A source whose cluster is unreachable (port 1), so that every renewal
/// fails.
fn unreachable() -> Fixture {
    let pki = TestPki::new();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = TokenSourceConfig::new(vec!["127.0.0.1:1".into()], pki.client("frontend"));
    cfg.clock = clock.clone();
    cfg.max_cached = 2;
    let source = TokenSource::new(cfg).unwrap();
    Fixture {
        _pki: pki,
        clock,
        source,
    }
}

fn cached(token: &str, exp: u64, renew_at: u64) -> Cached {
    Cached {
        token: token.into(),
        jti: token.into(),
        exp,
        renew_at,
    }
}

#[tokio::test]
async fn never_hands_out_an_expired_token() {
    let f = unreachable();
    f.source
        .seed("aud", &["s"], cached("t1", T0 + 100, T0 + 80));
    // Before the renewal point: from the cache, no call.
    assert_eq!(f.source.token("aud", &["s"]).await.unwrap(), "t1");
    // Past it, the renewal fails, the token is still valid: it is used.
    f.clock.advance(90);
    assert_eq!(f.source.token("aud", &["s"]).await.unwrap(), "t1");
    // At `exp`: an error, never the expired token.
    f.clock.advance(10);
    let e = f.source.token("aud", &["s"]).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Unavailable), "{e}");
}

#[tokio::test]
async fn a_first_call_without_cluster_fails() {
    let f = unreachable();
    let e = f.source.token("aud", &["s"]).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Unavailable), "{e}");
    let e = f.source.exchange("a.b.c", "aud", &["s"]).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Unavailable), "{e}");
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let f = unreachable();
    f.source.seed("a", &["s"], cached("ta", T0 + 100, T0 + 80));
    f.source.seed("b", &["s"], cached("tb", T0 + 50, T0 + 40));
    assert_eq!(f.source.len(), 2);
    // Full: the one expiring first goes.
    f.source.seed("c", &["s"], cached("tc", T0 + 70, T0 + 60));
    assert_eq!(f.source.len(), 2);
    assert_eq!(f.source.token("a", &["s"]).await.unwrap(), "ta");
    assert_eq!(f.source.token("c", &["s"]).await.unwrap(), "tc");
    f.source.clear();
    assert!(f.source.is_empty());
}

/// A token response the source accepts, valid for 100 s from `T0`.
fn issued(jti: &str) -> pb::TokenResponse {
    let payload = B64.encode(format!(
        r#"{{"iat":{T0},"exp":{},"jti":"{jti}"}}"#,
        T0 + 100
    ));
    pb::TokenResponse {
        access_token: format!("h.{payload}.s"),
        jti: jti.into(),
        ..Default::default()
    }
}

/// What a rate-limited node answers.
fn rate_limited(ms: u64) -> ClientError {
    let mut s = tonic::Status::resource_exhausted("rate limit for issue calls exceeded");
    s.metadata_mut().insert(
        tessera_proto::RETRY_AFTER_METADATA,
        ms.to_string().parse().unwrap(),
    );
    ClientError::status("n1:1", &s)
}

fn own(aud: &str) -> Key {
    Key::Own {
        audience: aud.into(),
        scopes: scope_key(&["s"]),
    }
}

// Paused time: the waits are virtual, and measured exactly.
#[tokio::test(start_paused = true)]
async fn without_a_token_the_retry_hint_is_waited_for_then_retried() {
    let f = unreachable();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let start = tokio::time::Instant::now();
    let token = f
        .source
        .get(own("a"), None, || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Err(rate_limited(300)),
                _ => Ok(issued("j1")),
            }
        })
        .await
        .unwrap();
    assert!(token.starts_with("h."));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn a_retry_hint_beyond_the_bound_is_returned_at_once() {
    let f = unreachable();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let start = tokio::time::Instant::now();
    let e = f
        .source
        .get(own("a"), None, || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err::<pb::TokenResponse, _>(rate_limited(5_000))
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    // Hints that keep coming stop after the bound (2 s by default).
    let e = f
        .source
        .get(own("b"), None, || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err::<pb::TokenResponse, _>(rate_limited(900))
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1 + 3);
    assert_eq!(start.elapsed(), Duration::from_millis(1_800));
}

#[tokio::test(start_paused = true)]
async fn with_a_valid_token_the_hint_defers_the_next_renewal() {
    let f = unreachable();
    f.source.seed("a", &["s"], cached("t1", T0 + 100, T0 + 80));
    f.clock.advance(85);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let fetch = || async {
        match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Err(rate_limited(10_000)),
            _ => Ok(issued("j2")),
        }
    };
    // Refused with a hint: the valid token, at once, no wait.
    let start = tokio::time::Instant::now();
    assert_eq!(f.source.get(own("a"), None, fetch).await.unwrap(), "t1");
    assert_eq!(start.elapsed(), Duration::ZERO);
    // Within the hint: no call at all.
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(f.source.get(own("a"), None, fetch).await.unwrap(), "t1");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Past it: renewed.
    tokio::time::advance(Duration::from_secs(1)).await;
    let renewed = f.source.get(own("a"), None, fetch).await.unwrap();
    assert_ne!(renewed, "t1");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn accept_caps_and_refuses_expired() {
    let f = unreachable();
    let token = |iat: u64, exp: u64| {
        let payload = B64.encode(format!(r#"{{"iat":{iat},"exp":{exp},"jti":"j"}}"#));
        pb::TokenResponse {
            access_token: format!("h.{payload}.s"),
            jti: "j".into(),
            ..Default::default()
        }
    };
    let c = f.source.accept(token(T0, T0 + 100), None).unwrap();
    assert_eq!(c.exp, T0 + 100);
    assert!((T0 + 70..T0 + 90).contains(&c.renew_at));
    // Capped by the subject token's expiry.
    let c = f.source.accept(token(T0, T0 + 100), Some(T0 + 50)).unwrap();
    assert_eq!(c.exp, T0 + 50);
    assert!(c.renew_at < T0 + 50);
    assert!(matches!(
        f.source.accept(token(T0 - 100, T0), None),
        Err(ClientError::BadResponse(_))
    ));
    assert!(matches!(
        f.source.accept(token(T0, T0 + 100), Some(T0)),
        Err(ClientError::BadResponse(_))
    ));
}

/// Callers without a token wait for the one renewing; when its answer was a
/// failure, each waiter sent the failed request again in turn: N callers,
/// N requests to a struggling cluster, the last answered after N calls.
#[tokio::test(start_paused = true)]
async fn waiters_each_resent_the_request_that_just_failed() {
    let f = unreachable();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let fetch = || async {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        Err::<pb::TokenResponse, _>(rate_limited(5_000))
    };
    let start = tokio::time::Instant::now();
    let g = || f.source.get(own("a"), None, fetch);
    let (r1, r2, r3, r4) = tokio::join!(g(), g(), g(), g());
    for r in [r1, r2, r3, r4] {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // A call within the hold that follows (the 5 s hint) shares it too.
    let e = g().await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A call after it is a new attempt.
    tokio::time::advance(Duration::from_secs(5)).await;
    let _ = g().await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// What a node answers when policy refuses: no retry hint.
fn denied() -> ClientError {
    ClientError::status("n1:1", &tonic::Status::permission_denied("policy: issue"))
}

/// A token response valid from `iat` to `exp`.
fn issued_at(jti: &str, iat: u64, exp: u64) -> pb::TokenResponse {
    let payload = B64.encode(format!(r#"{{"iat":{iat},"exp":{exp},"jti":"{jti}"}}"#));
    pb::TokenResponse {
        access_token: format!("h.{payload}.s"),
        jti: jti.into(),
        ..Default::default()
    }
}

/// A failed renewal was remembered only when it carried a retry hint:
/// between the renewal point and `exp`, a fast refusal without one cost the
/// cluster one request per caller request.
#[tokio::test(start_paused = true)]
async fn a_renewal_refused_without_a_hint_was_resent_on_every_call() {
    use std::sync::atomic::Ordering::SeqCst;
    let f = unreachable();
    f.source.seed("a", &["s"], cached("t1", T0 + 100, T0 + 80));
    f.clock.advance(85);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let fetch = || async {
        calls.fetch_add(1, SeqCst);
        Err::<pb::TokenResponse, _>(denied())
    };
    for _ in 0..3 {
        assert_eq!(f.source.get(own("a"), None, fetch).await.unwrap(), "t1");
    }
    assert_eq!(calls.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_renewal_backoff_doubles_is_capped_and_resets_on_success() {
    use std::sync::atomic::Ordering::SeqCst;
    let f = unreachable();
    f.source.seed("a", &["s"], cached("t1", T0 + 100, T0 + 80));
    f.clock.advance(80);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let ok = std::sync::atomic::AtomicBool::new(false);
    let fetch = || async {
        calls.fetch_add(1, SeqCst);
        if ok.load(SeqCst) {
            Ok(issued_at("j2", T0 + 80, T0 + 1000))
        } else {
            Err(denied())
        }
    };
    let get = || f.source.get(own("a"), None, fetch);
    let step = |ms: u64| tokio::time::advance(Duration::from_millis(ms));
    // 1 s, then 2 s, then 4 s.
    assert_eq!(get().await.unwrap(), "t1");
    step(999).await;
    get().await.unwrap();
    assert_eq!(calls.load(SeqCst), 1);
    step(1).await;
    get().await.unwrap();
    assert_eq!(calls.load(SeqCst), 2);
    step(1_999).await;
    get().await.unwrap();
    assert_eq!(calls.load(SeqCst), 2);
    step(1).await;
    get().await.unwrap();
    assert_eq!(calls.load(SeqCst), 3);
    // A quarter of the time left caps it: 2 s left, 0.5 s.
    f.clock.advance(18);
    step(4_000).await;
    get().await.unwrap();
    assert_eq!(calls.load(SeqCst), 4);
    step(499).await;
    get().await.unwrap();
    assert_eq!(calls.load(SeqCst), 4);
    step(1).await;
    ok.store(true, SeqCst);
    let renewed = get().await.unwrap();
    assert_ne!(renewed, "t1");
    assert_eq!(calls.load(SeqCst), 5);
    // Reset by the success: past the new token's renewal point (900 s
    // left) the next failure holds off for 1 s again, not 16.
    ok.store(false, SeqCst);
    f.clock.advance(850);
    assert_eq!(get().await.unwrap(), renewed);
    assert_eq!(calls.load(SeqCst), 6);
    step(1_000).await;
    assert_eq!(get().await.unwrap(), renewed);
    assert_eq!(calls.load(SeqCst), 7);
}

#[tokio::test(start_paused = true)]
async fn the_renewal_backoff_never_reaches_the_tokens_expiry() {
    use std::sync::atomic::Ordering::SeqCst;
    let f = unreachable();
    f.source.seed("a", &["s"], cached("t1", T0 + 100, T0 + 80));
    f.clock.advance(96);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let fetch = || async {
        calls.fetch_add(1, SeqCst);
        Err::<pb::TokenResponse, _>(rate_limited(30_000))
    };
    // A 30 s hint with 4 s left: held off until expiry, no further.
    assert_eq!(f.source.get(own("a"), None, fetch).await.unwrap(), "t1");
    tokio::time::advance(Duration::from_millis(3_999)).await;
    assert_eq!(f.source.get(own("a"), None, fetch).await.unwrap(), "t1");
    assert_eq!(calls.load(SeqCst), 1);
    tokio::time::advance(Duration::from_millis(1)).await;
    f.clock.advance(4);
    let e = f.source.get(own("a"), None, fetch).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted));
    assert_eq!(calls.load(SeqCst), 2);
}

/// Without a valid token, a caller during the hold gets the failed
/// attempt's error at once: no request, no wait.
#[tokio::test(start_paused = true)]
async fn without_a_token_the_last_error_is_returned_during_the_backoff() {
    use std::sync::atomic::Ordering::SeqCst;
    let f = unreachable();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let fetch = || async {
        calls.fetch_add(1, SeqCst);
        Err::<pb::TokenResponse, _>(denied())
    };
    let start = tokio::time::Instant::now();
    for _ in 0..3 {
        let e = f.source.get(own("a"), None, fetch).await.unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
    }
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    tokio::time::advance(Duration::from_secs(1)).await;
    let e = f.source.get(own("a"), None, fetch).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
    assert_eq!(calls.load(SeqCst), 2);
}

/// A renewal point at or before the token's receipt (`Before` at least the
/// lifetime, or a local clock ahead of the cluster's) renewed on every
/// call, even though every renewal succeeded.
#[tokio::test(start_paused = true)]
async fn a_renewal_point_before_receipt_renewed_on_every_call() {
    use std::sync::atomic::Ordering::SeqCst;
    let pki = TestPki::new();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = TokenSourceConfig::new(vec!["127.0.0.1:1".into()], pki.client("frontend"));
    cfg.clock = clock.clone();
    cfg.renewal = Renewal::Before {
        before: Duration::from_secs(200),
        jitter: Duration::ZERO,
    };
    let source = TokenSource::new(cfg).unwrap();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let fetch = || async {
        let n = calls.fetch_add(1, SeqCst);
        Ok(issued_at(&format!("j{n}"), T0, T0 + 100))
    };
    let first = source.get(own("a"), None, fetch).await.unwrap();
    assert_eq!(source.get(own("a"), None, fetch).await.unwrap(), first);
    assert_eq!(calls.load(SeqCst), 1);
    // A tenth of the lifetime after receipt, it is renewed.
    clock.advance(10);
    assert_ne!(source.get(own("a"), None, fetch).await.unwrap(), first);
    assert_eq!(calls.load(SeqCst), 2);
}

#[test]
fn a_renewal_point_is_some_time_after_receipt() {
    let f = unreachable();
    // The local clock 95 s ahead of the cluster's: 5 s of the token left.
    f.clock.advance(95);
    let c = f.source.accept(issued_at("j", T0, T0 + 100), None).unwrap();
    assert_eq!(c.renew_at, T0 + 96);
    assert_eq!(earliest_renewal(T0, T0 + 100), T0 + 10);
    assert_eq!(earliest_renewal(T0, T0 + 1), T0 + 1);
}
