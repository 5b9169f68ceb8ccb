//! Tests of the request validators: each limit at and beyond its edge, and a
//! property test over arbitrary lengths and contents.

use proptest::prelude::*;

use super::*;

const MAX_LIFETIME: u64 = 3600;

fn strings(n: usize, f: impl Fn(usize) -> String) -> Vec<String> {
    (0..n).map(f).collect()
}

fn issue_req(aud: Vec<String>, scope: Vec<String>) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        audience: aud,
        scope,
        ..Default::default()
    }
}

fn exchange_req(aud: Vec<String>, scope: Vec<String>) -> pb::ExchangeTokenRequest {
    pb::ExchangeTokenRequest {
        subject_token: "t".into(),
        subject_token_type: TOKEN_TYPE_ACCESS.into(),
        audience: aud,
        scope,
        ..Default::default()
    }
}

fn message(e: ApiError) -> String {
    match e {
        ApiError::InvalidArgument(m) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn scopes_are_split_and_deduplicated_in_order() {
    let p = issue(
        issue_req(
            vec!["a".into()],
            vec!["x y".into(), "y".into(), " z  x".into()],
        ),
        MAX_LIFETIME,
    )
    .unwrap();
    assert_eq!(p.scopes, ["x", "y", "z"]);
}

#[test]
fn a_hundred_thousand_scopes_are_refused_by_count_before_any_split() {
    let e = issue(
        issue_req(vec!["a".into()], strings(100_000, |i| format!("s{i}"))),
        MAX_LIFETIME,
    )
    .unwrap_err();
    assert_eq!(message(e), "too many scope entries (at most 64)");
    // The same scopes in one space-separated entry: refused by size.
    let one = strings(100_000, |i| format!("s{i}")).join(" ");
    let e = issue(issue_req(vec!["a".into()], vec![one]), MAX_LIFETIME).unwrap_err();
    assert!(message(e).contains("at most 8192"));
}

#[test]
fn a_hundred_thousand_audiences_are_refused_by_count() {
    let e = exchange(
        exchange_req(strings(100_000, |i| format!("aud{i}")), vec!["s".into()]),
        MAX_LIFETIME,
    )
    .unwrap_err();
    assert_eq!(message(e), "too many audience entries (at most 16)");
    let mut r = exchange_req(vec!["a".into()], vec!["s".into()]);
    r.resource = strings(100_000, |i| format!("r{i}"));
    assert_eq!(
        message(exchange(r, MAX_LIFETIME).unwrap_err()),
        "too many resource entries (at most 16)"
    );
}

#[test]
fn limits_at_the_edge() {
    // Exactly the maximum passes, one more fails.
    let ok = issue(
        issue_req(vec!["a".into()], strings(MAX_SCOPES, |i| format!("s{i}"))),
        MAX_LIFETIME,
    );
    assert_eq!(ok.unwrap().scopes.len(), MAX_SCOPES);
    let two_entries = vec![
        strings(MAX_SCOPES, |i| format!("s{i}")).join(" "),
        "one-more".into(),
    ];
    assert!(issue(issue_req(vec!["a".into()], two_entries), MAX_LIFETIME).is_err());
    // audience + resource: 16 distinct together at most.
    let mut r = exchange_req(strings(10, |i| format!("a{i}")), vec!["s".into()]);
    r.resource = strings(6, |i| format!("a{i}"));
    assert_eq!(
        exchange(r.clone(), MAX_LIFETIME).unwrap().audiences.len(),
        10
    );
    r.resource = strings(7, |i| format!("r{i}"));
    assert!(exchange(r, MAX_LIFETIME).is_err());
    // Names.
    let long = "a".repeat(MAX_NAME_BYTES + 1);
    assert!(issue(
        issue_req(vec![long.clone()], vec!["s".into()]),
        MAX_LIFETIME
    )
    .is_err());
    assert!(issue(issue_req(vec!["a".into()], vec![long]), MAX_LIFETIME).is_err());
    assert!(issue(
        issue_req(vec![String::new()], vec!["s".into()]),
        MAX_LIFETIME
    )
    .is_err());
    // Policy questions: 16 audiences × 17 scopes > 256.
    let r = issue_req(
        strings(16, |i| format!("a{i}")),
        strings(17, |i| format!("s{i}")),
    );
    assert!(message(issue(r, MAX_LIFETIME).unwrap_err()).contains("combinations"));
}

#[test]
fn lifetimes_above_the_maximum_are_refused_not_clamped() {
    let mut r = issue_req(vec!["a".into()], vec!["s".into()]);
    r.lifetime_seconds = MAX_LIFETIME + 1;
    assert_eq!(
        message(issue(r.clone(), MAX_LIFETIME).unwrap_err()),
        "lifetime_seconds 3601 is above this cluster's maximum of 3600"
    );
    r.lifetime_seconds = MAX_LIFETIME;
    assert_eq!(issue(r.clone(), MAX_LIFETIME).unwrap().lifetime, Some(3600));
    r.lifetime_seconds = 0;
    assert_eq!(issue(r, MAX_LIFETIME).unwrap().lifetime, None);
}

#[test]
fn rfc8693_required_fields() {
    let ok = exchange_req(vec!["a".into()], vec!["s".into()]);
    assert!(exchange(ok.clone(), MAX_LIFETIME).is_ok());
    let mut r = ok.clone();
    r.subject_token_type = String::new();
    assert_eq!(
        message(exchange(r, MAX_LIFETIME).unwrap_err()),
        "subject_token_type is required"
    );
    let mut r = ok.clone();
    r.subject_token = String::new();
    assert_eq!(
        message(exchange(r, MAX_LIFETIME).unwrap_err()),
        "subject_token is required"
    );
    let mut r = ok.clone();
    r.actor_token = "t".into();
    assert_eq!(
        message(exchange(r.clone(), MAX_LIFETIME).unwrap_err()),
        "actor_token_type is required with actor_token"
    );
    r.actor_token_type = TOKEN_TYPE_JWT.into();
    assert_eq!(
        exchange(r, MAX_LIFETIME).unwrap().actor_token.as_deref(),
        Some("t")
    );
    let mut r = ok.clone();
    r.actor_token_type = TOKEN_TYPE_JWT.into();
    assert!(exchange(r, MAX_LIFETIME).is_err());
    let mut r = ok;
    r.grant_type = "password".into();
    assert!(exchange(r, MAX_LIFETIME).is_err());
}

#[test]
fn revoke_targets() {
    use pb::revoke_request::Target;
    let rv = |t: Option<Target>| revoke(pb::RevokeRequest { target: t });
    assert!(rv(None).is_err());
    assert!(rv(Some(Target::Token(String::new()))).is_err());
    assert!(rv(Some(Target::ChainOfToken(String::new()))).is_err());
    assert!(rv(Some(Target::Jti("a".repeat(MAX_NAME_BYTES + 1)))).is_err());
    assert!(rv(Some(Target::Subject(String::new()))).is_err());
    assert!(rv(Some(Target::Client("c".into()))).is_ok());
}

#[test]
fn admin_fields() {
    assert!(raft_addrs(&[]).is_err());
    assert!(raft_addrs(&strings(MAX_MEMBERS + 1, |i| format!("h{i}:1"))).is_err());
    assert!(raft_addrs(&["a".repeat(MAX_ADDR_BYTES + 1)]).is_err());
    assert!(raft_addrs(&["127.0.0.1:7000".into()]).is_ok());
    assert!(policy_text(&"x".repeat(crate::policy::MAX_POLICY_BYTES + 1)).is_err());
}

/// Any string, including spaces, empty ones, multi-byte characters and
/// long ones.
fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z: ]{0,12}",
        1 => any::<String>(),
        1 => (0usize..2000).prop_map(|n| "x".repeat(n)),
        1 => (0usize..400).prop_map(|n| "s ".repeat(n)),
    ]
}

fn any_list() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        4 => prop::collection::vec(any_string(), 0..24),
        1 => prop::collection::vec(any_string(), 0..300),
    ]
}

fn check_issue(p: &IssueParams) {
    assert!(!p.audiences.is_empty() && p.audiences.len() <= MAX_AUDIENCES);
    assert!(!p.scopes.is_empty() && p.scopes.len() <= MAX_SCOPES);
    assert!(p.audiences.len() * p.scopes.len() <= MAX_GRANT_QUESTIONS);
    assert!(p.may_act.len() <= MAX_MAY_ACT);
    for v in p.audiences.iter().chain(&p.scopes).chain(&p.may_act) {
        assert!(!v.is_empty() && v.len() <= MAX_NAME_BYTES);
    }
    assert!(p.scopes.iter().all(|s| !s.contains(' ')));
    assert!(p.lifetime.is_none_or(|l| l > 0 && l <= MAX_LIFETIME));
    let distinct: HashSet<&String> = p.scopes.iter().collect();
    assert_eq!(distinct.len(), p.scopes.len());
    let distinct: HashSet<&String> = p.audiences.iter().collect();
    assert_eq!(distinct.len(), p.audiences.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn issue_validator_never_panics_and_bounds_what_it_returns(
        audience in any_list(),
        scope in any_list(),
        may_act in any_list(),
        lifetime_seconds in prop_oneof![Just(0u64), 0u64..10_000, any::<u64>()],
    ) {
        let r = pb::IssueTokenRequest { audience, scope, lifetime_seconds, may_act };
        match issue(r, MAX_LIFETIME) {
            Ok(p) => check_issue(&p),
            Err(e) => prop_assert!(matches!(e, ApiError::InvalidArgument(_)), "{e:?}"),
        }
    }

    #[test]
    fn exchange_validator_never_panics_and_bounds_what_it_returns(
        audience in any_list(),
        resource in any_list(),
        scope in any_list(),
        subject_token in any_string(),
        subject_token_type in prop_oneof![Just(TOKEN_TYPE_ACCESS.to_string()), any_string()],
        actor_token in any_string(),
        actor_token_type in prop_oneof![Just(TOKEN_TYPE_JWT.to_string()), any_string()],
        lifetime_seconds in any::<u64>(),
    ) {
        let r = pb::ExchangeTokenRequest {
            subject_token, subject_token_type, actor_token, actor_token_type,
            audience, resource, scope, lifetime_seconds, ..Default::default()
        };
        match exchange(r, MAX_LIFETIME) {
            Ok(p) => {
                prop_assert!(!p.subject_token.is_empty());
                prop_assert!(p.audiences.len() <= MAX_AUDIENCES);
                prop_assert!(p.scopes.len() <= MAX_SCOPES);
                prop_assert!(p.audiences.len() * p.scopes.len() <= MAX_GRANT_QUESTIONS);
                prop_assert!(p.audiences.iter().chain(&p.scopes)
                    .all(|v| !v.is_empty() && v.len() <= MAX_NAME_BYTES));
                prop_assert!(p.lifetime.is_none_or(|l| l <= MAX_LIFETIME));
            }
            Err(e) => prop_assert!(matches!(e, ApiError::InvalidArgument(_)), "{e:?}"),
        }
    }

    #[test]
    fn revoke_validator_never_panics(target in prop_oneof![
        Just(None),
        any_string().prop_map(|s| Some(pb::revoke_request::Target::Jti(s))),
        any_string().prop_map(|s| Some(pb::revoke_request::Target::Subject(s))),
        any_string().prop_map(|s| Some(pb::revoke_request::Target::Client(s))),
        any_string().prop_map(|s| Some(pb::revoke_request::Target::Token(s))),
        any_string().prop_map(|s| Some(pb::revoke_request::Target::ChainOfToken(s))),
    ]) {
        match revoke(pb::RevokeRequest { target }) {
            Ok(pb::revoke_request::Target::Jti(v) | pb::revoke_request::Target::Subject(v)
                | pb::revoke_request::Target::Client(v)) => {
                prop_assert!(!v.is_empty() && v.len() <= MAX_NAME_BYTES)
            }
            Ok(pb::revoke_request::Target::Token(t) | pb::revoke_request::Target::ChainOfToken(t)) => {
                prop_assert!(!t.is_empty())
            }
            Err(e) => prop_assert!(matches!(e, ApiError::InvalidArgument(_)), "{e:?}"),
        }
    }
}
