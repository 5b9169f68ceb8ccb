//! One validated policy version and the decisions it makes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{LazyLock, Mutex};

use cedar_policy::{
    Authorizer, Context as CedarContext, Decision as CedarDecision, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, PolicyId, PolicySet, Request as CedarRequest, RestrictedExpression,
    Schema, ValidationMode, Validator,
};

use super::request::{
    split_identity, Action, Context, GrantFacts, Pairs, Request, Resource, CLUSTER_ID,
};
use super::{PolicyError, SCHEMA};

/// The largest policy document accepted, in bytes. The text is replicated in
/// the Raft log and held by every node, so it is bounded like any buffer.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// The largest message a [`PolicyError`] carries, in bytes: enough for a
/// page of problems, small enough for a gRPC status and a log line.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// The outcome of one authorization question.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Whether the action is allowed.
    pub allowed: bool,
    /// The policies that determined the decision (the satisfied permits of an
    /// allow, the satisfied forbids of a deny; empty for a default deny),
    /// sorted. The service writes them to the audit log.
    pub policy_ids: Vec<String>,
    /// Problems met while deciding: policies whose evaluation failed (they
    /// are skipped, so an error never allows), or why the request could not
    /// be evaluated at all.
    pub errors: Vec<String>,
}

impl Decision {
    fn denied_by(error: &PolicyError) -> Self {
        Self {
            allowed: false,
            policy_ids: Vec::new(),
            errors: vec![error.to_string()],
        }
    }
}

/// What every engine shares: the schema and the names in it, built once per
/// process because it only depends on the embedded schema.
struct Model {
    validator: Validator,
    service: EntityTypeName,
    audience: EntityTypeName,
    cluster: EntityUid,
    actions: [EntityUid; 7],
}

static MODEL: LazyLock<Result<Model, String>> = LazyLock::new(Model::load);

impl Model {
    fn load() -> Result<Self, String> {
        let (schema, _warnings) =
            Schema::from_cedarschema_str(SCHEMA).map_err(|e| format!("embedded schema: {e}"))?;
        let type_name = |name: &str| {
            EntityTypeName::from_str(name).map_err(|e| format!("entity type {name}: {e}"))
        };
        let action_type = type_name("Tessera::Action")?;
        let action = |a: Action| {
            EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a.as_str()))
        };
        Ok(Self {
            service: type_name("Tessera::Service")?,
            audience: type_name("Tessera::Audience")?,
            cluster: EntityUid::from_type_name_and_id(
                type_name("Tessera::Cluster")?,
                EntityId::new(CLUSTER_ID),
            ),
            actions: Action::ALL.map(action),
            validator: Validator::new(schema),
        })
    }

    fn get() -> Result<&'static Self, PolicyError> {
        MODEL.as_ref().map_err(|e| PolicyError::Internal(e.clone()))
    }

    fn schema(&self) -> &Schema {
        self.validator.schema()
    }

    /// The principal and resource entities of a request (action entities are
    /// added by Cedar from the schema), checked against the schema.
    fn entities(
        &self,
        principal: &str,
        action: Action,
        resource: &Resource,
    ) -> Result<(EntityUid, EntityUid, Entities), PolicyError> {
        let internal = |e: &dyn std::fmt::Display| PolicyError::Internal(e.to_string());
        let (trust_domain, path) = split_identity(principal);
        let principal_uid =
            EntityUid::from_type_name_and_id(self.service.clone(), EntityId::new(principal));
        let principal_entity = Entity::new(
            principal_uid.clone(),
            HashMap::from([
                (
                    "id".to_owned(),
                    RestrictedExpression::new_string(principal.to_owned()),
                ),
                (
                    "trust_domain".to_owned(),
                    RestrictedExpression::new_string(trust_domain.to_owned()),
                ),
                (
                    "path".to_owned(),
                    RestrictedExpression::new_string(path.to_owned()),
                ),
            ]),
            HashSet::new(),
        )
        .map_err(|e| internal(&e))?;
        let resource_entity = match (action.is_grant(), resource) {
            (true, Resource::Audience(audience)) => Entity::new(
                EntityUid::from_type_name_and_id(self.audience.clone(), EntityId::new(audience)),
                HashMap::from([(
                    "id".to_owned(),
                    RestrictedExpression::new_string(audience.clone()),
                )]),
                HashSet::new(),
            )
            .map_err(|e| internal(&e))?,
            (false, Resource::Cluster) => {
                Entity::new_no_attrs(self.cluster.clone(), HashSet::new())
            }
            (_, resource) => {
                return Err(PolicyError::Internal(format!(
                    "action `{action}` does not apply to {resource:?}"
                )))
            }
        };
        let resource_uid = resource_entity.uid();
        let entities =
            Entities::from_entities([principal_entity, resource_entity], Some(self.schema()))
                .map_err(|e| internal(&e))?;
        Ok((principal_uid, resource_uid, entities))
    }
}

/// One validated version of the policy document. Immutable: a new version
/// is a new engine, shared behind an `Arc` and swapped whole.
pub struct PolicyEngine {
    version: u64,
    text: String,
    policies: PolicySet,
    /// Sorted policy ids, for listing.
    ids: Vec<String>,
    model: &'static Model,
    authorizer: Authorizer,
    /// Decisions already made by this version. A decision is a pure
    /// function of the request and the policy text, so it can be reused
    /// until the engine is replaced; Cedar evaluation costs 15 to 25 µs,
    /// a lookup well under one. Bounded: cleared when full.
    cache: Mutex<HashMap<Request, Decision>>,
    /// Whether a policy could tell revocation targets apart
    /// ([`super::target`]); when none can, revocation decisions are cached
    /// without their target, so that revocations of unique jtis share one.
    reads_revoke_target: bool,
}

/// Most decisions a [`PolicyEngine`] remembers.
const DECISION_CACHE: usize = 16 * 1024;

impl std::fmt::Debug for PolicyEngine {
    // The text can be long; its ids say what it contains.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("version", &self.version)
            .field("policy_ids", &self.ids)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Parses `text`, names its policies by `@id` and validates it against
    /// the schema in strict mode. `version` is the replicated version the text
    /// came with (the log index of its `PutPolicy`), reported back as is.
    ///
    /// The parse runs on a thread of its own with a large stack, after
    /// [`super::shape::check`] bounded the document's nesting.
    pub fn new(text: &str, version: u64) -> Result<Self, PolicyError> {
        let model = Model::get()?;
        check_size(text)?;
        super::shape::check(text)?;
        super::shape::on_parse_thread(|| {
            let (policies, ids) = load(model, text)?;
            let reads_revoke_target = super::target::reads_revoke_target(&policies);
            Ok(Self {
                version,
                text: text.to_owned(),
                policies,
                ids,
                model,
                authorizer: Authorizer::new(),
                cache: Mutex::new(HashMap::new()),
                reads_revoke_target,
            })
        })
    }

    /// Checks `text` exactly as [`PolicyEngine::new`] would, for dry runs
    /// (`ValidatePolicy`, and before proposing a `PutPolicy`).
    pub fn validate(text: &str) -> Result<(), PolicyError> {
        let model = Model::get()?;
        check_size(text)?;
        super::shape::check(text)?;
        super::shape::on_parse_thread(|| load(model, text).map(|_| ()))
    }

    /// The version this engine was built with.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The policy document as it was given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The ids of the policies in the document, sorted.
    pub fn policy_ids(&self) -> &[String] {
        &self.ids
    }

    /// Decides one request. Anything that prevents a decision denies, with the
    /// reason in [`Decision::errors`].
    pub fn authorize(&self, req: &Request) -> Decision {
        self.cached(req).unwrap_or_else(|e| Decision::denied_by(&e))
    }

    /// [`PolicyEngine::try_authorize`] through the decision cache.
    fn cached(&self, req: &Request) -> Result<Decision, PolicyError> {
        let key = self.cache_key(req);
        let key = key.as_ref().unwrap_or(req);
        if let Some(d) = self.cache.lock().ok().and_then(|c| c.get(key).cloned()) {
            return Ok(d);
        }
        let decision = self.try_authorize(req)?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= DECISION_CACHE {
                cache.clear();
            }
            cache.insert(key.clone(), decision.clone());
        }
        Ok(decision)
    }

    /// The key `req` is cached under when it is not `req` itself: a
    /// revocation without its target, when no policy reads the target.
    fn cache_key(&self, req: &Request) -> Option<Request> {
        match &req.context {
            Context::Revoke(c) if !self.reads_revoke_target && !c.target.is_empty() => {
                Some(Request {
                    principal: req.principal.clone(),
                    action: req.action,
                    resource: req.resource.clone(),
                    context: Context::Revoke(super::RevokeContext {
                        kind: c.kind,
                        target: String::new(),
                        own: c.own,
                    }),
                })
            }
            _ => None,
        }
    }

    /// How many decisions are cached (tests).
    #[cfg(test)]
    pub(super) fn cached_decisions(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.len())
    }

    /// Like [`PolicyEngine::authorize`], but a request that cannot be built
    /// (an action paired with the wrong resource or context: a bug) is an
    /// [`PolicyError::Internal`] instead of a deny.
    pub fn try_authorize(&self, req: &Request) -> Result<Decision, PolicyError> {
        let pairs = req
            .context
            .pairs(req.action)
            .map_err(PolicyError::Internal)?;
        let (principal, resource, entities) =
            self.model
                .entities(&req.principal, req.action, &req.resource)?;
        self.decide(principal, req.action, resource, pairs, &entities)
    }

    /// Asks once per scope "may `principal` do `action` on `audience` with this
    /// scope?" and returns the allowed scopes (in the order given, without
    /// duplicates) and the ids of every policy that determined one of the
    /// answers, allows and denies alike, sorted. `facts` is the rest of the
    /// context. Default deny: if the request cannot be built (a bug), nothing
    /// is allowed and the problem is logged.
    pub fn allowed_scopes(
        &self,
        principal: &str,
        action: Action,
        audience: &str,
        scopes: &[String],
        facts: &GrantFacts,
    ) -> (Vec<String>, Vec<String>) {
        match self.try_allowed_scopes(principal, action, audience, scopes, facts) {
            Ok(answer) => answer,
            Err(error) => {
                tracing::error!(%principal, %action, %audience, %error, "policy request cannot be built");
                (Vec::new(), Vec::new())
            }
        }
    }

    fn try_allowed_scopes(
        &self,
        principal: &str,
        action: Action,
        audience: &str,
        scopes: &[String],
        facts: &GrantFacts,
    ) -> Result<(Vec<String>, Vec<String>), PolicyError> {
        if !facts.fits(action) {
            return Err(PolicyError::Internal(format!(
                "action `{action}` does not take these grant facts"
            )));
        }
        let mut req = Request {
            principal: principal.to_owned(),
            action,
            resource: Resource::Audience(audience.to_owned()),
            context: Context::Grant {
                scope: String::new(),
                facts: facts.clone(),
            },
        };
        let mut allowed: Vec<String> = Vec::new();
        let mut ids = BTreeSet::new();
        for scope in scopes {
            if allowed.contains(scope) {
                continue;
            }
            if let Context::Grant { scope: s, .. } = &mut req.context {
                s.clone_from(scope);
            }
            let decision = self.cached(&req)?;
            for error in &decision.errors {
                tracing::warn!(%principal, %action, %audience, %scope, %error, "policy evaluation error");
            }
            ids.extend(decision.policy_ids);
            if decision.allowed {
                allowed.push(scope.clone());
            }
        }
        Ok((allowed, ids.into_iter().collect()))
    }

    fn decide(
        &self,
        principal: EntityUid,
        action: Action,
        resource: EntityUid,
        pairs: Pairs,
        entities: &Entities,
    ) -> Result<Decision, PolicyError> {
        let internal = |e: &dyn std::fmt::Display| PolicyError::Internal(e.to_string());
        let context = CedarContext::from_pairs(pairs).map_err(|e| internal(&e))?;
        let action_uid = self.model.actions[action.index()].clone();
        let request = CedarRequest::new(
            principal,
            action_uid,
            resource,
            context,
            Some(self.model.schema()),
        )
        .map_err(|e| internal(&e))?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, entities);
        let mut policy_ids: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        policy_ids.sort();
        Ok(Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policy_ids,
            errors: response
                .diagnostics()
                .errors()
                .map(ToString::to_string)
                .collect(),
        })
    }
}

fn check_size(text: &str) -> Result<(), PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::Invalid(format!(
            "the document is {} bytes, more than the limit of {MAX_POLICY_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

/// Parses, renames by `@id` and validates a policy document (on the parse
/// thread: Cedar's parser recurses per level of nesting).
fn load(model: &Model, text: &str) -> Result<(PolicySet, Vec<String>), PolicyError> {
    let parsed = PolicySet::from_str(text).map_err(|_| PolicyError::Parse(parse_problems(text)))?;

    let mut problems: Vec<String> = parsed
        .templates()
        .map(|t| {
            format!(
                "`{}` is a template (it has slots such as ?principal); templates are not supported",
                t.id()
            )
        })
        .collect();
    // Cedar's own ids (policy0, ...) depend on the order of the text; @id
    // keeps audit records meaningful across edits.
    let mut named = Vec::new();
    let mut seen = HashSet::new();
    for policy in parsed.policies() {
        let id = match policy.annotation("id") {
            Some(id) if id.trim().is_empty() => {
                problems.push(format!("`{}` has an empty @id", policy.id()));
                continue;
            }
            Some(id) => policy.new_id(PolicyId::new(id)),
            None => policy.clone(),
        };
        let name = id.id().to_string();
        if !seen.insert(name.clone()) {
            problems.push(format!("@id `{name}` is used by more than one policy"));
            continue;
        }
        named.push(id);
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(PolicyError::Invalid(bounded(problems)));
    }
    let policies = PolicySet::from_policies(named)
        .map_err(|e| PolicyError::Invalid(bounded([e.to_string()])))?;

    let result = model.validator.validate(&policies, ValidationMode::Strict);
    if !result.validation_passed() {
        let mut problems: Vec<String> = result
            .validation_errors()
            .map(ToString::to_string)
            .collect();
        problems.sort();
        return Err(PolicyError::Invalid(bounded(problems)));
    }
    let mut ids: Vec<String> = seen.into_iter().collect();
    ids.sort();
    Ok((policies, ids))
}

/// The parser's problems, each prefixed with the line its statement starts
/// on. Cedar's messages carry no position (that lives in its `miette`
/// diagnostics), so each statement is parsed again on its own to say where.
fn parse_problems(text: &str) -> String {
    let mut problems = Vec::new();
    for (line, statement) in statements(text) {
        if let Err(errors) = PolicySet::from_str(statement) {
            problems.extend(errors.iter().map(|e| format!("line {line}: {e}")));
        }
    }
    if problems.is_empty() {
        // Only the whole text fails; report it as a whole.
        if let Err(errors) = PolicySet::from_str(text) {
            problems.extend(errors.iter().map(ToString::to_string));
        }
    }
    bounded(problems)
}

/// Splits policy text into statements at the `;` that end them (outside
/// string literals and `//` comments), with the 1-based line each statement's
/// first token is on. A trailing unterminated statement is kept.
fn statements(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut start: Option<(usize, usize)> = None;
    let mut in_string = false;
    let mut in_comment = false;
    let mut escaped = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\n' {
            line += 1;
        }
        if in_comment {
            in_comment = c != '\n';
            continue;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '/' if chars.peek().map(|&(_, n)| n) == Some('/') => {
                in_comment = true;
                continue;
            }
            c if c.is_whitespace() => continue,
            '"' => in_string = true,
            _ => {}
        }
        let (from, at) = *start.get_or_insert((i, line));
        if c == ';' {
            out.push((at, &text[from..=i]));
            start = None;
        }
    }
    if let Some((from, at)) = start {
        out.push((at, &text[from..]));
    }
    out
}

/// Joins problems into one message of at most [`MAX_ERROR_MESSAGE_BYTES`],
/// saying how many were left out.
fn bounded(problems: impl IntoIterator<Item = String>) -> String {
    let problems: Vec<String> = problems.into_iter().collect();
    // Room kept for the "… and N more" tail.
    const TAIL: usize = 32;
    let mut out = String::new();
    for (i, problem) in problems.iter().enumerate() {
        let sep = if out.is_empty() { "" } else { "; " };
        let room = MAX_ERROR_MESSAGE_BYTES - TAIL - out.len();
        if sep.len() + problem.len() <= room {
            out.push_str(sep);
            out.push_str(problem);
            continue;
        }
        if out.is_empty() {
            // A single problem longer than the limit: cut it at a character boundary.
            let mut end = room.saturating_sub(1);
            while !problem.is_char_boundary(end) {
                end -= 1;
            }
            out.push_str(&problem[..end]);
            out.push('…');
            if i + 1 == problems.len() {
                break;
            }
            out.push_str(&format!("; … and {} more", problems.len() - i - 1));
        } else {
            out.push_str(&format!("; … and {} more", problems.len() - i));
        }
        break;
    }
    out
}

#[cfg(test)]
mod tests {
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
        let err = PolicyEngine::new("permit(principal, action, resource) whenn { true };", 1)
            .unwrap_err();
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
        let text = "// a; comment\n permit(a)\n when { \"x;\\\"y\" };\n\n@id(\"//\") forbid(b);  permit(c)";
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
        let empty =
            r#"@id(" ") permit(principal, action == Tessera::Action::"introspect", resource);"#;
        assert_eq!(
            PolicyEngine::validate(empty),
            Err(PolicyError::Invalid("`policy0` has an empty @id".into()))
        );
    }

    #[test]
    fn templates_are_invalid() {
        let text = r#"permit(principal == ?principal, action == Tessera::Action::"introspect", resource);"#;
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
}
