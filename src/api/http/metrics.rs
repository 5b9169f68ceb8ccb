//! `GET /metrics`: the node's Prometheus metrics (text exposition, encoded
//! by `prometheus-client`). Only for callers that present a certificate of
//! the cluster CA (a scraper gets one like any service): the series name
//! caller identities and show traffic patterns.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::{header, HeaderValue, StatusCode};

use super::{error_response, ClientIdentity, HttpState};

/// Where the metrics are served.
pub const PATH: &str = "/metrics";

/// The scrape; 401 without a client certificate.
pub async fn get(
    State(state): State<HttpState>,
    Extension(ClientIdentity(who)): Extension<ClientIdentity>,
) -> Response {
    if who.is_none() {
        let mut resp = error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "metrics need a client certificate of the cluster CA",
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Mutual-TLS"),
        );
        return resp;
    }
    let mut resp = (StatusCode::OK, state.shared.metrics().encode()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
