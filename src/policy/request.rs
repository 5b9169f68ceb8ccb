//! The questions the service asks the policy engine, as Rust types, and
//! their translation into the Cedar context records of the schema.

use cedar_policy::RestrictedExpression;

/// The id of the single [`Resource::Cluster`] entity (`Tessera::Cluster::"tessera"`).
pub const CLUSTER_ID: &str = "tessera";

/// What the caller wants to do (`Tessera::Action::"..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Get a token for itself (the bootstrap grant).
    Issue,
    /// Exchange a token for a narrower, delegated one (RFC 8693 `act`).
    Exchange,
    /// Exchange a token without being named in `act` (impersonation).
    Impersonate,
    /// Revoke tokens.
    Revoke,
    /// Use introspection (and the revocation stream) at all.
    Introspect,
    /// Call the AdminService.
    Admin,
    /// Learn a valid token's claims through introspection (else the caller
    /// is told `active=false`, RFC 7662 §4).
    Disclose,
}

impl Action {
    /// Every action, in schema order.
    pub const ALL: [Action; 7] = [
        Action::Issue,
        Action::Exchange,
        Action::Impersonate,
        Action::Revoke,
        Action::Introspect,
        Action::Admin,
        Action::Disclose,
    ];

    /// The action's id in the schema (`issue`, `exchange`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Issue => "issue",
            Action::Exchange => "exchange",
            Action::Impersonate => "impersonate",
            Action::Revoke => "revoke",
            Action::Introspect => "introspect",
            Action::Admin => "admin",
            Action::Disclose => "disclose",
        }
    }

    /// Whether the action grants a token (resource is an audience, context
    /// carries a scope).
    pub fn is_grant(self) -> bool {
        matches!(self, Action::Issue | Action::Exchange | Action::Impersonate)
    }

    pub(super) fn index(self) -> usize {
        match self {
            Action::Issue => 0,
            Action::Exchange => 1,
            Action::Impersonate => 2,
            Action::Revoke => 3,
            Action::Introspect => 4,
            Action::Admin => 5,
            Action::Disclose => 6,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the action is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// The requested audience (`Tessera::Audience::"<audience>"`): the
    /// resource of issue, exchange and impersonate.
    Audience(String),
    /// The cluster (`Tessera::Cluster::"tessera"`): the resource of revoke,
    /// introspect and admin.
    Cluster,
}

/// Facts about a token exchange (or impersonation), everything but the scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ExchangeFacts {
    /// Requested lifetime of the new token, in seconds.
    pub lifetime: u64,
    /// Delegation depth of the token that would be minted: 1 for the first
    /// exchange of an issued token.
    pub depth: u32,
    /// The subject token's `sub`.
    pub subject: String,
    /// The subject token's `client_id`.
    pub subject_client: String,
    /// Subjects in the subject token's `act` chain, outermost first.
    pub actors: Vec<String>,
    /// Whether the request carried an `actor_token`.
    pub has_actor_token: bool,
}

/// Facts about a grant other than the scope: what
/// [`crate::policy::PolicyEngine::allowed_scopes`] needs besides the list of
/// scopes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GrantFacts {
    /// For [`Action::Issue`].
    Issue {
        /// Requested lifetime of the token, in seconds (the default lifetime
        /// when the request named none).
        lifetime: u64,
        /// The identities the request names in `may_act` (empty: none).
        may_act: Vec<String>,
    },
    /// For [`Action::Exchange`] and [`Action::Impersonate`].
    Exchange(ExchangeFacts),
}

/// How a revocation names its target (`context.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevokeKind {
    /// By `jti`.
    Jti,
    /// By the token itself (the target is its `jti`).
    Token,
    /// Every token of a subject.
    Subject,
    /// Every token issued to a client.
    Client,
    /// The presented token of a chain revocation (the target is its
    /// `jti`); its ancestors are asked about one by one as [`RevokeKind::Ancestor`].
    Chain,
    /// One ancestor of the token presented for a chain revocation (the
    /// target is the ancestor's `jti`; `own` says whether the caller is the
    /// chain's subject, which every token of a chain shares).
    Ancestor,
}

impl RevokeKind {
    /// The value of `context.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeKind::Jti => "jti",
            RevokeKind::Token => "token",
            RevokeKind::Subject => "subject",
            RevokeKind::Client => "client",
            RevokeKind::Chain => "chain",
            RevokeKind::Ancestor => "ancestor",
        }
    }
}

/// The context of [`Action::Revoke`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RevokeContext {
    /// How the target is named.
    pub kind: RevokeKind,
    /// The `jti` (for jti, token, chain and ancestor), the subject or the
    /// client identity.
    pub target: String,
    /// Whether the caller owns the target: for a token (kinds token and
    /// chain), it is the token's subject, client or holder (its certificate
    /// is the one the token is bound to); for an ancestor, it is the chain's
    /// subject; for subject and client, it is that identity; never for a
    /// bare jti (nothing is known about it).
    pub own: bool,
}

/// The context of [`Action::Disclose`]: the verified token whose claims
/// the caller would learn.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiscloseContext {
    /// The token's audiences.
    pub audience: Vec<String>,
    /// The token's `sub`.
    pub subject: String,
    /// The token's `client_id`.
    pub client: String,
    /// Whether the caller holds the token (its certificate is the one the
    /// token is bound to).
    pub holder: bool,
}

/// The typed context of a request; which variant goes with which action is
/// fixed by the schema (the `Request` constructors always match them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Context {
    /// Issue, exchange, impersonate: one scope and the facts of the grant.
    Grant {
        /// The one scope asked about.
        scope: String,
        /// Everything else.
        facts: GrantFacts,
    },
    /// Revoke.
    Revoke(RevokeContext),
    /// Introspect (empty context).
    Introspect,
    /// Disclose a token's claims.
    Disclose(DiscloseContext),
    /// Admin.
    Admin {
        /// The AdminService operation, e.g. `put_policy`.
        operation: String,
    },
}

/// One authorization question: may `principal` do `action` on `resource`
/// given `context`?
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    /// The caller's certificate identity: a SPIFFE id or a DNS name.
    pub principal: String,
    /// What it wants to do.
    pub action: Action,
    /// What it wants to do it to.
    pub resource: Resource,
    /// The facts the policy may look at.
    pub context: Context,
}

impl Request {
    /// About how many bytes of caller-chosen text the request holds (its
    /// strings), for bounding what a cache of requests keeps.
    pub fn weight(&self) -> usize {
        let resource = match &self.resource {
            Resource::Audience(a) => a.len(),
            Resource::Cluster => 0,
        };
        let context = match &self.context {
            Context::Grant { scope, facts } => {
                scope.len()
                    + match facts {
                        GrantFacts::Issue { may_act, .. } => may_act.iter().map(String::len).sum(),
                        GrantFacts::Exchange(f) => {
                            f.subject.len()
                                + f.subject_client.len()
                                + f.actors.iter().map(String::len).sum::<usize>()
                        }
                    }
            }
            Context::Revoke(c) => c.target.len(),
            Context::Introspect => 0,
            Context::Disclose(d) => {
                d.audience.iter().map(String::len).sum::<usize>() + d.subject.len() + d.client.len()
            }
            Context::Admin { operation } => operation.len(),
        };
        self.principal.len() + resource + context
    }

    /// May `principal` get a token for itself for `audience` with `scope`?
    pub fn issue(
        principal: impl Into<String>,
        audience: impl Into<String>,
        scope: impl Into<String>,
        lifetime: u64,
    ) -> Self {
        Self::grant(
            principal.into(),
            Action::Issue,
            audience.into(),
            scope.into(),
            GrantFacts::Issue {
                lifetime,
                may_act: Vec::new(),
            },
        )
    }

    /// May `principal` exchange a token for `audience` with `scope` (delegation)?
    pub fn exchange(
        principal: impl Into<String>,
        audience: impl Into<String>,
        scope: impl Into<String>,
        facts: ExchangeFacts,
    ) -> Self {
        Self::grant(
            principal.into(),
            Action::Exchange,
            audience.into(),
            scope.into(),
            GrantFacts::Exchange(facts),
        )
    }

    /// May `principal` impersonate the subject for `audience` with `scope`?
    pub fn impersonate(
        principal: impl Into<String>,
        audience: impl Into<String>,
        scope: impl Into<String>,
        facts: ExchangeFacts,
    ) -> Self {
        Self::grant(
            principal.into(),
            Action::Impersonate,
            audience.into(),
            scope.into(),
            GrantFacts::Exchange(facts),
        )
    }

    /// May `principal` revoke this target?
    pub fn revoke(principal: impl Into<String>, context: RevokeContext) -> Self {
        Self {
            principal: principal.into(),
            action: Action::Revoke,
            resource: Resource::Cluster,
            context: Context::Revoke(context),
        }
    }

    /// May `principal` introspect tokens?
    pub fn introspect(principal: impl Into<String>) -> Self {
        Self {
            principal: principal.into(),
            action: Action::Introspect,
            resource: Resource::Cluster,
            context: Context::Introspect,
        }
    }

    /// May `principal` learn the claims of this (valid) token?
    pub fn disclose(principal: impl Into<String>, context: DiscloseContext) -> Self {
        Self {
            principal: principal.into(),
            action: Action::Disclose,
            resource: Resource::Cluster,
            context: Context::Disclose(context),
        }
    }

    /// May `principal` call the admin `operation`?
    pub fn admin(principal: impl Into<String>, operation: impl Into<String>) -> Self {
        Self {
            principal: principal.into(),
            action: Action::Admin,
            resource: Resource::Cluster,
            context: Context::Admin {
                operation: operation.into(),
            },
        }
    }

    fn grant(
        principal: String,
        action: Action,
        audience: String,
        scope: String,
        facts: GrantFacts,
    ) -> Self {
        Self {
            principal,
            action,
            resource: Resource::Audience(audience),
            context: Context::Grant { scope, facts },
        }
    }
}

/// A context record as Cedar wants it.
pub(super) type Pairs = Vec<(String, RestrictedExpression)>;

/// Splits a caller identity into the `trust_domain` and `path` attributes of
/// its `Service` entity. SPIFFE paths keep their leading `/`, as in the SPIFFE
/// ID specification, so that `principal.path like "/svc/*"` reads naturally.
pub(super) fn split_identity(identity: &str) -> (&str, &str) {
    match identity.strip_prefix("spiffe://") {
        Some(rest) => match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        },
        None => ("", identity),
    }
}

// Cedar's Long is an i64. A lifetime or depth beyond it can only be larger
// than any limit a policy can write, so saturating keeps `>` limits working.
fn long(v: u64) -> RestrictedExpression {
    RestrictedExpression::new_long(i64::try_from(v).unwrap_or(i64::MAX))
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

impl GrantFacts {
    /// The context record without `scope`.
    pub(super) fn pairs(&self) -> Pairs {
        match self {
            GrantFacts::Issue { lifetime, may_act } => vec![
                ("lifetime".into(), long(*lifetime)),
                (
                    "may_act".into(),
                    RestrictedExpression::new_set(may_act.iter().map(|a| string(a))),
                ),
            ],
            GrantFacts::Exchange(f) => vec![
                ("lifetime".into(), long(f.lifetime)),
                ("depth".into(), long(u64::from(f.depth))),
                ("subject".into(), string(&f.subject)),
                ("subject_client".into(), string(&f.subject_client)),
                (
                    "actors".into(),
                    RestrictedExpression::new_set(f.actors.iter().map(|a| string(a))),
                ),
                (
                    "has_actor_token".into(),
                    RestrictedExpression::new_bool(f.has_actor_token),
                ),
            ],
        }
    }

    /// Whether these facts are the ones the schema gives `action`.
    pub(super) fn fits(&self, action: Action) -> bool {
        matches!(
            (self, action),
            (GrantFacts::Issue { .. }, Action::Issue)
                | (
                    GrantFacts::Exchange(_),
                    Action::Exchange | Action::Impersonate
                )
        )
    }
}

/// Adds `scope` to a grant's context record.
pub(super) fn with_scope(mut pairs: Pairs, scope: &str) -> Pairs {
    pairs.push(("scope".into(), string(scope)));
    pairs
}

impl Context {
    /// The Cedar context record, or why this context does not go with `action`.
    pub(super) fn pairs(&self, action: Action) -> Result<Pairs, String> {
        let fits = match (self, action) {
            (Context::Grant { facts, .. }, a) => facts.fits(a),
            (Context::Revoke(_), Action::Revoke)
            | (Context::Introspect, Action::Introspect)
            | (Context::Disclose(_), Action::Disclose)
            | (Context::Admin { .. }, Action::Admin) => true,
            _ => false,
        };
        if !fits {
            return Err(format!(
                "action `{action}` does not take a {} context",
                self.kind()
            ));
        }
        Ok(match self {
            Context::Grant { scope, facts } => with_scope(facts.pairs(), scope),
            Context::Revoke(r) => vec![
                ("kind".into(), string(r.kind.as_str())),
                ("target".into(), string(&r.target)),
                ("own".into(), RestrictedExpression::new_bool(r.own)),
            ],
            Context::Introspect => Vec::new(),
            Context::Disclose(d) => vec![
                (
                    "audience".into(),
                    RestrictedExpression::new_set(d.audience.iter().map(|a| string(a))),
                ),
                ("subject".into(), string(&d.subject)),
                ("client".into(), string(&d.client)),
                ("holder".into(), RestrictedExpression::new_bool(d.holder)),
            ],
            Context::Admin { operation } => vec![("operation".into(), string(operation))],
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            Context::Grant {
                facts: GrantFacts::Issue { .. },
                ..
            } => "issue",
            Context::Grant {
                facts: GrantFacts::Exchange(_),
                ..
            } => "exchange",
            Context::Revoke(_) => "revoke",
            Context::Introspect => "introspect",
            Context::Disclose(_) => "disclose",
            Context::Admin { .. } => "admin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_split_into_trust_domain_and_path() {
        assert_eq!(
            split_identity("spiffe://tessera.dev/svc/orders"),
            ("tessera.dev", "/svc/orders")
        );
        assert_eq!(split_identity("spiffe://tessera.dev"), ("tessera.dev", ""));
        assert_eq!(
            split_identity("spiffe://tessera.dev/"),
            ("tessera.dev", "/")
        );
    }

    #[test]
    fn dns_names_have_no_trust_domain() {
        assert_eq!(split_identity("orders.internal"), ("", "orders.internal"));
        assert_eq!(split_identity(""), ("", ""));
        // Only the exact scheme counts: anything else is a name.
        assert_eq!(
            split_identity("https://tessera.dev/x"),
            ("", "https://tessera.dev/x")
        );
    }

    #[test]
    fn constructors_pair_actions_with_their_contexts() {
        let facts = ExchangeFacts::default();
        let reqs = [
            Request::issue("p", "a", "s", 1),
            Request::exchange("p", "a", "s", facts.clone()),
            Request::impersonate("p", "a", "s", facts),
            Request::revoke(
                "p",
                RevokeContext {
                    kind: RevokeKind::Jti,
                    target: "j".into(),
                    own: true,
                },
            ),
            Request::introspect("p"),
            Request::admin("p", "status"),
            Request::disclose(
                "p",
                DiscloseContext {
                    audience: vec!["a".into()],
                    subject: "s".into(),
                    client: "c".into(),
                    holder: false,
                },
            ),
        ];
        for (req, action) in reqs.iter().zip(Action::ALL) {
            assert_eq!(req.action, action);
            assert_eq!(
                req.action.is_grant(),
                matches!(req.resource, Resource::Audience(_))
            );
            assert!(req.context.pairs(req.action).is_ok(), "{action}");
        }
    }

    #[test]
    fn mismatched_contexts_are_refused() {
        let issue = Context::Grant {
            scope: "s".into(),
            facts: GrantFacts::Issue {
                lifetime: 1,
                may_act: Vec::new(),
            },
        };
        for action in [
            Action::Exchange,
            Action::Impersonate,
            Action::Revoke,
            Action::Admin,
        ] {
            let err = issue.pairs(action).unwrap_err();
            assert!(err.contains("issue context"), "{err}");
        }
        let exchange = Context::Grant {
            scope: "s".into(),
            facts: GrantFacts::Exchange(ExchangeFacts::default()),
        };
        assert!(exchange.pairs(Action::Issue).is_err());
        assert!(Context::Introspect.pairs(Action::Admin).is_err());
    }

    #[test]
    fn action_index_matches_all() {
        for (i, a) in Action::ALL.iter().enumerate() {
            assert_eq!(a.index(), i);
        }
    }
}
