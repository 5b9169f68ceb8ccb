//! Unit tests of the issuance and RFC 8693 exchange rules.

use super::*;
use crate::token::claims::MayAct;

const NOW: u64 = 1_700_000_000;
const A: &str = "spiffe://td/a";
const B: &str = "spiffe://td/b";
const C: &str = "spiffe://td/c";
const D: &str = "spiffe://td/d";

fn limits() -> Limits {
    Limits {
        issuer: "https://tessera.test".into(),
        default_lifetime: 300,
        max_lifetime: 3600,
        max_depth: 4,
    }
}

fn thumb(who: &str) -> String {
    format!("thumb-of-{who}")
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The token A gets for itself, aimed at B.
fn issued() -> Claims {
    issue_claims(
        A,
        &thumb(A),
        &strings(&[B]),
        &strings(&["read", "write", "admin"]),
        Some(1800),
        &limits(),
        NOW,
        "j0".into(),
    )
    .unwrap()
}

struct Req {
    caller: &'static str,
    thumbprint: String,
    scopes: Vec<String>,
    policy: Vec<String>,
    audiences: Vec<String>,
    lifetime: Option<u64>,
    impersonate: bool,
    now: u64,
}

fn req(caller: &'static str, aud: &str) -> Req {
    Req {
        caller,
        thumbprint: thumb(caller),
        scopes: strings(&["read"]),
        policy: strings(&["read", "write", "admin"]),
        audiences: strings(&[aud]),
        lifetime: None,
        impersonate: false,
        now: NOW + 10,
    }
}

fn run(r: &Req, subject: &Claims, actor: Option<&Claims>, jti: &str) -> Result<Claims, TokenError> {
    let input = ExchangeInput {
        caller: r.caller,
        caller_cert_thumbprint: &r.thumbprint,
        subject,
        actor,
        requested_scopes: &r.scopes,
        audiences: &r.audiences,
        requested_lifetime: r.lifetime,
        impersonate: r.impersonate,
        now: r.now,
    };
    exchange(&input, &r.policy, &limits(), jti.into())
}

#[test]
fn issue_shape() {
    let t = issued();
    assert_eq!(t.iss, "https://tessera.test");
    assert_eq!((t.sub.as_str(), t.client_id.as_str()), (A, A));
    assert_eq!(t.aud.as_slice(), [B]);
    assert_eq!((t.iat, t.nbf, t.exp), (NOW, NOW, NOW + 1800));
    assert_eq!(t.scope, "read write admin");
    assert_eq!(t.thumbprint(), Some(thumb(A).as_str()));
    assert!(t.act.is_none() && t.may_act.is_none() && t.chain.is_empty());
    assert_eq!(t.jti, "j0");
}

#[test]
fn issue_refusals_and_lifetimes() {
    let l = limits();
    let aud = strings(&[B]);
    let scopes = strings(&["read"]);
    let issue = |thumb: &str, aud: &[String], scopes: &[String], life: Option<u64>| {
        issue_claims(A, thumb, aud, scopes, life, &l, NOW, "j".into())
    };
    assert_eq!(
        issue("", &aud, &scopes, None).unwrap_err(),
        TokenError::Unbound
    );
    assert_eq!(
        issue("t", &aud, &[], None).unwrap_err(),
        TokenError::NoScopeGranted
    );
    assert_eq!(
        issue("t", &aud, &strings(&["a b"]), None).unwrap_err(),
        TokenError::InvalidScope
    );
    assert_eq!(
        issue("t", &[], &scopes, None).unwrap_err(),
        TokenError::NoAudience
    );
    assert_eq!(
        issue("t", &strings(&[""]), &scopes, None).unwrap_err(),
        TokenError::InvalidAudience
    );
    assert_eq!(
        issue("t", &aud, &scopes, Some(0)).unwrap_err(),
        TokenError::BadLifetime
    );
    assert_eq!(issue("t", &aud, &scopes, None).unwrap().exp, NOW + 300);
    assert_eq!(
        issue("t", &aud, &scopes, Some(99_999)).unwrap_err(),
        TokenError::BadLifetime
    );
    assert_eq!(
        issue("t", &aud, &scopes, Some(3600)).unwrap().exp,
        NOW + 3600
    );
    let t = issue("t", &strings(&[B, C, B]), &strings(&["x", "y", "x"]), None).unwrap();
    assert_eq!(t.aud.as_slice(), [B, C]);
    assert_eq!(t.scope, "x y");
    let far = issue_claims(A, "t", &aud, &scopes, None, &l, u64::MAX - 1, "j".into());
    assert_eq!(far.unwrap_err(), TokenError::BadLifetime);
}

#[test]
fn chain_of_three_nests_act_and_grows_chain() {
    let t0 = issued();
    // B received t0 (it is t0's audience) and exchanges it for C.
    let t1 = run(&req(B, C), &t0, None, "j1").unwrap();
    assert_eq!(t1.sub, A);
    assert_eq!(t1.client_id, B);
    assert_eq!(t1.thumbprint(), Some(thumb(B).as_str()));
    assert_eq!(t1.act, Some(Actor::new(B)));
    assert_eq!(t1.chain, ["j0"]);
    assert_eq!(t1.aud.as_slice(), [C]);
    assert_eq!((t1.iat, t1.nbf), (NOW + 10, NOW + 10));
    assert_eq!(t1.jti, "j1");
    assert_eq!(t1.iss, "https://tessera.test");

    // C received t1 and exchanges it for D.
    let t2 = run(&req(C, D), &t1, None, "j2").unwrap();
    assert_eq!(t2.sub, A);
    assert_eq!(t2.actor_subjects(), [C, B]);
    assert_eq!(t2.chain, ["j0", "j1"]);
    assert_eq!(t2.depth(), 2);

    // D received t2 and exchanges it for E.
    let t3 = run(&req(D, "spiffe://td/e"), &t2, None, "j3").unwrap();
    assert_eq!(
        t3.act,
        Some(Actor {
            sub: D.into(),
            act: Some(Box::new(Actor {
                sub: C.into(),
                act: Some(Box::new(Actor::new(B))),
            })),
        })
    );
    assert_eq!(t3.chain, ["j0", "j1", "j2"]);
    assert_eq!(t3.client_id, D);
    assert_eq!(t3.thumbprint(), Some(thumb(D).as_str()));
    // Every ancestor's client reaches t3: named by `sub` and `act`, so
    // nothing is listed twice.
    assert!(t3.ancestor_clients.is_empty());
    assert_eq!(t3.clients(), [D, A, C, B]);
}

#[test]
fn an_impersonating_caller_is_listed_among_the_ancestors_clients() {
    let t0 = issued();
    // B impersonates A: no `act` level names B.
    let mut imp = req(B, C);
    imp.impersonate = true;
    let t1 = run(&imp, &t0, None, "j1").unwrap();
    assert_eq!(t1.act, None);
    assert!(t1.ancestor_clients.is_empty(), "B is t1's own client");
    // C exchanges t1 normally: B, t1's client, is named nowhere else.
    let t2 = run(&req(C, D), &t1, None, "j2").unwrap();
    assert_eq!(t2.ancestor_clients, [B]);
    assert_eq!(t2.clients(), [C, A, B]);
    // And stays listed further down, once.
    let t3 = run(&req(D, "spiffe://td/e"), &t2, None, "j3").unwrap();
    assert_eq!(t3.ancestor_clients, [B]);
    assert_eq!(t3.clients(), [D, A, C, B]);
}

#[test]
fn holder_narrowing_its_own_token_adds_no_act_level() {
    let t0 = issued();
    // A holds t0 (bound to A's certificate) and narrows it for C.
    let own = run(&req(A, C), &t0, None, "j1").unwrap();
    assert_eq!(own.act, None);
    assert_eq!(own.chain, ["j0"]);
    // B, the current actor of t1, narrows t1 again: no stutter.
    let t1 = run(&req(B, C), &t0, None, "j1").unwrap();
    let mut r = req(B, D);
    r.thumbprint = thumb(B);
    let again = run(&r, &t1, None, "j2").unwrap();
    assert_eq!(again.act, Some(Actor::new(B)));
    assert_eq!(again.chain, ["j0", "j1"]);
}

#[test]
fn impersonation_keeps_act() {
    let t0 = issued();
    let mut r = req(B, C);
    r.impersonate = true;
    let t1 = run(&r, &t0, None, "j1").unwrap();
    assert_eq!(t1.act, None);
    assert_eq!(t1.sub, A);
    assert_eq!(t1.client_id, B);
    assert_eq!(t1.chain, ["j0"]);
    let delegated = run(&req(B, C), &t0, None, "j1").unwrap();
    let mut r = req(C, D);
    r.impersonate = true;
    let t2 = run(&r, &delegated, None, "j2").unwrap();
    assert_eq!(t2.act, Some(Actor::new(B)));
    assert_eq!(t2.chain, ["j0", "j1"]);
}

#[test]
fn binding_rules() {
    let t0 = issued();
    // C is neither the holder nor an audience of t0.
    assert_eq!(
        run(&req(C, D), &t0, None, "j").unwrap_err(),
        TokenError::BindingMismatch
    );
    // A's token presented from another certificate by A's name.
    let mut r = req(A, C);
    r.thumbprint = thumb("someone-else");
    assert_eq!(
        run(&r, &t0, None, "j").unwrap_err(),
        TokenError::BindingMismatch
    );
    // An empty caller thumbprint never matches.
    let mut r = req(A, C);
    r.thumbprint = String::new();
    assert_eq!(
        run(&r, &t0, None, "j").unwrap_err(),
        TokenError::BindingMismatch
    );
    // Unbound subject tokens are refused, even from an audience.
    let mut unbound = issued();
    unbound.cnf = None;
    assert_eq!(
        run(&req(B, C), &unbound, None, "j").unwrap_err(),
        TokenError::Unbound
    );
    unbound.cnf = Some(Confirmation {
        x5t_s256: String::new(),
    });
    assert_eq!(
        run(&req(B, C), &unbound, None, "j").unwrap_err(),
        TokenError::Unbound
    );
}

#[test]
fn actor_token_must_be_the_caller() {
    let t0 = issued();
    let b_own = issue_claims(
        B,
        &thumb(B),
        &strings(&[C]),
        &strings(&["x"]),
        None,
        &limits(),
        NOW,
        "jb".into(),
    )
    .unwrap();
    run(&req(B, C), &t0, Some(&b_own), "j1").unwrap();
    // Another service's token as actor.
    let c_own = issue_claims(
        C,
        &thumb(C),
        &strings(&[B]),
        &strings(&["x"]),
        None,
        &limits(),
        NOW,
        "jc".into(),
    )
    .unwrap();
    assert_eq!(
        run(&req(B, C), &t0, Some(&c_own), "j1").unwrap_err(),
        TokenError::ActorNotCaller
    );
    // B's name but bound elsewhere, or unbound.
    let mut stolen = b_own.clone();
    stolen.cnf = Some(Confirmation::from_cert_der(b"other cert"));
    assert_eq!(
        run(&req(B, C), &t0, Some(&stolen), "j1").unwrap_err(),
        TokenError::ActorNotCaller
    );
    stolen.cnf = None;
    assert_eq!(
        run(&req(B, C), &t0, Some(&stolen), "j1").unwrap_err(),
        TokenError::ActorNotCaller
    );
}

#[test]
fn may_act_is_enforced_and_carried() {
    let mut t0 = issued();
    t0.may_act = Some(MayAct { sub: strings(&[B]) });
    let t1 = run(&req(B, C), &t0, None, "j1").unwrap();
    assert_eq!(t1.may_act, t0.may_act);
    // C is not allowed to act for A, even through B.
    assert_eq!(
        run(&req(C, D), &t1, None, "j2").unwrap_err(),
        TokenError::MayActViolated
    );
    // Nor is the subject itself when not listed.
    assert_eq!(
        run(&req(A, C), &t0, None, "j1").unwrap_err(),
        TokenError::MayActViolated
    );
    t0.may_act = Some(MayAct { sub: strings(&[D]) });
    assert_eq!(
        run(&req(B, C), &t0, None, "j1").unwrap_err(),
        TokenError::MayActViolated
    );
    let mut r = req(B, C);
    r.impersonate = true;
    assert_eq!(
        run(&r, &t0, None, "j1").unwrap_err(),
        TokenError::MayActViolated
    );
}

#[test]
fn scope_rules() {
    let t0 = issued(); // read write admin
    let mut r = req(B, C);
    r.scopes = vec![];
    assert_eq!(
        run(&r, &t0, None, "j").unwrap_err(),
        TokenError::NoScopeRequested
    );
    r.scopes = strings(&["read", "delete"]);
    assert_eq!(
        run(&r, &t0, None, "j").unwrap_err(),
        TokenError::ScopeWidening
    );
    r.scopes = strings(&["rea"]);
    assert_eq!(
        run(&r, &t0, None, "j").unwrap_err(),
        TokenError::ScopeWidening
    );
    for bad in ["", "read write", "quote\"", "back\\slash", "tab\t", "é"] {
        r.scopes = strings(&[bad]);
        assert_eq!(
            run(&r, &t0, None, "j").unwrap_err(),
            TokenError::InvalidScope,
            "{bad:?}"
        );
    }
    // Policy drops what it does not allow; order and duplicates handled.
    r.scopes = strings(&["admin", "write", "read", "write"]);
    r.policy = strings(&["read", "write"]);
    assert_eq!(run(&r, &t0, None, "j").unwrap().scope, "write read");
    r.policy = strings(&["other"]);
    assert_eq!(
        run(&r, &t0, None, "j").unwrap_err(),
        TokenError::NoScopeGranted
    );
    r.policy = vec![];
    assert_eq!(
        run(&r, &t0, None, "j").unwrap_err(),
        TokenError::NoScopeGranted
    );
    // Exchange narrows hop by hop: what was dropped cannot come back.
    let mut r = req(B, C);
    r.scopes = strings(&["read"]);
    let t1 = run(&r, &t0, None, "j1").unwrap();
    let mut r = req(C, D);
    r.scopes = strings(&["write"]);
    assert_eq!(
        run(&r, &t1, None, "j2").unwrap_err(),
        TokenError::ScopeWidening
    );
}

#[test]
fn audience_rules() {
    let t0 = issued();
    let mut r = req(B, C);
    r.audiences = vec![];
    assert_eq!(run(&r, &t0, None, "j").unwrap_err(), TokenError::NoAudience);
    r.audiences = strings(&[C, ""]);
    assert_eq!(
        run(&r, &t0, None, "j").unwrap_err(),
        TokenError::InvalidAudience
    );
    r.audiences = strings(&[C, D, C]);
    assert_eq!(run(&r, &t0, None, "j").unwrap().aud.as_slice(), [C, D]);
}

#[test]
fn depth_exceeded() {
    // max_depth 4: four exchanges succeed, the fifth is refused.
    let callers = [B, C, D, "spiffe://td/e", "spiffe://td/f", "spiffe://td/g"];
    let mut token = issued();
    for i in 0..4 {
        token = run(
            &req(callers[i], callers[i + 1]),
            &token,
            None,
            &format!("j{}", i + 1),
        )
        .unwrap();
        assert_eq!(token.depth(), i + 1);
    }
    assert_eq!(
        run(&req(callers[4], callers[5]), &token, None, "j5").unwrap_err(),
        TokenError::DepthExceeded
    );
}

#[test]
fn lifetime_is_bounded_by_the_subject_and_refused_above_the_maximum() {
    let t0 = issued(); // exp = NOW + 1800, exchanges at NOW + 10
    let mut r = req(B, C);
    assert_eq!(run(&r, &t0, None, "j").unwrap().exp, NOW + 10 + 300);
    r.lifetime = Some(60);
    assert_eq!(run(&r, &t0, None, "j").unwrap().exp, NOW + 10 + 60);
    // Beyond the subject's remaining lifetime: clamped to it.
    r.lifetime = Some(3000);
    assert_eq!(run(&r, &t0, None, "j").unwrap().exp, t0.exp);
    r.now = t0.exp - 1;
    r.lifetime = None;
    assert_eq!(run(&r, &t0, None, "j").unwrap().exp, t0.exp);
    // Beyond the maximum: refused, never silently shortened.
    let mut long = t0.clone();
    long.exp = NOW + 100_000;
    r.now = NOW;
    r.lifetime = Some(50_000);
    assert_eq!(
        run(&r, &long, None, "j").unwrap_err(),
        TokenError::BadLifetime
    );
    r.lifetime = Some(3600);
    assert_eq!(run(&r, &long, None, "j").unwrap().exp, NOW + 3600);
    r.lifetime = Some(0);
    assert_eq!(
        run(&r, &long, None, "j").unwrap_err(),
        TokenError::BadLifetime
    );
}

#[test]
fn expired_subject_is_refused() {
    let t0 = issued();
    let mut r = req(B, C);
    r.now = t0.exp;
    assert_eq!(
        run(&r, &t0, None, "j").unwrap_err(),
        TokenError::SubjectExpired
    );
    r.now = t0.exp + 1000;
    assert_eq!(
        run(&r, &t0, None, "j").unwrap_err(),
        TokenError::SubjectExpired
    );
}
