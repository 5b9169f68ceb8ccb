//! Unit tests of the policy engine: parsing and validation against the
//! schema, `@id` naming, decisions for every action, grants per scope and
//! the decision cache.

use super::*;
use crate::policy::{ExchangeFacts, RevokeContext, RevokeKind};

const EXAMPLE: &str = include_str!("../../deploy/policy/example.cedar");
const ADMIN: &str = "spiffe://tessera.dev/admin";
const FRONTEND: &str = "spiffe://tessera.dev/svc/frontend";
const ORDERS: &str = "spiffe://tessera.dev/svc/orders";
const PAYMENTS: &str = "spiffe://tessera.dev/svc/payments";
const LEDGER: &str = "spiffe://tessera.dev/svc/ledger";
const STRANGER: &str = "spiffe://elsewhere.dev/svc/orders";

fn example() -> PolicyEngine {
    PolicyEngine::new(EXAMPLE, 1).unwrap()
}

fn scopes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn ids(list: &[&str]) -> Vec<String> {
    scopes(list)
}

/// What orders holds after frontend's issue: sub and client are frontend.
fn from_frontend(depth: u32) -> ExchangeFacts {
    ExchangeFacts {
        lifetime: 300,
        depth,
        subject: FRONTEND.into(),
        subject_client: FRONTEND.into(),
        actors: Vec::new(),
        has_actor_token: false,
    }
}

/// What payments holds after orders' exchange: orders is the actor.
fn via_orders(depth: u32) -> ExchangeFacts {
    ExchangeFacts {
        subject_client: ORDERS.into(),
        actors: vec![ORDERS.into()],
        ..from_frontend(depth)
    }
}

fn issue(lifetime: u64) -> GrantFacts {
    GrantFacts::Issue {
        lifetime,
        may_act: Vec::new(),
    }
}

fn revoke(principal: &str, kind: RevokeKind, own: bool) -> Request {
    Request::revoke(
        principal,
        RevokeContext {
            kind,
            target: "jti-1".into(),
            own,
        },
    )
}

fn allowed(engine: &PolicyEngine, req: &Request) -> bool {
    let decision = engine.try_authorize(req).unwrap();
    assert!(decision.errors.is_empty(), "{:?}", decision.errors);
    decision.allowed
}

#[test]
fn engine_is_send_sync_and_the_schema_loads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicyEngine>();
    assert!(Model::get().is_ok());
}

#[test]
fn example_policy_validates_with_its_ids() {
    let engine = example();
    assert_eq!(engine.version(), 1);
    assert_eq!(engine.text(), EXAMPLE);
    assert_eq!(
        engine.policy_ids(),
        ids(&[
            "admin",
            "disclose-audience",
            "exchange-orders-payments",
            "exchange-payments-ledger",
            "introspect-trust-domain",
            "issue-frontend-orders",
            "limit-depth",
            "limit-lifetime",
            "revoke-own",
        ])
    );
    assert!(PolicyEngine::validate(EXAMPLE).is_ok());
}

#[test]
fn tour_chain_of_three_narrows_at_each_hop() {
    let e = example();
    // frontend gets a token for orders.
    let (granted, by) = e.allowed_scopes(
        FRONTEND,
        Action::Issue,
        ORDERS,
        &scopes(&[
            "orders:write",
            "payments:charge",
            "ledger:write",
            "admin:all",
        ]),
        &issue(600),
    );
    assert_eq!(
        granted,
        scopes(&["orders:write", "payments:charge", "ledger:write"])
    );
    assert_eq!(by, ids(&["issue-frontend-orders"]));

    // orders exchanges it for payments.
    let (granted, by) = e.allowed_scopes(
        ORDERS,
        Action::Exchange,
        PAYMENTS,
        &scopes(&["payments:charge", "ledger:write", "orders:write"]),
        &GrantFacts::Exchange(from_frontend(1)),
    );
    assert_eq!(granted, scopes(&["payments:charge", "ledger:write"]));
    assert_eq!(by, ids(&["exchange-orders-payments"]));

    // payments exchanges that for ledger.
    let (granted, by) = e.allowed_scopes(
        PAYMENTS,
        Action::Exchange,
        LEDGER,
        &scopes(&["ledger:write", "payments:charge"]),
        &GrantFacts::Exchange(via_orders(2)),
    );
    assert_eq!(granted, scopes(&["ledger:write"]));
    assert_eq!(by, ids(&["exchange-payments-ledger"]));
}

#[test]
fn ledger_requires_orders_in_the_actor_chain() {
    let e = example();
    let req = Request::exchange(PAYMENTS, LEDGER, "ledger:write", from_frontend(1));
    assert!(!allowed(&e, &req));
    let req = Request::exchange(PAYMENTS, LEDGER, "ledger:write", via_orders(2));
    assert!(allowed(&e, &req));
}

#[test]
fn orders_only_acts_for_subjects_of_the_trust_domain() {
    let e = example();
    let facts = ExchangeFacts {
        subject: STRANGER.into(),
        ..from_frontend(1)
    };
    let req = Request::exchange(ORDERS, PAYMENTS, "payments:charge", facts);
    assert!(!allowed(&e, &req));
}

#[test]
fn depth_is_limited_to_three() {
    let e = example();
    let at = |depth| Request::exchange(PAYMENTS, LEDGER, "ledger:write", via_orders(depth));
    assert!(allowed(&e, &at(3)));
    let decision = e.authorize(&at(4));
    assert!(!decision.allowed);
    assert_eq!(decision.policy_ids, ids(&["limit-depth"]));
    assert!(!allowed(&e, &at(u32::MAX)));
}

#[test]
fn lifetime_is_limited_to_an_hour() {
    let e = example();
    let issue = |lifetime| Request::issue(FRONTEND, ORDERS, "orders:write", lifetime);
    assert!(allowed(&e, &issue(3600)));
    let decision = e.authorize(&issue(3601));
    assert!(!decision.allowed);
    assert_eq!(decision.policy_ids, ids(&["limit-lifetime"]));
    // Beyond Cedar's Long: saturated, still above the limit.
    assert!(!allowed(&e, &issue(u64::MAX)));

    let facts = ExchangeFacts {
        lifetime: 3601,
        ..from_frontend(1)
    };
    let decision = e.authorize(&Request::exchange(
        ORDERS,
        PAYMENTS,
        "payments:charge",
        facts,
    ));
    assert!(!decision.allowed);
    assert_eq!(decision.policy_ids, ids(&["limit-lifetime"]));
}

#[test]
fn no_hop_may_widen_its_audience() {
    let e = example();
    // orders may not skip payments and aim at the ledger directly.
    let req = Request::exchange(ORDERS, LEDGER, "ledger:write", from_frontend(1));
    assert!(!allowed(&e, &req));
    // frontend may not get a token straight for payments or ledger.
    for aud in [PAYMENTS, LEDGER, FRONTEND] {
        assert!(!allowed(
            &e,
            &Request::issue(FRONTEND, aud, "payments:charge", 60)
        ));
    }
    // frontend's grant is issue, not exchange.
    let req = Request::exchange(FRONTEND, ORDERS, "orders:write", from_frontend(1));
    assert!(!allowed(&e, &req));
    // payments may not go back to orders.
    let req = Request::exchange(PAYMENTS, ORDERS, "orders:write", via_orders(2));
    assert!(!allowed(&e, &req));
    // Other services get nothing, and a look-alike identity is not frontend.
    for who in [
        ORDERS,
        PAYMENTS,
        LEDGER,
        ADMIN,
        STRANGER,
        "spiffe://tessera.dev/svc/frontend/x",
    ] {
        assert!(
            !allowed(&e, &Request::issue(who, ORDERS, "orders:write", 60)),
            "{who}"
        );
    }
}

#[test]
fn nobody_may_impersonate() {
    let e = example();
    for who in [ADMIN, FRONTEND, ORDERS, PAYMENTS, LEDGER] {
        for aud in [ORDERS, PAYMENTS, LEDGER] {
            let req = Request::impersonate(who, aud, "ledger:write", via_orders(1));
            assert!(!allowed(&e, &req), "{who} -> {aud}");
        }
    }
}

#[test]
fn the_commented_impersonation_example_validates() {
    let text = r#"
            @id("impersonate-ledger-audit")
            permit (
              principal == Tessera::Service::"spiffe://tessera.dev/svc/ledger",
              action == Tessera::Action::"impersonate",
              resource == Tessera::Audience::"spiffe://tessera.dev/svc/audit"
            )
            when { context.scope == "audit:append" && context.depth <= 1 };
        "#;
    let e = PolicyEngine::new(text, 2).unwrap();
    let audit = "spiffe://tessera.dev/svc/audit";
    assert!(allowed(
        &e,
        &Request::impersonate(LEDGER, audit, "audit:append", from_frontend(1))
    ));
    assert!(!allowed(
        &e,
        &Request::exchange(LEDGER, audit, "audit:append", from_frontend(1))
    ));
    assert!(!allowed(
        &e,
        &Request::impersonate(LEDGER, audit, "audit:append", from_frontend(2))
    ));
}

#[test]
fn services_revoke_their_own_tokens_only() {
    let e = example();
    for kind in [
        RevokeKind::Jti,
        RevokeKind::Token,
        RevokeKind::Subject,
        RevokeKind::Client,
        RevokeKind::Chain,
        RevokeKind::Ancestor,
    ] {
        let decision = e.authorize(&revoke(ORDERS, kind, true));
        assert!(decision.allowed, "{kind:?}");
        assert_eq!(decision.policy_ids, ids(&["revoke-own"]));
        assert!(!allowed(&e, &revoke(ORDERS, kind, false)), "{kind:?}");
        // Outside the trust domain, not even one's own.
        assert!(!allowed(&e, &revoke(STRANGER, kind, true)), "{kind:?}");
        assert!(
            !allowed(&e, &revoke("orders.internal", kind, true)),
            "{kind:?}"
        );
    }
}

#[test]
fn admin_revokes_anything_and_administers() {
    let e = example();
    let decision = e.authorize(&revoke(ADMIN, RevokeKind::Subject, false));
    assert!(decision.allowed);
    assert_eq!(decision.policy_ids, ids(&["admin"]));
    let decision = e.authorize(&Request::admin(ADMIN, "put_policy"));
    assert!(decision.allowed);
    assert_eq!(decision.policy_ids, ids(&["admin"]));
    // Both permits apply to the admin's introspection.
    let decision = e.authorize(&Request::introspect(ADMIN));
    assert_eq!(
        decision.policy_ids,
        ids(&["admin", "introspect-trust-domain"])
    );
    // But the admin gets no tokens from this policy.
    assert!(!allowed(
        &e,
        &Request::issue(ADMIN, ORDERS, "orders:write", 60)
    ));
    // And nobody else administers.
    for who in [
        FRONTEND,
        ORDERS,
        PAYMENTS,
        LEDGER,
        STRANGER,
        "spiffe://elsewhere.dev/admin",
    ] {
        assert!(!allowed(&e, &Request::admin(who, "put_policy")), "{who}");
    }
}

#[test]
fn claims_are_disclosed_to_the_audience_and_the_admin_only() {
    let e = example();
    let token = |holder: bool| crate::policy::DiscloseContext {
        audience: vec![ORDERS.into(), PAYMENTS.into()],
        subject: FRONTEND.into(),
        client: FRONTEND.into(),
        holder,
    };
    for who in [ORDERS, PAYMENTS] {
        let d = e.authorize(&Request::disclose(who, token(false)));
        assert!(d.allowed, "{who}");
        assert_eq!(d.policy_ids, ids(&["disclose-audience"]));
    }
    let d = e.authorize(&Request::disclose(ADMIN, token(false)));
    assert_eq!(d.policy_ids, ids(&["admin"]));
    // The subject, client and holder are not an audience: not disclosed.
    for who in [FRONTEND, LEDGER, STRANGER] {
        assert!(!allowed(&e, &Request::disclose(who, token(true))), "{who}");
    }
}

#[test]
fn issue_policies_see_may_act_and_the_requested_lifetime() {
    let text = format!(
            "{EXAMPLE}\n@id(\"name-orders\")\nforbid (principal, action == Tessera::Action::\"issue\", resource)\nunless {{ context.may_act.contains(\"{ORDERS}\") }};"
        );
    let e = PolicyEngine::new(&text, 2).unwrap();
    let issue = |lifetime: u64, may_act: &[&str]| {
        let mut r = Request::issue(FRONTEND, ORDERS, "orders:write", lifetime);
        if let Context::Grant { facts, .. } = &mut r.context {
            *facts = GrantFacts::Issue {
                lifetime,
                may_act: scopes(may_act),
            };
        }
        r
    };
    assert!(allowed(&e, &issue(300, &[ORDERS])));
    let d = e.authorize(&issue(300, &[]));
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ids(&["name-orders"]));
    let d = e.authorize(&issue(3601, &[ORDERS]));
    assert_eq!(d.policy_ids, ids(&["limit-lifetime"]));
}

#[test]
fn the_trust_domain_may_introspect() {
    let e = example();
    for who in [FRONTEND, ORDERS, PAYMENTS, LEDGER] {
        let decision = e.authorize(&Request::introspect(who));
        assert!(decision.allowed, "{who}");
        assert_eq!(decision.policy_ids, ids(&["introspect-trust-domain"]));
    }
    for who in [
        STRANGER,
        "tessera.dev",
        "spiffe://tessera.dev.evil/svc/orders",
    ] {
        assert!(!allowed(&e, &Request::introspect(who)), "{who}");
    }
}

#[test]
fn empty_policy_denies_everything() {
    for text in ["", "// nothing yet\n"] {
        let e = PolicyEngine::new(text, 7).unwrap();
        assert_eq!(e.version(), 7);
        assert!(e.policy_ids().is_empty());
        let requests = [
            Request::issue(FRONTEND, ORDERS, "orders:write", 60),
            Request::exchange(ORDERS, PAYMENTS, "payments:charge", from_frontend(1)),
            Request::impersonate(ORDERS, PAYMENTS, "payments:charge", from_frontend(1)),
            revoke(ADMIN, RevokeKind::Jti, true),
            Request::introspect(ADMIN),
            Request::admin(ADMIN, "status"),
        ];
        for req in &requests {
            assert_eq!(e.authorize(req), Decision::default(), "{req:?}");
        }
        let (granted, by) = e.allowed_scopes(
            FRONTEND,
            Action::Issue,
            ORDERS,
            &scopes(&["a", "b"]),
            &issue(60),
        );
        assert!(granted.is_empty() && by.is_empty());
    }
}

#[test]
fn syntax_errors_are_parse_errors() {
    let err =
        PolicyEngine::new("permit(principal, action, resource) whenn { true };", 1).unwrap_err();
    let PolicyError::Parse(message) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(message, "line 1: invalid policy condition: whenn");
    assert!(
        err.to_string().starts_with("policy does not parse: "),
        "{err}"
    );

    let text = "// two broken statements\n\
                    permit(principal, action, resource) when { context.x == };\n\
                    @id(\"a;b // c\") permit(principal, action, resource);\n\
                    forbid(principal, action, resource)\n  unless { 1 + };";
    assert_eq!(
        PolicyEngine::validate(text),
        Err(PolicyError::Parse(
            "line 2: unexpected token `}`; line 4: unexpected token `}`".into()
        ))
    );
    assert!(matches!(
        PolicyEngine::validate("permit("),
        Err(PolicyError::Parse(_))
    ));
}

#[test]
fn statements_split_outside_strings_and_comments() {
    let text =
        "// a; comment\n permit(a)\n when { \"x;\\\"y\" };\n\n@id(\"//\") forbid(b);  permit(c)";
    assert_eq!(
        statements(text),
        vec![
            (2, "permit(a)\n when { \"x;\\\"y\" };"),
            (5, "@id(\"//\") forbid(b);"),
            (5, "permit(c)"),
        ]
    );
    assert!(statements("  // only a comment").is_empty());
}

#[test]
fn schema_violations_are_invalid_with_policy_ids() {
    let text = r#"
            @id("bad-context")
            permit(principal, action == Tessera::Action::"issue", resource)
            when { context.nope == "x" };
            permit(principal, action == Tessera::Action::"fly", resource);
        "#;
    let err = PolicyEngine::validate(text).unwrap_err();
    let PolicyError::Invalid(message) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(
        message,
        "for policy `bad-context`, attribute `nope` in context for \
             Tessera::Action::\"issue\" not found; \
             for policy `policy1`, unrecognized action `Tessera::Action::\"fly\"`"
    );
}

#[test]
fn type_errors_are_invalid() {
    // Strict mode: a scope is a String, a revoke has no scope, a Cluster no id.
    for text in [
        r#"permit(principal, action == Tessera::Action::"issue", resource) when { context.scope > 1 };"#,
        r#"permit(principal, action == Tessera::Action::"revoke", resource) when { context.scope == "a" };"#,
        r#"permit(principal, action == Tessera::Action::"admin", resource) when { resource.id == "a" };"#,
        r#"permit(principal == Tessera::User::"x", action, resource);"#,
    ] {
        assert!(
            matches!(PolicyEngine::validate(text), Err(PolicyError::Invalid(_))),
            "{text}"
        );
    }
}

#[test]
fn ids_come_from_annotations_or_cedar_defaults() {
    let text = r#"
            @id("named")
            permit(principal, action == Tessera::Action::"introspect", resource);
            permit(principal, action == Tessera::Action::"admin", resource);
        "#;
    let e = PolicyEngine::new(text, 1).unwrap();
    assert_eq!(e.policy_ids(), ids(&["named", "policy1"]));
    assert_eq!(
        e.authorize(&Request::introspect(FRONTEND)).policy_ids,
        ids(&["named"])
    );
    assert_eq!(
        e.authorize(&Request::admin(FRONTEND, "x")).policy_ids,
        ids(&["policy1"])
    );
}

#[test]
fn duplicate_or_empty_ids_are_invalid() {
    let dup = r#"
            @id("same") permit(principal, action == Tessera::Action::"introspect", resource);
            @id("same") permit(principal, action == Tessera::Action::"admin", resource);
        "#;
    assert_eq!(
        PolicyEngine::validate(dup),
        Err(PolicyError::Invalid(
            "@id `same` is used by more than one policy".into()
        ))
    );
    // An @id may not take the default id of another policy either.
    let clash = r#"
            permit(principal, action == Tessera::Action::"introspect", resource);
            @id("policy0") permit(principal, action == Tessera::Action::"admin", resource);
        "#;
    assert!(matches!(
        PolicyEngine::validate(clash),
        Err(PolicyError::Invalid(_))
    ));
    let empty = r#"@id(" ") permit(principal, action == Tessera::Action::"introspect", resource);"#;
    assert_eq!(
        PolicyEngine::validate(empty),
        Err(PolicyError::Invalid("`policy0` has an empty @id".into()))
    );
}

#[test]
fn templates_are_invalid() {
    let text =
        r#"permit(principal == ?principal, action == Tessera::Action::"introspect", resource);"#;
    let err = PolicyEngine::validate(text).unwrap_err();
    assert!(
        matches!(&err, PolicyError::Invalid(m) if m.contains("template")),
        "{err:?}"
    );
}

#[test]
fn oversized_documents_are_invalid() {
    let text = format!("// {}\n", "x".repeat(MAX_POLICY_BYTES));
    assert!(matches!(
        PolicyEngine::validate(&text),
        Err(PolicyError::Invalid(_))
    ));
}

#[test]
fn error_messages_are_bounded() {
    let text: String = (0..500)
            .map(|i| {
                format!(
                    "@id(\"p{i}\") permit(principal, action == Tessera::Action::\"issue\", resource) when {{ context.nope{i} }};\n"
                )
            })
            .collect();
    let err = PolicyEngine::validate(&text).unwrap_err();
    let PolicyError::Invalid(message) = &err else {
        panic!("{err:?}");
    };
    assert!(
        message.len() <= MAX_ERROR_MESSAGE_BYTES,
        "{}",
        message.len()
    );
    assert!(message.contains("more"), "{message}");

    let one = bounded(["é".repeat(MAX_ERROR_MESSAGE_BYTES)]);
    assert!(one.len() <= MAX_ERROR_MESSAGE_BYTES);
    assert!(one.ends_with('…'));
    assert_eq!(bounded(["a".to_owned(), "b".to_owned()]), "a; b");
    let two = bounded(["x".repeat(MAX_ERROR_MESSAGE_BYTES), "y".into()]);
    assert!(
        two.len() <= MAX_ERROR_MESSAGE_BYTES && two.ends_with("and 1 more"),
        "{two}"
    );
}

#[test]
fn principal_and_resource_attributes_are_set() {
    let text = r#"
            @id("svc")
            permit(principal, action == Tessera::Action::"issue", resource)
            when {
                principal.trust_domain == "tessera.dev" &&
                principal.path like "/svc/*" &&
                principal.id == "spiffe://tessera.dev/svc/orders" &&
                resource.id == "spiffe://tessera.dev/svc/payments"
            };
            @id("dns")
            permit(principal, action == Tessera::Action::"issue", resource)
            when { principal.trust_domain == "" && principal.path == "orders.internal" };
        "#;
    let e = PolicyEngine::new(text, 1).unwrap();
    assert!(allowed(&e, &Request::issue(ORDERS, PAYMENTS, "s", 60)));
    assert!(!allowed(&e, &Request::issue(ORDERS, LEDGER, "s", 60)));
    assert!(!allowed(&e, &Request::issue(ADMIN, PAYMENTS, "s", 60)));
    let decision = e.authorize(&Request::issue("orders.internal", PAYMENTS, "s", 60));
    assert!(decision.allowed);
    assert_eq!(decision.policy_ids, ids(&["dns"]));
}

#[test]
fn exchange_facts_reach_the_context() {
    let text = r#"
            permit(principal, action == Tessera::Action::"exchange", resource)
            when {
                context.scope == "s" && context.lifetime == 300 && context.depth == 2 &&
                context.subject == "sub" && context.subject_client == "client" &&
                context.actors == ["a", "b"] && context.has_actor_token
            };
            permit(principal, action == Tessera::Action::"revoke", resource)
            when { context.kind == "chain" && context.target == "jti-1" && !context.own };
            permit(principal, action == Tessera::Action::"admin", resource)
            when { context.operation == "add_learner" };
        "#;
    let e = PolicyEngine::new(text, 1).unwrap();
    let facts = ExchangeFacts {
        lifetime: 300,
        depth: 2,
        subject: "sub".into(),
        subject_client: "client".into(),
        actors: vec!["a".into(), "b".into()],
        has_actor_token: true,
    };
    assert!(allowed(
        &e,
        &Request::exchange(ORDERS, PAYMENTS, "s", facts.clone())
    ));
    let no_actor = ExchangeFacts {
        has_actor_token: false,
        ..facts
    };
    assert!(!allowed(
        &e,
        &Request::exchange(ORDERS, PAYMENTS, "s", no_actor)
    ));
    assert!(allowed(&e, &revoke(ORDERS, RevokeKind::Chain, false)));
    assert!(!allowed(&e, &revoke(ORDERS, RevokeKind::Token, false)));
    assert!(allowed(&e, &Request::admin(ORDERS, "add_learner")));
    assert!(!allowed(&e, &Request::admin(ORDERS, "remove_node")));
}

#[test]
fn evaluation_errors_skip_the_policy_and_are_reported() {
    let text = r#"
            @id("overflows")
            permit(principal, action == Tessera::Action::"issue", resource)
            when { context.lifetime + 9223372036854775807 > 0 };
        "#;
    let e = PolicyEngine::new(text, 1).unwrap();
    let decision = e.authorize(&Request::issue(ORDERS, PAYMENTS, "s", 60));
    assert!(!decision.allowed);
    assert_eq!(decision.errors.len(), 1);
    assert!(
        decision.errors[0].contains("overflows"),
        "{:?}",
        decision.errors
    );
}

/// Cedar skips a policy whose evaluation fails, a `forbid` too: a permit
/// then allowed what the forbid was written to stop (POLICY.md said an
/// error never allows).
#[test]
fn a_forbid_that_failed_to_evaluate_let_a_permit_allow() {
    let text = r#"
            @id("issue-all")
            permit(principal, action == Tessera::Action::"issue", resource);
            @id("forbid-overflows")
            forbid(principal, action == Tessera::Action::"issue", resource)
            when { context.lifetime + 9223372036854775807 > 0 };
        "#;
    let e = PolicyEngine::new(text, 1).unwrap();
    let decision = e.authorize(&Request::issue(ORDERS, PAYMENTS, "s", 60));
    assert!(!decision.allowed, "{decision:?}");
    assert_eq!(decision.errors.len(), 1);
    assert!(decision.errors[0].contains("forbid-overflows"));
    // A forbid that evaluates (no overflow at lifetime 0) is no error.
    let ok = e.authorize(&Request::issue(ORDERS, PAYMENTS, "s", 0));
    assert!(!ok.allowed && ok.errors.is_empty(), "{ok:?}");
}

#[test]
fn mismatched_requests_are_internal_errors_and_deny() {
    let e = example();
    let mut wrong_resource = Request::introspect(ADMIN);
    wrong_resource.resource = Resource::Audience(ORDERS.into());
    let mut wrong_context = Request::admin(ADMIN, "status");
    wrong_context.context = crate::policy::Context::Introspect;
    let mut wrong_audience = Request::issue(FRONTEND, ORDERS, "orders:write", 60);
    wrong_audience.resource = Resource::Cluster;
    for req in [wrong_resource, wrong_context, wrong_audience] {
        assert!(
            matches!(e.try_authorize(&req), Err(PolicyError::Internal(_))),
            "{req:?}"
        );
        let decision = e.authorize(&req);
        assert!(!decision.allowed);
        assert_eq!(decision.errors.len(), 1, "{decision:?}");
    }
    // Grant facts that do not fit the action, or a non-grant action.
    let all = scopes(&["orders:write"]);
    let ex = GrantFacts::Exchange(from_frontend(1));
    assert!(e
        .allowed_scopes(FRONTEND, Action::Exchange, ORDERS, &all, &issue(60))
        .0
        .is_empty());
    assert!(e
        .allowed_scopes(FRONTEND, Action::Issue, ORDERS, &all, &ex)
        .0
        .is_empty());
    assert!(e
        .allowed_scopes(ADMIN, Action::Admin, ORDERS, &all, &ex)
        .0
        .is_empty());
}

#[test]
fn allowed_scopes_keeps_order_and_drops_duplicates() {
    let e = example();
    let (granted, _) = e.allowed_scopes(
        FRONTEND,
        Action::Issue,
        ORDERS,
        &scopes(&["ledger:write", "nope", "orders:read", "ledger:write"]),
        &issue(60),
    );
    assert_eq!(granted, scopes(&["ledger:write", "orders:read"]));
    // Denials by a forbid are reported too.
    let (granted, by) = e.allowed_scopes(
        FRONTEND,
        Action::Issue,
        ORDERS,
        &scopes(&["orders:read"]),
        &issue(7200),
    );
    assert!(granted.is_empty());
    assert_eq!(by, ids(&["limit-lifetime"]));
    let (granted, by) = e.allowed_scopes(FRONTEND, Action::Issue, ORDERS, &[], &issue(60));
    assert!(granted.is_empty() && by.is_empty());
}

/// The decision cache was bounded in entries only, and a key holds the
/// caller's context: 256 refused `IssueToken` calls of 64 scopes with 16
/// `may_act` names of ~500 bytes filled it with ~126 MiB.
#[test]
fn a_caller_filled_the_decision_cache_with_its_own_large_contexts() {
    let e = example();
    let ask = |r: usize, names: usize, len: usize| {
        let may_act: Vec<String> = (0..names)
            .map(|i| format!("spiffe://tessera.dev/{r}/{i}/{}", "x".repeat(len)))
            .collect();
        let facts = GrantFacts::Issue {
            lifetime: 60,
            may_act,
        };
        let scopes: Vec<String> = (0..64).map(|s| format!("s{s}")).collect();
        let (allowed, _) = e.allowed_scopes(LEDGER, Action::Issue, ORDERS, &scopes, &facts);
        assert!(allowed.is_empty());
    };
    for r in 0..256 {
        ask(r, 16, 480);
    }
    assert_eq!(e.cached_decisions(), 0, "keys this heavy are not cached");
    // Keys just under the per-key bound are held up to the byte bound.
    for r in 0..512 {
        ask(r, 3, 600);
        assert!(
            e.cached_bytes() <= DECISION_CACHE_BYTES,
            "{} bytes of caller-chosen context cached",
            e.cached_bytes()
        );
    }
    assert!(e.cached_decisions() > 0, "ordinary keys are still cached");
}
