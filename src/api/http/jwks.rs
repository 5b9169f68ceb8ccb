//! `GET /.well-known/jwks.json`: the JSON Web Key Set of every key that may
//! have signed a live token, exactly what `KeyService.GetJwks` returns.

use axum::extract::State;
use axum::response::Response;
use http::StatusCode;

use super::{api_error_response, json_response, HttpState};

/// Where the key set is served (RFC 8414 `jwks_uri` points here).
pub const PATH: &str = "/.well-known/jwks.json";

/// A node that cannot vouch for its state answers 503 (with `Retry-After`),
/// as `GetJwks` answers `UNAVAILABLE`: verifiers ask another node. The
/// revision the set reflects is in `X-Tessera-Revision`.
pub async fn get(State(state): State<HttpState>) -> Response {
    match state.shared.jwks() {
        Ok(jwks) => {
            // Verifiers that honour it refresh at least once per
            // publish-ahead window, so they hold a new key before it signs.
            let max_age = jwks.max_age.as_secs();
            let mut resp = json_response(
                StatusCode::OK,
                jwks.json,
                &format!("public, max-age={max_age}"),
            );
            resp.headers_mut()
                .insert("x-tessera-revision", http::HeaderValue::from(jwks.revision));
            resp
        }
        Err(e) => {
            tracing::debug!(error = %e, "JWKS refused");
            api_error_response(&e)
        }
    }
}
