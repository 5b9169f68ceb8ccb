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
        let (jwks_json, revision) = self.shared.jwks()?;
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json,
            revision,
        }))
    }
}

impl Shared {
    /// The JWKS document and the revision it reflects: what `GetJwks` and
    /// the HTTPS `/.well-known/jwks.json` both serve.
    pub fn jwks(&self) -> Result<(String, u64), super::ApiError> {
        // A node that cannot vouch for its state would publish a stale or
        // empty key set; verifiers must ask another node.
        self.ensure_ready()?;
        let revision = self.state.revision();
        let ring = self.key_ring()?;
        Ok((ring.verifiers().to_jwks_json(), revision))
    }
}
