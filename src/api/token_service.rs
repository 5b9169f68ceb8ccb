//! `TokenService`: issue, exchange (RFC 8693), introspect (RFC 7662) and
//! revoke.
//!
//! Order of checks in an exchange: request shape, then the presented tokens
//! (signature, time, revocation), then the pure exchange rules, then policy
//! per audience and scope. The pure rules come before policy so that a
//! refused exchange gets the most precise reason.

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::purge::PurgeTimes;
use super::{ApiError, AuditEvent, Shared};
use crate::pb;
use crate::policy::{Action, ExchangeFacts, GrantFacts, RevokeContext, RevokeKind};
use crate::raft::{Op, RevokedJti};
use crate::tls::PeerIdentity;
use crate::token::{self, Claims, ExchangeInput, Limits};

/// RFC 8693 grant type.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type of an OAuth access token.
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 token type of a JWT.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

const MAX_AUDIENCES: usize = 16;
const MAX_SCOPES: usize = 64;
const MAX_NAME: usize = 512;

/// Granted scopes and the policy ids that determined them.
type Grant = (Vec<String>, Vec<String>);
/// The audience policy allowed nothing for, and the policy ids consulted.
type Refusal = (String, Vec<String>);

/// The `TokenService` implementation.
pub struct TokenApi {
    shared: Arc<Shared>,
}

impl TokenApi {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
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
            .is_revoked(&jtis, &c.sub, &c.client_id, c.iat, c.rev)
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
            Err(_) => return Err((audiences.first().cloned().unwrap_or_default(), vec![])),
        };
        let mut granted = scopes.to_vec();
        let mut ids = BTreeSet::new();
        for aud in audiences {
            let (allowed, pids) = policy.allowed_scopes(caller, action, aud, &granted, facts);
            ids.extend(pids);
            if allowed.is_empty() {
                return Err((aud.clone(), ids.into_iter().collect()));
            }
            granted = allowed;
        }
        Ok((granted, ids.into_iter().collect()))
    }

    async fn audit(&self, ev: AuditEvent) {
        self.shared.audit.record(ev).await;
    }

    fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        let ring = self.shared.key_ring()?;
        Ok(ring.signer()?.sign(claims)?)
    }
}

fn caller<T>(req: &Request<T>) -> Result<PeerIdentity, Status> {
    crate::tls::caller_identity(req)
}

fn check_names(what: &str, values: &[String], max: usize) -> Result<(), ApiError> {
    if values.len() > max {
        return Err(ApiError::InvalidArgument(format!(
            "too many {what} (at most {max})"
        )));
    }
    if values.iter().any(|v| v.is_empty() || v.len() > MAX_NAME) {
        return Err(ApiError::InvalidArgument(format!(
            "each {what} must be 1 to {MAX_NAME} bytes"
        )));
    }
    Ok(())
}

/// Scopes from the request: each entry may hold several, space-separated.
fn split_scopes(raw: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in raw
        .iter()
        .flat_map(|s| s.split(' '))
        .filter(|s| !s.is_empty())
    {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    out
}

fn dedup(values: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
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

#[tonic::async_trait]
impl pb::token_service_server::TokenService for TokenApi {
    #[tracing::instrument(name = "issue", skip_all, fields(caller, jti))]
    async fn issue_token(
        &self,
        req: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let caller = caller(&req)?;
        tracing::Span::current().record("caller", caller.id.as_str());
        let r = req.into_inner();
        let scopes = split_scopes(&r.scope);
        let audiences = dedup(r.audience);
        check_names("audience", &audiences, MAX_AUDIENCES)?;
        check_names("scope", &scopes, MAX_SCOPES)?;
        if audiences.is_empty() {
            return Err(ApiError::from(token::TokenError::NoAudience).into());
        }
        if scopes.is_empty() {
            return Err(ApiError::from(token::TokenError::NoScopeRequested).into());
        }
        // Policy and keys as of every acknowledged write.
        self.shared.read_barrier().await?;
        let now = self.shared.clock.now();
        let s = &self.shared.settings;
        let lifetime = match r.lifetime_seconds {
            0 => s.default_lifetime,
            l => l.min(s.max_lifetime),
        };
        let mut ev = AuditEvent::new(now, "issue", "deny", &caller.id);
        ev.audience = audiences.clone();
        let (granted, ids) = match self.grant(
            &caller.id,
            Action::Issue,
            &audiences,
            &scopes,
            &GrantFacts::Issue { lifetime },
        ) {
            Ok(g) => g,
            Err((aud, ids)) => {
                ev.policy_ids = ids;
                ev.reason = Some(format!(
                    "policy allows no requested scope for audience {aud}"
                ));
                self.audit(ev).await;
                return Err(ApiError::PermissionDenied(format!(
                    "policy (issue): no requested scope is allowed for audience {aud}"
                ))
                .into());
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
        .map_err(ApiError::from)?;
        // The revision this node has applied: a subject or client cut-off
        // applied above it revokes the token (token::cutoff_revokes).
        claims.rev = Some(self.shared.state.revision());
        let token = self.sign(&claims)?;
        tracing::Span::current().record("jti", claims.jti.as_str());
        ev.decision = "allow";
        ev.issued_jti = Some(claims.jti.clone());
        ev.scope = granted;
        self.audit(ev).await;
        Ok(Response::new(token_response(token, &claims)))
    }

    #[tracing::instrument(name = "exchange", skip_all, fields(caller, subject_jti, jti))]
    async fn exchange_token(
        &self,
        req: Request<pb::ExchangeTokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let caller = caller(&req)?;
        tracing::Span::current().record("caller", caller.id.as_str());
        let r = req.into_inner();
        if !(r.grant_type.is_empty() || r.grant_type == GRANT_TOKEN_EXCHANGE) {
            return Err(Status::invalid_argument("unsupported grant_type"));
        }
        let token_type_ok = |t: &str| t.is_empty() || t == TOKEN_TYPE_ACCESS || t == TOKEN_TYPE_JWT;
        if !token_type_ok(&r.subject_token_type) {
            return Err(Status::invalid_argument("unsupported subject_token_type"));
        }
        if !token_type_ok(&r.requested_token_type) {
            return Err(Status::invalid_argument("unsupported requested_token_type"));
        }
        if !token_type_ok(&r.actor_token_type) {
            return Err(Status::invalid_argument("unsupported actor_token_type"));
        }
        if r.actor_token.is_empty() && !r.actor_token_type.is_empty() {
            return Err(Status::invalid_argument(
                "actor_token_type without actor_token",
            ));
        }
        if r.subject_token.is_empty() {
            return Err(Status::invalid_argument("subject_token is required"));
        }
        let scopes = split_scopes(&r.scope);
        let audiences = dedup(r.audience.into_iter().chain(r.resource));
        check_names("audience", &audiences, MAX_AUDIENCES)?;
        check_names("scope", &scopes, MAX_SCOPES)?;
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
                return Err(prefix("subject token", e).into());
            }
        };
        tracing::Span::current().record("subject_jti", subject.jti.as_str());
        ev.subject_jti = Some(subject.jti.clone());
        let actor = if r.actor_token.is_empty() {
            None
        } else {
            match self.check_token(&r.actor_token, now) {
                Ok(c) => Some(c),
                Err(e) => {
                    ev.reason = Some(format!("actor token: {e}"));
                    self.audit(ev).await;
                    return Err(prefix("actor token", e).into());
                }
            }
        };
        let jti = token::new_jti().map_err(ApiError::from)?;
        let input = ExchangeInput {
            caller: &caller.id,
            caller_cert_thumbprint: &caller.thumbprint,
            subject: &subject,
            actor: actor.as_deref(),
            requested_scopes: &scopes,
            audiences: &audiences,
            requested_lifetime: (r.lifetime_seconds > 0).then_some(r.lifetime_seconds),
            impersonate: r.impersonate,
            now,
        };
        // Policy narrowing comes after the rules; the rules see every
        // requested scope so that widening is refused, not dropped.
        let mut claims = match token::exchange(&input, &scopes, &self.limits(), jti) {
            Ok(c) => c,
            Err(e) => {
                ev.reason = Some(e.to_string());
                self.audit(ev).await;
                return Err(ApiError::from(e).into());
            }
        };
        let action = if r.impersonate {
            Action::Impersonate
        } else {
            Action::Exchange
        };
        let facts = GrantFacts::Exchange(ExchangeFacts {
            lifetime: claims.exp.saturating_sub(claims.iat),
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
        let (granted, ids) = match self.grant(&caller.id, action, &audiences, &requested, &facts) {
            Ok(g) => g,
            Err((aud, ids)) => {
                ev.policy_ids = ids;
                ev.reason = Some(format!(
                    "policy allows no requested scope for audience {aud}"
                ));
                self.audit(ev).await;
                return Err(ApiError::PermissionDenied(format!(
                    "policy ({action}): no requested scope is allowed for audience {aud}"
                ))
                .into());
            }
        };
        claims.scope = granted.join(" ");
        claims.rev = Some(rev);
        let token = self.sign(&claims)?;
        tracing::Span::current().record("jti", claims.jti.as_str());
        ev.decision = "allow";
        ev.policy_ids = ids;
        ev.issued_jti = Some(claims.jti.clone());
        ev.scope = granted;
        self.audit(ev).await;
        Ok(Response::new(token_response(token, &claims)))
    }

    #[tracing::instrument(name = "introspect", skip_all, fields(caller, jti))]
    async fn introspect(
        &self,
        req: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let caller = caller(&req)?;
        tracing::Span::current().record("caller", caller.id.as_str());
        let r = req.into_inner();
        if r.token.is_empty() {
            return Err(Status::invalid_argument("token is required"));
        }
        let now = self.shared.clock.now();
        let mut ev = AuditEvent::new(now, "introspect", "deny", &caller.id);
        let decision = self
            .policy()?
            .authorize(&crate::policy::Request::introspect(caller.id.clone()));
        ev.policy_ids = decision.policy_ids;
        if !decision.allowed {
            ev.reason = Some("policy".into());
            self.audit(ev).await;
            return Err(
                ApiError::PermissionDenied("policy (introspect): not allowed".into()).into(),
            );
        }
        let local = r.consistency == pb::Consistency::Local as i32;
        if !local && r.consistency != pb::Consistency::Linearizable as i32 {
            return Err(Status::invalid_argument("unknown consistency"));
        }
        if local {
            // Possibly stale, by choice; the response says how stale.
            self.shared.ensure_started()?;
        } else {
            self.shared.read_barrier().await?;
        }
        if r.min_revision > 0 {
            self.wait_applied(r.min_revision).await?;
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
        let resp = match self.check_token(&r.token, now) {
            Ok(c) => {
                ev.subject_jti = Some(c.jti.clone());
                tracing::Span::current().record("jti", c.jti.as_str());
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
                    linearizable: !local,
                    max_staleness_ms,
                }
            }
            Err(e) => {
                ev.reason = Some(format!("inactive: {e}"));
                pb::IntrospectResponse {
                    active: false,
                    revision,
                    linearizable: !local,
                    max_staleness_ms,
                    ..Default::default()
                }
            }
        };
        ev.decision = "allow";
        self.audit(ev).await;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(name = "revoke", skip_all, fields(caller, revision))]
    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        use pb::revoke_request::Target;
        let caller = caller(&req)?;
        tracing::Span::current().record("caller", caller.id.as_str());
        let target = req
            .into_inner()
            .target
            .ok_or_else(|| Status::invalid_argument("a revocation target is required"))?;
        let now = self.shared.clock.now();
        let s = &self.shared.settings;
        // When each entry may be purged (the derivation is in `purge`).
        let purge = PurgeTimes::new(s, now);
        let horizon = purge.horizon;
        let owns = |c: &Claims| c.sub == caller.id || c.client_id == caller.id;
        let mut ev = AuditEvent::new(now, "revoke", "deny", &caller.id);
        let (ctx, op) = match target {
            Target::Token(t) | Target::ChainOfToken(t) if t.is_empty() => {
                return Err(Status::invalid_argument("token is empty"));
            }
            Target::Token(t) => {
                let Some(c) = self.revocable(&t, now) else {
                    // RFC 7009: an invalid token is not an error; nothing to do.
                    return Ok(Response::new(pb::RevokeResponse {
                        revision: self.shared.state.revision(),
                        changed: false,
                    }));
                };
                ev.subject_jti = Some(c.jti.clone());
                let ctx = RevokeContext {
                    kind: RevokeKind::Token,
                    target: c.jti.clone(),
                    own: owns(&c),
                };
                let until = purge.for_token(c.exp);
                (
                    ctx,
                    Op::RevokeJtis {
                        jtis: vec![RevokedJti { jti: c.jti, until }],
                    },
                )
            }
            Target::ChainOfToken(t) => {
                let Some(c) = self.revocable(&t, now) else {
                    return Ok(Response::new(pb::RevokeResponse {
                        revision: self.shared.state.revision(),
                        changed: false,
                    }));
                };
                ev.subject_jti = Some(c.jti.clone());
                let ctx = RevokeContext {
                    kind: RevokeKind::Chain,
                    target: c.jti.clone(),
                    own: owns(&c),
                };
                let mut jtis: Vec<RevokedJti> = c
                    .chain
                    .iter()
                    .map(|j| RevokedJti {
                        jti: j.clone(),
                        until: horizon,
                    })
                    .collect();
                jtis.push(RevokedJti {
                    jti: c.jti.clone(),
                    until: purge.for_token(c.exp),
                });
                (ctx, Op::RevokeJtis { jtis })
            }
            Target::Jti(j) => {
                check_names("jti", std::slice::from_ref(&j), 1)?;
                ev.subject_jti = Some(j.clone());
                let ctx = RevokeContext {
                    kind: RevokeKind::Jti,
                    target: j.clone(),
                    own: false,
                };
                (
                    ctx,
                    Op::RevokeJtis {
                        jtis: vec![RevokedJti {
                            jti: j,
                            until: horizon,
                        }],
                    },
                )
            }
            Target::Subject(subject) => {
                check_names("subject", std::slice::from_ref(&subject), 1)?;
                let ctx = RevokeContext {
                    kind: RevokeKind::Subject,
                    target: subject.clone(),
                    own: subject == caller.id,
                };
                (
                    ctx,
                    Op::RevokeSubject {
                        subject,
                        cutoff: now,
                        until: horizon,
                    },
                )
            }
            Target::Client(client) => {
                check_names("client", std::slice::from_ref(&client), 1)?;
                let ctx = RevokeContext {
                    kind: RevokeKind::Client,
                    target: client.clone(),
                    own: client == caller.id,
                };
                (
                    ctx,
                    Op::RevokeClient {
                        client,
                        cutoff: now,
                        until: horizon,
                    },
                )
            }
        };
        let kind = ctx.kind;
        // Authorize against the policy as of every acknowledged write.
        self.shared.read_barrier().await?;
        let decision = self
            .policy()?
            .authorize(&crate::policy::Request::revoke(caller.id.clone(), ctx));
        ev.policy_ids = decision.policy_ids;
        if !decision.allowed {
            ev.reason = Some(format!("policy denies revoke by {}", kind.as_str()));
            self.audit(ev).await;
            return Err(ApiError::PermissionDenied(format!(
                "policy (revoke): not allowed to revoke by {}",
                kind.as_str()
            ))
            .into());
        }
        let resp = match self.shared.write(op).await {
            Ok(r) => r,
            Err(e) => {
                ev.decision = "error";
                ev.reason = Some(e.to_string());
                self.audit(ev).await;
                return Err(e.into());
            }
        };
        tracing::Span::current().record("revision", resp.revision);
        ev.decision = "allow";
        ev.revision = Some(resp.revision);
        self.audit(ev).await;
        Ok(Response::new(pb::RevokeResponse {
            revision: resp.revision,
            changed: resp.changed > 0,
        }))
    }
}

impl TokenApi {
    /// A token presented for revocation: signed by us and for us; an expired
    /// or already revoked one is still accepted (revoking it again is a
    /// harmless repeat), anything else is `None`.
    fn revocable(&self, token: &str, now: u64) -> Option<Claims> {
        let ring = self.shared.key_ring().ok()?;
        let mut params = self.shared.verify_params(now);
        params.now = 0; // time does not matter for revocation
        params.leeway = u64::MAX / 4;
        token::verify(token, ring.verifiers(), &params).ok()
    }

    async fn wait_applied(&self, min: u64) -> Result<(), ApiError> {
        let mut rx = self.shared.state.watch_revision();
        let wait = async move { rx.wait_for(|r| *r >= min).await.map(|_| ()) };
        match tokio::time::timeout(self.shared.read_wait_max, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ApiError::Unavailable {
                reason: "node is shutting down".into(),
                leader: None,
            }),
            Err(_) => Err(ApiError::DeadlineExceeded(format!(
                "revision {min} not applied within {:?} (applied: {})",
                self.shared.read_wait_max,
                self.shared.state.revision()
            ))),
        }
    }
}

fn prefix(what: &str, e: ApiError) -> ApiError {
    match e {
        ApiError::Unauthenticated(m) => ApiError::Unauthenticated(format!("{what}: {m}")),
        ApiError::PermissionDenied(m) => ApiError::PermissionDenied(format!("{what}: {m}")),
        other => other,
    }
}
