//! `GET /.well-known/oauth-authorization-server`: RFC 8414 authorization
//! server metadata, so OAuth software can find the key set and the
//! endpoints.
//!
//! The OAuth endpoints (`/oauth2/token`, `/oauth2/introspect`,
//! `/oauth2/revoke`, in [`super::oauth`]) are the HTTP faces of the gRPC services, all with
//! mutual-TLS client authentication (RFC 8705 `tls_client_auth`) and
//! certificate-bound tokens. There is no authorization endpoint (no
//! browser flows), hence no response types.

use axum::extract::State;
use axum::response::Response;
use http::StatusCode;

use super::{json_response, oauth, HttpState};
use crate::api::validate::{TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT};

/// Where the metadata is served (RFC 8414 §3).
pub const PATH: &str = "/.well-known/oauth-authorization-server";

/// The grant types the token endpoint accepts.
pub const GRANT_TYPES: [&str; 2] = [
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:token-exchange",
];

/// The metadata document for `state`'s issuer and address.
pub fn document(state: &HttpState) -> serde_json::Value {
    let base = &*state.base_url;
    let mtls = ["tls_client_auth"];
    serde_json::json!({
        "issuer": state.shared.settings().issuer,
        "jwks_uri": format!("{base}{}", super::jwks::PATH),
        "token_endpoint": format!("{base}{}", oauth::TOKEN_PATH),
        "introspection_endpoint": format!("{base}{}", oauth::INTROSPECT_PATH),
        "revocation_endpoint": format!("{base}{}", oauth::REVOKE_PATH),
        "grant_types_supported": GRANT_TYPES,
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": mtls,
        "introspection_endpoint_auth_methods_supported": mtls,
        "revocation_endpoint_auth_methods_supported": mtls,
        "tls_client_certificate_bound_access_tokens": true,
        // RFC 8693 token types accepted as subject and actor tokens and
        // issued (not registered metadata; named after the RFC's terms).
        "token_types_supported": [TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT],
    })
}

/// The metadata changes only with the configuration; caches may keep it
/// for as long as they keep the key set.
pub async fn get(State(state): State<HttpState>) -> Response {
    let max_age = state.shared.key_settings().publish_ahead.as_secs();
    json_response(
        StatusCode::OK,
        document(&state).to_string(),
        &format!("public, max-age={max_age}"),
    )
}
