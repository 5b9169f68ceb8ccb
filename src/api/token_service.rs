//! `TokenService`: issue, exchange (RFC 8693), introspect (RFC 7662) and
//! revoke.
//!
//! Every handler first checks the request's shape and sizes
//! ([`super::validate`]: counts and bytes, linear work), and only then does
//! anything expensive. Order of checks in an exchange: request shape, then
//! the presented tokens (signature, time, revocation), then the pure
//! exchange rules, then policy per audience and scope. The pure rules come
//! before policy so that a refused exchange gets the most precise reason.
//!
//! Least privilege: a non-admin revokes what it owns (a chain revocation
//! asks policy about each ancestor separately), and introspection tells a
//! caller a token's claims only if policy's `disclose` allows it (by
//! default: the token's audiences and the admin).
//!
//! The handlers are `TokenApi` methods taking the caller's identity and the
//! request message; the gRPC service (at the end) and the OAuth HTTP
//! endpoints ([`super::http::oauth`]) are thin faces over them. Issue and
//! exchange refusals carry a [`Cause`] (what part of the request they
//! concern) for the HTTP face's error codes.

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::purge::PurgeTimes;
use super::refusal::{Cause, Refused};
use super::validate::{self, TOKEN_TYPE_ACCESS};
use super::{ApiError, AuditEvent, Shared};
use crate::pb;
use crate::policy::{
    Action, DiscloseContext, ExchangeFacts, GrantFacts, RevokeContext, RevokeKind,
};
use crate::raft::{Op, RevokedJti};
use crate::tls::PeerIdentity;
use crate::token::{self, Claims, ExchangeInput, Limits, MayAct};

/// Granted scopes and the policy ids that determined them.
type Grant = (Vec<String>, Vec<String>);

/// Why policy granted nothing.
struct Refusal {
    /// The audience for which no scope was allowed.
    audience: String,
    /// Every policy id consulted, for the audit log.
    ids: Vec<String>,
    /// The forbids that denied that audience (empty for a default deny),
    /// named in the caller's message: e.g. `limit-lifetime`.
    forbids: Vec<String>,
}

impl Refusal {
    fn message(&self, action: Action) -> String {
        let mut m = format!(
            "policy ({action}): no requested scope is allowed for audience {}",
            self.audience
        );
        if !self.forbids.is_empty() {
            m.push_str(&format!("; forbidden by {}", self.forbids.join(", ")));
        }
        m
    }
}

/// The `TokenService` implementation.
pub struct TokenApi {
    shared: Arc<Shared>,
}

impl TokenApi {
    /// The service over `shared`; cheap (an `Arc` clone), so the HTTP
    /// endpoints make one per request.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn limits(&self) -> Limits {
        let s = &self.shared.settings;
        Limits {
            issuer: s.issuer.clone(),
            default_lifetime: s.default_lifetime,
            max_lifetime: s.max_lifetime,
            max_depth: s.max_depth,
        }
    }

    /// Verifies a presented token and checks it against the revocations.
    fn check_token(&self, token: &str, now: u64) -> Result<Arc<Claims>, ApiError> {
        let claims = self.shared.verify_token(token, now)?;
        if self.is_revoked(&claims) {
            return Err(ApiError::Unauthenticated("token is revoked".into()));
        }
        Ok(claims)
    }

    fn is_revoked(&self, c: &Claims) -> bool {
        let mut jtis: Vec<&str> = c.chain.iter().map(String::as_str).collect();
        jtis.push(&c.jti);
        self.shared
            .state
            .is_revoked(&jtis, &c.sub, &c.clients(), c.iat, c.rev)
    }

    fn policy(&self) -> Result<Arc<crate::policy::PolicyEngine>, ApiError> {
        self.shared
            .policy()?
            .ok_or_else(|| ApiError::PermissionDenied("no policy is installed".into()))
    }

    /// Narrows `scopes` to what policy allows for every audience. Returns the
    /// granted scopes and the determining policy ids, or the first audience
    /// for which nothing is allowed.
    fn grant(
        &self,
        caller: &str,
        action: Action,
        audiences: &[String],
        scopes: &[String],
        facts: &GrantFacts,
    ) -> Result<Grant, Refusal> {
        let policy = match self.policy() {
            Ok(p) => p,
            Err(_) => {
                return Err(Refusal {
                    audience: audiences.first().cloned().unwrap_or_default(),
                    ids: vec![],
                    forbids: vec![],
                })
            }
        };
        let mut granted = scopes.to_vec();
        let mut ids = BTreeSet::new();
        for aud in audiences {
            let (allowed, pids) = policy.allowed_scopes(caller, action, aud, &granted, facts);
            if allowed.is_empty() {
                // Every answer for this audience was a deny: the ids that
                // determined them are the satisfied forbids.
                ids.extend(pids.iter().cloned());
                return Err(Refusal {
                    audience: aud.clone(),
                    ids: ids.into_iter().collect(),
                    forbids: pids,
                });
            }
            ids.extend(pids);
            granted = allowed;
        }
        Ok((granted, ids.into_iter().collect()))
    }

    async fn audit(&self, ev: AuditEvent) {
        self.shared.record(ev).await;
    }

    fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        let ring = self.shared.key_ring()?;
        let jwt = ring.signer()?.sign(claims)?;
        // Never hand out a token every verifier refuses as too large (long
        // identities and a deep delegation chain can get there).
        let max = self.shared.settings.max_token_len;
        if jwt.len() > max {
            return Err(ApiError::TooLarge(format!(
                "the token would be {} bytes, more than the {max} bytes verifiers accept: the delegation chain (depth {}) is too long for these identities",
                jwt.len(),
                claims.depth()
            )));
        }
        Ok(jwt)
    }
}

fn caller<T>(req: &Request<T>) -> Result<PeerIdentity, Status> {
    crate::tls::caller_identity(req)
}

/// Whether the caller holds `c`: the token is bound to its certificate.
fn is_holder(c: &Claims, caller: &PeerIdentity) -> bool {
    !caller.thumbprint.is_empty() && c.thumbprint() == Some(caller.thumbprint.as_str())
}

/// Whether the caller owns `c`: its subject, client or holder.
fn owns(c: &Claims, caller: &PeerIdentity) -> bool {
    c.sub == caller.id || c.client_id == caller.id || is_holder(c, caller)
}

fn token_response(token: String, c: &Claims) -> pb::TokenResponse {
    pb::TokenResponse {
        access_token: token,
        issued_token_type: TOKEN_TYPE_ACCESS.into(),
        token_type: "Bearer".into(),
        expires_in: c.exp.saturating_sub(c.iat),
        scope: c.scopes().into_iter().map(str::to_string).collect(),
        jti: c.jti.clone(),
        audience: c.aud.as_slice().to_vec(),
    }
}

fn actor_pb(a: &token::Actor) -> pb::Actor {
    pb::Actor {
        sub: a.sub.clone(),
        act: a.act.as_deref().map(|inner| Box::new(actor_pb(inner))),
    }
}

/// The handlers, one per RPC, taking the caller's identity and the request
/// message: the gRPC service below and the OAuth HTTP endpoints
/// ([`super::http`]) both call these, so the rules exist once.
impl TokenApi {
    /// `IssueToken` (the bootstrap grant; OAuth `client_credentials`).
    #[tracing::instrument(name = "issue", skip_all, fields(caller = caller.id.as_str(), jti))]
    pub(crate) async fn issue(
        &self,
        caller: &PeerIdentity,
        req: pb::IssueTokenRequest,
    ) -> Result<pb::TokenResponse, Refused> {
        let s = &self.shared.settings;
        let validate::IssueParams {
            audiences,
            scopes,
            lifetime,
            may_act,
        } = validate::issue(req, s.max_lifetime)?;
        // A token rule, classified as one (OAuth `invalid_scope`, as for an
        // exchange).
        if scopes.is_empty() {
            return Err(Refused::token(token::TokenError::NoScopeRequested));
        }
        // Policy and keys as of every acknowledged write; the token's
        // `tsr_rev` is read after this.
        self.shared.read_barrier().await?;
        let now = self.shared.clock.now();
        // Policy sees what was asked for; the default only when nothing was.
        let lifetime = lifetime.unwrap_or(s.default_lifetime);
        let mut ev = AuditEvent::new(now, "issue", "deny", &caller.id);
        ev.audience = audiences.clone();
        let facts = GrantFacts::Issue {
            lifetime,
            may_act: may_act.clone(),
        };
        let (granted, ids) =
            match self.grant(&caller.id, Action::Issue, &audiences, &scopes, &facts) {
                Ok(g) => g,
                Err(refusal) => {
                    let message = refusal.message(Action::Issue);
                    ev.policy_ids = refusal.ids;
                    ev.reason = Some(message.clone());
                    self.audit(ev).await;
                    return Err(Refused::new(
                        Cause::Target,
                        ApiError::PermissionDenied(message),
                    ));
                }
            };
        ev.policy_ids = ids;
        let jti = token::new_jti().map_err(ApiError::from)?;
        let mut claims = token::issue_claims(
            &caller.id,
            &caller.thumbprint,
            &audiences,
            &granted,
            Some(lifetime),
            &self.limits(),
            now,
            jti,
        )
        .map_err(Refused::token)?;
        // The revision this node has applied: a subject or client cut-off
        // applied above it revokes the token (token::cutoff_revokes).
        claims.rev = Some(self.shared.state.revision());
        if !may_act.is_empty() {
            claims.may_act = Some(MayAct { sub: may_act });
        }
        let token = self.sign(&claims)?;
        tracing::Span::current().record("jti", claims.jti.as_str());
        ev.decision = "allow";
        ev.issued_jti = Some(claims.jti.clone());
        ev.scope = granted;
        self.audit(ev).await;
        Ok(token_response(token, &claims))
    }

    /// `ExchangeToken` (RFC 8693).
    #[tracing::instrument(name = "exchange", skip_all, fields(caller = caller.id.as_str(), subject_jti, jti))]
    pub(crate) async fn exchange(
        &self,
        caller: &PeerIdentity,
        req: pb::ExchangeTokenRequest,
    ) -> Result<pb::TokenResponse, Refused> {
        let r = validate::exchange(req, self.shared.settings.max_lifetime)?;
        let (scopes, audiences) = (&r.scopes, &r.audiences);
        // Revocations, keys and policy as of every acknowledged write: a
        // token revoked a moment ago on another node is refused here.
        self.shared.read_barrier().await?;

        let now = self.shared.clock.now();
        // Read before the presented tokens are checked against the
        // revocations: a cut-off applied after this read (which the checks
        // may not have seen) is then above the new token's `tsr_rev` and
        // revokes it too.
        let rev = self.shared.state.revision();
        let mut ev = AuditEvent::new(now, "exchange", "deny", &caller.id);
        ev.audience = audiences.clone();
        let subject = match self.check_token(&r.subject_token, now) {
            Ok(c) => c,
            Err(e) => {
                ev.reason = Some(format!("subject token: {e}"));
                self.audit(ev).await;
                return Err(Refused::new(Cause::Grant, prefix("subject token", e)));
            }
        };
        tracing::Span::current().record("subject_jti", subject.jti.as_str());
        ev.subject_jti = Some(subject.jti.clone());
        let actor = match &r.actor_token {
            None => None,
            Some(t) => match self.check_token(t, now) {
                Ok(c) => Some(c),
                Err(e) => {
                    ev.reason = Some(format!("actor token: {e}"));
                    self.audit(ev).await;
                    return Err(Refused::new(Cause::Grant, prefix("actor token", e)));
                }
            },
        };
        let jti = token::new_jti().map_err(ApiError::from)?;
        let input = ExchangeInput {
            caller: &caller.id,
            caller_cert_thumbprint: &caller.thumbprint,
            subject: &subject,
            actor: actor.as_deref(),
            requested_scopes: scopes,
            audiences,
            requested_lifetime: r.lifetime,
            impersonate: r.impersonate,
            now,
        };
        // Policy narrowing comes after the rules; the rules see every
        // requested scope so that widening is refused, not dropped.
        let mut claims = match token::exchange(&input, scopes, &self.limits(), jti) {
            Ok(c) => c,
            Err(e) => {
                ev.reason = Some(e.to_string());
                self.audit(ev).await;
                return Err(Refused::token(e));
            }
        };
        let action = if r.impersonate {
            Action::Impersonate
        } else {
            Action::Exchange
        };
        let facts = GrantFacts::Exchange(ExchangeFacts {
            // What was asked for; what the token gets when nothing was.
            lifetime: r.lifetime.unwrap_or(claims.exp.saturating_sub(claims.iat)),
            depth: u32::try_from(claims.chain.len()).unwrap_or(u32::MAX),
            subject: subject.sub.clone(),
            subject_client: subject.client_id.clone(),
            actors: subject
                .actor_subjects()
                .into_iter()
                .map(str::to_string)
                .collect(),
            has_actor_token: actor.is_some(),
        });
        let requested: Vec<String> = claims.scopes().into_iter().map(str::to_string).collect();
        let (granted, ids) = match self.grant(&caller.id, action, audiences, &requested, &facts) {
            Ok(g) => g,
            Err(refusal) => {
                let message = refusal.message(action);
                ev.policy_ids = refusal.ids;
                ev.reason = Some(message.clone());
                self.audit(ev).await;
                return Err(Refused::new(
                    Cause::Target,
                    ApiError::PermissionDenied(message),
                ));
            }
        };
        claims.scope = granted.join(" ");
        claims.rev = Some(rev);
        // Too long a token here is the subject token's chain (as a depth
        // refusal): the grant's doing.
        let token = self.sign(&claims).map_err(|e| match e {
            e @ ApiError::TooLarge(_) => Refused::new(Cause::Grant, e),
            e => e.into(),
        })?;
        tracing::Span::current().record("jti", claims.jti.as_str());
        ev.decision = "allow";
        ev.policy_ids = ids;
        ev.issued_jti = Some(claims.jti.clone());
        ev.scope = granted;
        self.audit(ev).await;
        Ok(token_response(token, &claims))
    }

    /// `Introspect` (RFC 7662).
    #[tracing::instrument(name = "introspect", skip_all, fields(caller = caller.id.as_str(), jti))]
    pub(crate) async fn introspect(
        &self,
        caller: &PeerIdentity,
        r: pb::IntrospectRequest,
    ) -> Result<pb::IntrospectResponse, ApiError> {
        validate::introspect(&r)?;
        let local = r.consistency == pb::Consistency::Local as i32;
        if !local && r.consistency != pb::Consistency::Linearizable as i32 {
            return Err(ApiError::InvalidArgument("unknown consistency".into()));
        }
        if local {
            // Possibly stale, by choice; the response says how stale.
            self.shared.ensure_started()?;
        } else {
            // Revocations and policy as of every acknowledged write.
            self.shared.read_barrier().await?;
        }
        let now = self.shared.clock.now();
        let mut ev = AuditEvent::new(now, "introspect", "deny", &caller.id);
        let policy = self.shared.policy_for(&ev).await?;
        let decision = policy.authorize(&crate::policy::Request::introspect(caller.id.clone()));
        ev.policy_ids = decision.policy_ids;
        if !decision.allowed {
            ev.reason = Some("policy".into());
            self.audit(ev).await;
            return Err(ApiError::PermissionDenied(
                "policy (introspect): not allowed".into(),
            ));
        }
        if r.min_revision > 0 {
            self.shared.wait_applied(r.min_revision).await?;
        }
        // Read the revision before the state: the answer reflects at least it.
        let revision = self.shared.state.revision();
        let max_staleness_ms = if local {
            self.shared.staleness().map_or(u64::MAX, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
            })
        } else {
            0
        };
        let inactive = pb::IntrospectResponse {
            active: false,
            revision,
            linearizable: !local,
            max_staleness_ms,
            ..Default::default()
        };
        ev.decision = "allow";
        let resp = match self.check_token(&r.token, now) {
            Ok(c) => {
                ev.subject_jti = Some(c.jti.clone());
                tracing::Span::current().record("jti", c.jti.as_str());
                // RFC 7662 §4: a caller policy does not let see the claims
                // is told no more than "inactive".
                let disclose = policy.authorize(&crate::policy::Request::disclose(
                    caller.id.clone(),
                    DiscloseContext {
                        audience: c.aud.as_slice().to_vec(),
                        subject: c.sub.clone(),
                        client: c.client_id.clone(),
                        holder: is_holder(&c, caller),
                    },
                ));
                ev.policy_ids.extend(disclose.policy_ids);
                if disclose.allowed {
                    pb::IntrospectResponse {
                        linearizable: !local,
                        max_staleness_ms,
                        ..claims_response(&c, revision)
                    }
                } else {
                    ev.decision = "deny";
                    ev.reason = Some("policy (disclose): claims not disclosed".into());
                    inactive
                }
            }
            // Only a token found unacceptable (or revoked) is inactive; a
            // node that cannot decide (no key ring, a bug) says so rather
            // than call a valid token invalid.
            Err(e @ ApiError::Unauthenticated(_)) => {
                ev.reason = Some(format!("inactive: {e}"));
                inactive
            }
            Err(e) => {
                ev.decision = "error";
                ev.reason = Some(format!("cannot decide: {e}"));
                self.audit(ev).await;
                return Err(e);
            }
        };
        self.audit(ev).await;
        Ok(resp)
    }

    /// `Revoke` (RFC 7009 for a token target).
    #[tracing::instrument(name = "revoke", skip_all, fields(caller = caller.id.as_str(), jti, revision))]
    pub(crate) async fn revoke(
        &self,
        caller: &PeerIdentity,
        req: pb::RevokeRequest,
    ) -> Result<pb::RevokeResponse, ApiError> {
        use pb::revoke_request::Target;
        let target = validate::revoke(req)?;
        // The write goes through the leader and is linearizable; the
        // permission must be too: a node behind its leader would otherwise
        // decide on a policy the cluster has already replaced (a forbidden
        // revocation committed through it).
        self.shared.read_barrier().await?;
        let now = self.shared.clock.now();
        let s = &self.shared.settings;
        // When each entry may be purged (the derivation is in `purge`).
        let purge = PurgeTimes::new(s, now);
        let horizon = purge.horizon;
        let mut ev = AuditEvent::new(now, "revoke", "deny", &caller.id);
        let policy = self.shared.policy_for(&ev).await?;
        let mut ids = BTreeSet::new();
        // Asks policy; a refusal of the main target is PERMISSION_DENIED.
        let mut ask = |ctx: RevokeContext| {
            let d = policy.authorize(&crate::policy::Request::revoke(caller.id.clone(), ctx));
            ids.extend(d.policy_ids);
            d.allowed
        };
        let (kind, allowed, op) = match target {
            Target::Token(t) => {
                let c = match self.revocable(&t, now) {
                    Ok(c) => c,
                    Err(e) => return self.not_revocable(ev, e).await,
                };
                ev.subject_jti = Some(c.jti.clone());
                let allowed = ask(RevokeContext {
                    kind: RevokeKind::Token,
                    target: c.jti.clone(),
                    own: owns(&c, caller),
                });
                let jtis = vec![RevokedJti {
                    jti: c.jti,
                    until: purge.for_token(c.exp),
                }];
                (RevokeKind::Token, allowed, Op::RevokeJtis { jtis })
            }
            Target::ChainOfToken(t) => {
                let c = match self.revocable(&t, now) {
                    Ok(c) => c,
                    Err(e) => return self.not_revocable(ev, e).await,
                };
                ev.subject_jti = Some(c.jti.clone());
                let allowed = ask(RevokeContext {
                    kind: RevokeKind::Chain,
                    target: c.jti.clone(),
                    own: owns(&c, caller),
                });
                // Each ancestor is its own question: a caller revokes the
                // ancestors it may (all of them for an admin or the chain's
                // subject under the example policy), never the others. The
                // token's own descendants die with it either way (they
                // carry its jti in their chain).
                let mut jtis: Vec<RevokedJti> = Vec::with_capacity(c.chain.len() + 1);
                if allowed {
                    for j in &c.chain {
                        let ancestor = RevokeContext {
                            kind: RevokeKind::Ancestor,
                            target: j.clone(),
                            own: c.sub == caller.id,
                        };
                        if ask(ancestor) {
                            jtis.push(RevokedJti {
                                jti: j.clone(),
                                until: horizon,
                            });
                        }
                    }
                }
                jtis.push(RevokedJti {
                    jti: c.jti.clone(),
                    until: purge.for_token(c.exp),
                });
                (RevokeKind::Chain, allowed, Op::RevokeJtis { jtis })
            }
            Target::Jti(j) => {
                ev.subject_jti = Some(j.clone());
                let allowed = ask(RevokeContext {
                    kind: RevokeKind::Jti,
                    target: j.clone(),
                    own: false,
                });
                let jtis = vec![RevokedJti {
                    jti: j,
                    until: horizon,
                }];
                (RevokeKind::Jti, allowed, Op::RevokeJtis { jtis })
            }
            Target::Subject(subject) => {
                let allowed = ask(RevokeContext {
                    kind: RevokeKind::Subject,
                    target: subject.clone(),
                    own: subject == caller.id,
                });
                let op = Op::RevokeSubject {
                    subject,
                    cutoff: now,
                    until: horizon,
                };
                (RevokeKind::Subject, allowed, op)
            }
            Target::Client(client) => {
                let allowed = ask(RevokeContext {
                    kind: RevokeKind::Client,
                    target: client.clone(),
                    own: client == caller.id,
                });
                let op = Op::RevokeClient {
                    client,
                    cutoff: now,
                    until: horizon,
                };
                (RevokeKind::Client, allowed, op)
            }
        };
        if let Some(j) = &ev.subject_jti {
            tracing::Span::current().record("jti", j.as_str());
        }
        ev.policy_ids = ids.into_iter().collect();
        if !allowed {
            ev.reason = Some(format!("policy denies revoke by {}", kind.as_str()));
            self.audit(ev).await;
            return Err(ApiError::PermissionDenied(format!(
                "policy (revoke): not allowed to revoke by {}",
                kind.as_str()
            )));
        }
        let revoked: Vec<String> = match &op {
            Op::RevokeJtis { jtis } => jtis.iter().map(|j| j.jti.clone()).collect(),
            _ => Vec::new(),
        };
        let resp = match self.shared.write(op).await {
            Ok(r) => r,
            Err(e) => {
                ev.decision = "error";
                ev.reason = Some(e.to_string());
                self.audit(ev).await;
                return Err(e);
            }
        };
        tracing::Span::current().record("revision", resp.revision);
        ev.decision = "allow";
        ev.revision = Some(resp.revision);
        self.audit(ev).await;
        Ok(pb::RevokeResponse {
            revision: resp.revision,
            changed: resp.changed > 0,
            jtis: revoked,
        })
    }
}

/// The gRPC face: the caller is the connection's client certificate.
#[tonic::async_trait]
impl pb::token_service_server::TokenService for TokenApi {
    async fn issue_token(
        &self,
        req: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(self.issue(&caller, req.into_inner()).await?))
    }

    async fn exchange_token(
        &self,
        req: Request<pb::ExchangeTokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(
            self.exchange(&caller, req.into_inner()).await?,
        ))
    }

    async fn introspect(
        &self,
        req: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(
            TokenApi::introspect(self, &caller, req.into_inner()).await?,
        ))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(
            TokenApi::revoke(self, &caller, req.into_inner()).await?,
        ))
    }
}

/// The full RFC 7662 answer for a valid token the caller may see.
fn claims_response(c: &Claims, revision: u64) -> pb::IntrospectResponse {
    pb::IntrospectResponse {
        active: true,
        scope: c.scope.clone(),
        client_id: c.client_id.clone(),
        sub: c.sub.clone(),
        aud: c.aud.as_slice().to_vec(),
        iss: c.iss.clone(),
        exp: c.exp,
        iat: c.iat,
        nbf: c.nbf,
        jti: c.jti.clone(),
        token_type: "Bearer".into(),
        act: c.act.as_ref().map(actor_pb),
        cnf_x5t_s256: c
            .cnf
            .as_ref()
            .map(|c| c.x5t_s256.clone())
            .unwrap_or_default(),
        revision,
        chain: c.chain.clone(),
        linearizable: true,
        max_staleness_ms: 0,
    }
}

impl TokenApi {
    /// The claims of a token to revoke: one this cluster signed for its
    /// issuer, whatever its times (an expired or already revoked one is
    /// accepted: revoking it again is a harmless repeat).
    /// `UNAUTHENTICATED` if it is not one (RFC 7009: nothing to revoke); any
    /// other error means this node cannot tell (its key ring cannot be
    /// built), which must not pass for "not a token of ours".
    fn revocable(&self, token: &str, now: u64) -> Result<Claims, ApiError> {
        let ring = self.shared.key_ring()?;
        let mut params = self.shared.verify_params(now);
        params.now = 0; // time does not matter for revocation
        params.leeway = u64::MAX / 4;
        Ok(token::verify(token, ring.verifiers(), &params)?)
    }

    /// The answer to a revocation whose token [`Self::revocable`] refused,
    /// audited either way so that a caller probing with forged tokens
    /// leaves a record. A token that does not verify is RFC 7009's
    /// success with nothing changed: nothing was written, so there is no
    /// revision to wait for (a revision without an event is one no
    /// subscriber's stream would ever reach). A node that cannot tell
    /// says so.
    async fn not_revocable(
        &self,
        mut ev: AuditEvent,
        e: ApiError,
    ) -> Result<pb::RevokeResponse, ApiError> {
        if let ApiError::Unauthenticated(why) = &e {
            ev.decision = "allow";
            ev.reason = Some(format!("nothing to revoke: {why}"));
            self.audit(ev).await;
            return Ok(pb::RevokeResponse {
                revision: 0,
                changed: false,
                jtis: Vec::new(),
            });
        }
        ev.decision = "error";
        ev.reason = Some(format!("cannot decide: {e}"));
        self.audit(ev).await;
        Err(e)
    }
}

fn prefix(what: &str, e: ApiError) -> ApiError {
    match e {
        ApiError::Unauthenticated(m) => ApiError::Unauthenticated(format!("{what}: {m}")),
        ApiError::PermissionDenied(m) => ApiError::PermissionDenied(format!("{what}: {m}")),
        other => other,
    }
}
