//! Server reflection, in both protocol versions: `grpc.reflection.v1` and
//! the older `grpc.reflection.v1alpha` that grpcio's reflection client,
//! older grpcurl releases and Evans still speak. Both list every service the
//! listener serves: the `tessera.v1` services, `grpc.health.v1.Health` and
//! both reflection services.

use tonic_reflection::server::{v1, v1alpha, Builder};

/// The file descriptor sets every reflection version describes.
fn builder() -> Builder<'static> {
    Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The `grpc.reflection.v1` service (`None`, logged, if the descriptors do
/// not load: a bug, but not one that should stop the node).
pub(super) fn v1() -> Option<v1::ServerReflectionServer<impl v1::ServerReflection>> {
    builder()
        // Its own set is added by the builder; the other version's here.
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .inspect_err(|e| tracing::error!(error = %e, "reflection v1 unavailable"))
        .ok()
}

/// The `grpc.reflection.v1alpha` service.
pub(super) fn v1alpha() -> Option<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>> {
    builder()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .inspect_err(|e| tracing::error!(error = %e, "reflection v1alpha unavailable"))
        .ok()
}
