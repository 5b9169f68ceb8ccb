//! One validated policy version and the decisions it makes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{LazyLock, Mutex};

use cedar_policy::{
    AuthorizationError, Authorizer, Context as CedarContext, Decision as CedarDecision, Effect,
    Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet,
    Request as CedarRequest, RestrictedExpression, Schema, ValidationMode, Validator,
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
    /// a lookup well under one. Bounded in entries and in the bytes of
    /// their keys (callers choose much of a key): cleared when full.
    cache: Mutex<DecisionCache>,
    /// Whether a policy could tell revocation targets apart
    /// ([`super::target`]); when none can, revocation decisions are cached
    /// without their target, so that revocations of unique jtis share one.
    reads_revoke_target: bool,
}

/// Most decisions a [`PolicyEngine`] remembers.
const DECISION_CACHE: usize = 16 * 1024;

/// Most bytes of request text ([`Request::weight`]) the decision cache
/// holds: a few MiB, where 16k requests of up to 16 `may_act` names of
/// 512 bytes each would hold 126 MiB.
const DECISION_CACHE_BYTES: usize = 4 << 20;

/// A request this heavy is decided every time, not cached: it would take
/// room from many ordinary ones.
const DECISION_CACHE_MAX_KEY: usize = 2048;

/// Decisions by request, and the weight of their keys.
#[derive(Default)]
struct DecisionCache {
    decisions: HashMap<Request, Decision>,
    bytes: usize,
}

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
    /// For a document the cluster already holds (replicated, restored, or
    /// checked at start): the shape limits of [`PolicyEngine::validate`]
    /// are not applied again, so a policy an earlier release accepted keeps
    /// working after an upgrade. The parse runs on a thread of its own with
    /// a large stack, which holds any document an earlier release could
    /// parse on a worker's.
    pub fn new(text: &str, version: u64) -> Result<Self, PolicyError> {
        let model = Model::get()?;
        check_size(text)?;
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
                cache: Mutex::new(DecisionCache::default()),
                reads_revoke_target,
            })
        })
    }

    /// Checks `text` as [`PolicyEngine::new`] would, plus the shape limits
    /// ([`super::shape::check`]) every new document must meet: for dry
    /// runs (`ValidatePolicy`), before proposing a `PutPolicy`, and for the
    /// policy a node is started with.
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
        if let Some(d) = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.decisions.get(key).cloned())
        {
            return Ok(d);
        }
        let decision = self.try_authorize(req)?;
        let weight = key.weight();
        if weight <= DECISION_CACHE_MAX_KEY {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.decisions.len() >= DECISION_CACHE
                    || cache.bytes + weight > DECISION_CACHE_BYTES
                {
                    cache.decisions.clear();
                    cache.bytes = 0;
                }
                if cache
                    .decisions
                    .insert(key.clone(), decision.clone())
                    .is_none()
                {
                    cache.bytes += weight;
                }
            }
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
        self.cache.lock().map_or(0, |c| c.decisions.len())
    }

    /// The weight of the cached keys (tests).
    #[cfg(test)]
    pub(super) fn cached_bytes(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.bytes)
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
        // Cedar skips a policy whose evaluation fails. For a `forbid` that
        // would let a `permit` allow what the forbid was written to stop:
        // an error in a forbid denies.
        let forbid_failed = response.diagnostics().errors().any(|e| match e {
            AuthorizationError::PolicyEvaluationError(e) => self
                .policies
                .policy(e.policy_id())
                .is_none_or(|p| p.effect() == Effect::Forbid),
        });
        Ok(Decision {
            allowed: response.decision() == CedarDecision::Allow && !forbid_failed,
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
#[path = "engine_tests.rs"]
mod tests;
