//! `KeyService`: the JSON Web Key Set of every key that may have signed a
//! live token (pending, active and retired keys).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Shared;
use crate::pb;

/// The `KeyService` implementation.
pub struct KeyApi {
    shared: Arc<Shared>,
}

impl KeyApi {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl pb::key_service_server::KeyService for KeyApi {
    async fn get_jwks(
        &self,
        _req: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        // A node that cannot vouch for its state would publish a stale or
        // empty key set; verifiers must ask another node.
        let jwks = self.shared.jwks()?;
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json: jwks.json,
            revision: jwks.revision,
            max_age_seconds: jwks.max_age.as_secs(),
        }))
    }
}
