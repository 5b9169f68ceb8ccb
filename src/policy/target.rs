//! Whether a policy document can tell revocation targets apart.
//!
//! A revocation's context names its target (a `jti`, a subject, a client),
//! which is unique per request, so decisions cached per request would never
//! be reused. Most documents decide revocations on the caller, the kind and
//! ownership alone; for those, a decision made for one target holds for
//! every other, and the engine caches revocation decisions without the
//! target ([`super::engine`]).
//!
//! The test is conservative and syntactic, over each policy's JSON form
//! (which carries no comments): a document is taken to read the target if
//! any string or record key in it contains `target` (an attribute access or
//! `has` test of `context.target`, `context["target"]`, a record literal
//! with such a key, a string mentioning it), or if it uses `context` as a
//! whole (a record compared or passed as one value could carry the target)
//! rather than through one of its attributes. A policy that cannot be
//! turned into JSON counts as reading it.

use cedar_policy::PolicySet;
use serde_json::Value;

/// Whether any policy of `policies` could decide differently for two
/// revocations that differ only in their target.
pub(super) fn reads_revoke_target(policies: &PolicySet) -> bool {
    policies.policies().any(|p| match p.to_json() {
        Ok(json) => mentions(&json),
        Err(_) => true,
    })
}

const WORD: &str = "target";

fn is_context(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.len() == 1 && m.get("Var").and_then(Value::as_str) == Some("context"))
}

fn mentions(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains(WORD),
        Value::Array(items) => items.iter().any(mentions),
        Value::Object(m) => {
            if is_context(v) {
                // `context` as a whole value, not through an attribute.
                return true;
            }
            m.iter().any(|(k, val)| {
                if k.contains(WORD) {
                    return true;
                }
                // `context.attr` and `context has attr`: the attribute
                // name decides.
                if k == "." || k == "has" {
                    if let Value::Object(access) = val {
                        let attr_named = access.get("attr").is_some_and(mentions);
                        let left = access.get("left");
                        let left_reads = left.is_some_and(|l| !is_context(l) && mentions(l));
                        let rest = access
                            .iter()
                            .filter(|(k, _)| *k != "attr" && *k != "left")
                            .any(|(_, v)| mentions(v));
                        return attr_named || left_reads || rest;
                    }
                }
                mentions(val)
            })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn reads(text: &str) -> bool {
        reads_revoke_target(&PolicySet::from_str(text).unwrap())
    }

    const HEAD: &str = r#"permit (principal, action == Tessera::Action::"revoke", resource)"#;

    #[test]
    fn the_example_policy_does_not_read_the_target() {
        assert!(!reads(include_str!("../../deploy/policy/example.cedar")));
        // Other context attributes are fine, in either syntax.
        assert!(!reads(&format!(
            r#"{HEAD} when {{ context.own && context["kind"] == "jti" && context has kind }};"#
        )));
        // Comments are not policy.
        assert!(!reads(&format!(
            "// the target is ignored\n{HEAD} when {{ context.own }};"
        )));
    }

    fn revoke_jti(principal: &str, jti: &str) -> crate::policy::Request {
        crate::policy::Request::revoke(
            principal,
            crate::policy::RevokeContext {
                kind: crate::policy::RevokeKind::Jti,
                target: jti.into(),
                own: false,
            },
        )
    }

    const ADMIN: &str = "spiffe://tessera.dev/admin";

    // The write path's decision: revocations of fresh jtis used to miss the
    // decision cache every time, because each named a new target.
    #[test]
    fn revocations_of_unique_targets_share_one_cached_decision() {
        let e =
            super::super::PolicyEngine::new(include_str!("../../deploy/policy/example.cedar"), 1)
                .unwrap();
        for i in 0..50 {
            let d = e.authorize(&revoke_jti(ADMIN, &format!("jti-{i}")));
            assert!(d.allowed);
            assert_eq!(d.policy_ids, ["admin"]);
            let d = e.authorize(&revoke_jti(
                "spiffe://tessera.dev/svc/orders",
                &format!("jti-{i}"),
            ));
            assert!(!d.allowed);
        }
        assert_eq!(e.cached_decisions(), 2);
    }

    #[test]
    fn a_policy_that_reads_the_target_is_decided_per_target() {
        let text = format!(
            r#"@id("admin") permit (principal == Tessera::Service::"{ADMIN}", action == Tessera::Action::"revoke", resource) unless {{ context.target == "keep" }};"#
        );
        let e = super::super::PolicyEngine::new(&text, 1).unwrap();
        assert!(e.authorize(&revoke_jti(ADMIN, "j1")).allowed);
        assert!(!e.authorize(&revoke_jti(ADMIN, "keep")).allowed);
        assert!(e.authorize(&revoke_jti(ADMIN, "j2")).allowed);
        assert_eq!(e.cached_decisions(), 3);
    }

    #[test]
    fn every_way_of_reading_the_target_is_seen() {
        for cond in [
            r#"context.target == "j1""#,
            r#"context["target"] like "j*""#,
            "context has target",
            r#"context == {"kind": "jti", "target": "j1", "own": false}"#,
            // Not the target, but a whole-context comparison could hide it.
            "context == context",
            // Mentions the word: conservatively a reader.
            r#"principal.id == "target""#,
        ] {
            assert!(reads(&format!("{HEAD} when {{ {cond} }};")), "{cond}");
        }
        // In an unless clause, a forbid, among other policies.
        assert!(reads(&format!(
            "{HEAD};\nforbid (principal, action, resource) unless {{ context.target != \"x\" }};"
        )));
    }
}
