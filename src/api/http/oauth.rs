//! The OAuth 2.0 HTTP endpoints: `POST /oauth2/token` (RFC 6749
//! `client_credentials` and RFC 8693 token exchange), `POST
//! /oauth2/introspect` (RFC 7662) and `POST /oauth2/revoke` (RFC 7009).
//!
//! They are the HTTP faces of the gRPC `TokenService`: each handler
//! authenticates the caller by its client certificate (RFC 8705
//! `tls_client_auth`), charges the caller's bucket of the same rate limiter
//! as the gRPC routes, turns the form into the gRPC request message and
//! calls the same handler (`TokenApi`), so validation, policy,
//! linearizable reads, auditing and the disclosure and revocation rules
//! exist once. What is HTTP-only lives here: form parsing
//! (`form`), the JSON shapes, and the one table from refusals to
//! RFC 6749 §5.2 error codes ([`oauth_error`]).

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

use super::form::Form;
use super::{error_response, json_response, ClientIdentity, HttpState};
use crate::api::limits::RpcClass;
use crate::api::refusal::{Cause, Refused};
use crate::api::token_service::TokenApi;
use crate::api::validate::GRANT_TOKEN_EXCHANGE;
use crate::api::ApiError;
use crate::pb;
use crate::tls::PeerIdentity;

/// The token endpoint.
pub const TOKEN_PATH: &str = "/oauth2/token";
/// The introspection endpoint.
pub const INTROSPECT_PATH: &str = "/oauth2/introspect";
/// The revocation endpoint.
pub const REVOKE_PATH: &str = "/oauth2/revoke";

/// RFC 6749 §4.4 grant type.
const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";

/// The one table from a refusal to an OAuth error: HTTP status and RFC 6749
/// §5.2 (RFC 8693, RFC 8707) error code. Node state and volume first (they
/// are about no part of the request), then the API error's family refined
/// by what it concerns.
pub fn oauth_error(e: &ApiError, cause: Cause) -> (StatusCode, &'static str) {
    use StatusCode as S;
    match (e, cause) {
        (ApiError::Unavailable { .. } | ApiError::DeadlineExceeded(_), _) => {
            (S::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        }
        (ApiError::RateLimited { .. } | ApiError::ResourceExhausted(_), _) => {
            (S::TOO_MANY_REQUESTS, "slow_down")
        }
        (ApiError::Internal(_), _) => (S::INTERNAL_SERVER_ERROR, "server_error"),
        // The token asked for would be too long: a delegation chain too
        // deep for these identities (as a depth refusal), or too much
        // asked for at once.
        (ApiError::TooLarge(_), Cause::Grant) => (S::BAD_REQUEST, "invalid_grant"),
        (ApiError::TooLarge(_), _) => (S::BAD_REQUEST, "invalid_request"),
        // The presented subject or actor token is not acceptable.
        (ApiError::Unauthenticated(_), Cause::Grant) => (S::BAD_REQUEST, "invalid_grant"),
        // The caller's own credentials (its client certificate).
        (ApiError::Unauthenticated(_), _) => (S::UNAUTHORIZED, "invalid_client"),
        (ApiError::InvalidArgument(_) | ApiError::PermissionDenied(_), Cause::Scope) => {
            (S::BAD_REQUEST, "invalid_scope")
        }
        (ApiError::InvalidArgument(_) | ApiError::PermissionDenied(_), Cause::Target) => {
            (S::BAD_REQUEST, "invalid_target")
        }
        (ApiError::PermissionDenied(_), Cause::Grant) => (S::BAD_REQUEST, "invalid_grant"),
        (ApiError::PermissionDenied(_), Cause::Client | Cause::Request) => {
            (S::BAD_REQUEST, "unauthorized_client")
        }
        // Not produced by the token endpoints today; a request the node
        // cannot carry out in its present state.
        (ApiError::InvalidArgument(_) | ApiError::FailedPrecondition(_), _) => {
            (S::BAD_REQUEST, "invalid_request")
        }
    }
}

/// The error response for a refusal: RFC 6749 §5.2 JSON, with
/// `Retry-After` when retrying can help and `WWW-Authenticate` on 401.
fn refusal_response(r: &Refused) -> Response {
    let (status, code) = oauth_error(&r.error, r.cause);
    let mut resp = error_response(status, code, &r.error.to_string());
    let retry = match &r.error {
        // Whole seconds, rounded up: an early retry is refused again.
        ApiError::RateLimited { retry_after, .. } => Some(
            u64::try_from(retry_after.as_millis().div_ceil(1000))
                .unwrap_or(u64::MAX)
                .max(1),
        ),
        _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
        _ => None,
    };
    if let Some(secs) = retry {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Mutual-TLS"),
        );
    }
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

fn bad_request(message: impl Into<String>) -> Response {
    refusal_response(&ApiError::InvalidArgument(message.into()).into())
}

/// An answer made before the shared handler is called (boxed: a response
/// is large and this is the rare path).
type Early = Box<Response>;

fn bad(message: impl Into<String>) -> Early {
    Box::new(bad_request(message))
}

/// What every endpoint does first: the caller's certificate identity, the
/// rate limit, then the body and its form, then the `client_id` check.
async fn admit(
    state: &HttpState,
    who: Option<PeerIdentity>,
    headers: &HeaderMap,
    body: Body,
    class: RpcClass,
) -> Result<(PeerIdentity, Form), Early> {
    let unauthenticated = |m: &str| {
        Box::new(refusal_response(
            &ApiError::Unauthenticated(m.into()).into(),
        ))
    };
    let caller = who.ok_or_else(|| {
        unauthenticated(
            "client authentication (tls_client_auth) needs a client certificate of the cluster CA",
        )
    })?;
    // Charged before the body is read, like the gRPC layer does: a
    // refused caller costs no wait for its body.
    if let Err(e) = state.rate.check(&caller.id, class) {
        state.shared.metrics().rate_limited(class.name());
        return Err(Box::new(refusal_response(&e.into())));
    }
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(bad("the body must be application/x-www-form-urlencoded"));
    }
    // The listener already bounds the body (`Limited`) and the whole
    // request's time.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| Box::new(body_refusal(&e)))?;
    let form = Form::parse(&body).map_err(bad)?;
    match form.one("client_id").map_err(bad)? {
        Some(id) if id != caller.id => Err(unauthenticated(
            "client_id does not match the client certificate's identity",
        )),
        _ => Ok((caller, form)),
    }
}

/// 413 for a body over the listener's limit, 400 for one that could not be
/// read.
fn body_refusal(e: &axum::Error) -> Response {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "request body too large",
            );
        }
        source = err.source();
    }
    bad_request("the request body could not be read")
}

/// `POST /oauth2/token`.
pub async fn token(
    State(state): State<HttpState>,
    Extension(ClientIdentity(who)): Extension<ClientIdentity>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (caller, form) = match admit(&state, who, &headers, body, RpcClass::Issue).await {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    let api = TokenApi::new(state.shared.clone());
    let result = match token_request(&form) {
        Err(resp) => return *resp,
        Ok(TokenRequest::Issue(r)) => api.issue(&caller, r).await.map(|t| (t, false)),
        Ok(TokenRequest::Exchange(r)) => api.exchange(&caller, r).await.map(|t| (t, true)),
    };
    match result {
        Ok((t, exchanged)) => {
            let mut body = json!({
                "access_token": t.access_token,
                // RFC 8693 §2.2.1: an access token usable as such is
                // "Bearer"; RFC 8705 binding does not change the type.
                "token_type": t.token_type,
                "expires_in": t.expires_in,
                "scope": t.scope.join(" "),
            });
            if exchanged {
                body["issued_token_type"] = t.issued_token_type.into();
            }
            let mut resp = json_response(StatusCode::OK, body.to_string(), "no-store");
            resp.headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            resp
        }
        Err(r) => refusal_response(&r),
    }
}

enum TokenRequest {
    Issue(pb::IssueTokenRequest),
    Exchange(pb::ExchangeTokenRequest),
}

/// The gRPC request a token-endpoint form stands for. The fields' limits
/// are the gRPC handlers' (`validate`); only the form's own shape is
/// judged here.
fn token_request(form: &Form) -> Result<TokenRequest, Early> {
    let one = |name| form.one(name).map_err(bad);
    let string = |name| one(name).map(|v| v.unwrap_or_default().to_string());
    let scope = one("scope")?.map(str::to_string).into_iter().collect();
    // RFC 8707 `resource` names an audience, as in ExchangeToken.
    match form.required("grant_type").map_err(bad)? {
        GRANT_CLIENT_CREDENTIALS => {
            let mut audience = form.all("audience");
            audience.extend(form.all("resource"));
            Ok(TokenRequest::Issue(pb::IssueTokenRequest {
                audience,
                scope,
                ..Default::default()
            }))
        }
        GRANT_TOKEN_EXCHANGE => Ok(TokenRequest::Exchange(pb::ExchangeTokenRequest {
            grant_type: GRANT_TOKEN_EXCHANGE.into(),
            subject_token: string("subject_token")?,
            subject_token_type: string("subject_token_type")?,
            actor_token: string("actor_token")?,
            actor_token_type: string("actor_token_type")?,
            audience: form.all("audience"),
            resource: form.all("resource"),
            scope,
            requested_token_type: string("requested_token_type")?,
            ..Default::default()
        })),
        _ => {
            let mut resp = error_response(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be client_credentials or urn:ietf:params:oauth:grant-type:token-exchange",
            );
            resp.headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            Err(Box::new(resp))
        }
    }
}

/// `POST /oauth2/introspect`: linearizable, like gRPC Introspect by
/// default. `token_type_hint` is accepted and ignored (there is one kind
/// of token).
pub async fn introspect(
    State(state): State<HttpState>,
    Extension(ClientIdentity(who)): Extension<ClientIdentity>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (caller, form) = match admit(&state, who, &headers, body, RpcClass::Introspect).await {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    let token = match form.required("token") {
        Ok(t) => t.to_string(),
        Err(m) => return bad_request(m),
    };
    let req = pb::IntrospectRequest {
        token,
        min_revision: 0,
        consistency: pb::Consistency::Linearizable as i32,
    };
    match TokenApi::new(state.shared.clone())
        .introspect(&caller, req)
        .await
    {
        Ok(r) => json_response(
            StatusCode::OK,
            introspection_json(&r).to_string(),
            "no-store",
        ),
        Err(e) => refusal_response(&e.into()),
    }
}

/// RFC 7662 §2.2: `{"active":false}` and nothing else for an inactive (or
/// undisclosed) token; the claims, `cnf` (RFC 8705 §3.2) and `act`
/// (RFC 8693 §4.1) for an active one, plus the node's applied `revision`.
fn introspection_json(r: &pb::IntrospectResponse) -> Value {
    if !r.active {
        return json!({ "active": false });
    }
    let mut m = Map::new();
    m.insert("active".into(), true.into());
    m.insert("scope".into(), r.scope.clone().into());
    m.insert("client_id".into(), r.client_id.clone().into());
    m.insert("sub".into(), r.sub.clone().into());
    m.insert("aud".into(), r.aud.clone().into());
    m.insert("iss".into(), r.iss.clone().into());
    m.insert("exp".into(), r.exp.into());
    m.insert("iat".into(), r.iat.into());
    m.insert("nbf".into(), r.nbf.into());
    m.insert("jti".into(), r.jti.clone().into());
    m.insert("token_type".into(), r.token_type.clone().into());
    if let Some(a) = &r.act {
        m.insert("act".into(), actor_json(a));
    }
    if !r.cnf_x5t_s256.is_empty() {
        m.insert("cnf".into(), json!({ "x5t#S256": r.cnf_x5t_s256 }));
    }
    m.insert("revision".into(), r.revision.into());
    Value::Object(m)
}

fn actor_json(a: &pb::Actor) -> Value {
    let mut v = json!({ "sub": a.sub });
    if let Some(inner) = &a.act {
        v["act"] = actor_json(inner);
    }
    v
}

/// `POST /oauth2/revoke`: revokes the token (and with it every token
/// exchanged from it) under the same revocation authority as gRPC Revoke.
/// RFC 7009 §2.2: 200 with an empty body, also for a token that is
/// invalid or unknown. `token_type_hint` is accepted and ignored.
pub async fn revoke(
    State(state): State<HttpState>,
    Extension(ClientIdentity(who)): Extension<ClientIdentity>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (caller, form) = match admit(&state, who, &headers, body, RpcClass::Revoke).await {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    let token = match form.required("token") {
        Ok(t) => t.to_string(),
        Err(m) => return bad_request(m),
    };
    let req = pb::RevokeRequest {
        target: Some(pb::revoke_request::Target::Token(token)),
    };
    match TokenApi::new(state.shared.clone())
        .revoke(&caller, req)
        .await
    {
        Ok(_) => {
            let mut resp = StatusCode::OK.into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => refusal_response(&e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oauth_error_table() {
        use StatusCode as S;
        let inv = || ApiError::InvalidArgument("x".into());
        let unauth = || ApiError::Unauthenticated("x".into());
        let denied = || ApiError::PermissionDenied("x".into());
        let cases = [
            (inv(), Cause::Request, S::BAD_REQUEST, "invalid_request"),
            (inv(), Cause::Scope, S::BAD_REQUEST, "invalid_scope"),
            (inv(), Cause::Target, S::BAD_REQUEST, "invalid_target"),
            (unauth(), Cause::Request, S::UNAUTHORIZED, "invalid_client"),
            (unauth(), Cause::Grant, S::BAD_REQUEST, "invalid_grant"),
            (denied(), Cause::Grant, S::BAD_REQUEST, "invalid_grant"),
            (denied(), Cause::Scope, S::BAD_REQUEST, "invalid_scope"),
            (denied(), Cause::Target, S::BAD_REQUEST, "invalid_target"),
            (
                denied(),
                Cause::Client,
                S::BAD_REQUEST,
                "unauthorized_client",
            ),
            (
                denied(),
                Cause::Request,
                S::BAD_REQUEST,
                "unauthorized_client",
            ),
            (
                ApiError::Unavailable {
                    reason: "x".into(),
                    leader: None,
                },
                Cause::Grant,
                S::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
            ),
            (
                ApiError::DeadlineExceeded("x".into()),
                Cause::Request,
                S::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
            ),
            (
                ApiError::RateLimited {
                    class: "issue",
                    retry_after: std::time::Duration::from_millis(1500),
                },
                Cause::Request,
                S::TOO_MANY_REQUESTS,
                "slow_down",
            ),
            (
                ApiError::TooLarge("x".into()),
                Cause::Grant,
                S::BAD_REQUEST,
                "invalid_grant",
            ),
            (
                ApiError::TooLarge("x".into()),
                Cause::Request,
                S::BAD_REQUEST,
                "invalid_request",
            ),
            (
                ApiError::Internal("x".into()),
                Cause::Scope,
                S::INTERNAL_SERVER_ERROR,
                "server_error",
            ),
            (
                ApiError::FailedPrecondition("x".into()),
                Cause::Request,
                S::BAD_REQUEST,
                "invalid_request",
            ),
        ];
        for (e, cause, status, code) in cases {
            assert_eq!(oauth_error(&e, cause), (status, code), "{e:?} {cause:?}");
        }
    }

    #[test]
    fn refusals_carry_retry_and_authentication_hints() {
        let limited = refusal_response(
            &ApiError::RateLimited {
                class: "issue",
                retry_after: std::time::Duration::from_millis(1500),
            }
            .into(),
        );
        assert_eq!(limited.headers()[header::RETRY_AFTER], "2");
        let down = refusal_response(
            &ApiError::Unavailable {
                reason: "x".into(),
                leader: None,
            }
            .into(),
        );
        assert_eq!(down.headers()[header::RETRY_AFTER], "1");
        let unauth = refusal_response(&ApiError::Unauthenticated("x".into()).into());
        assert_eq!(unauth.status(), StatusCode::UNAUTHORIZED);
        assert!(unauth.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(unauth.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn inactive_introspection_says_nothing_else() {
        let r = pb::IntrospectResponse {
            active: false,
            revision: 7,
            ..Default::default()
        };
        assert_eq!(introspection_json(&r), json!({ "active": false }));
    }
}
