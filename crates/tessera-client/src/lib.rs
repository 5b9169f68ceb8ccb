//! The client side of Tessera: what callers and resource servers embed.
//! Its tree holds tonic, rustls and the token rules (`tessera-token`), never
//! the server's storage, consensus or policy engine (sled, openraft, Cedar;
//! `scripts/check-client-deps.sh` checks this in CI).
//!
//! - [`RevocationCache`] ([`cache`]): a live local copy of the cluster's
//!   revocations, fed by the `WatchRevocations` stream; resumes from its last
//!   revision on another node, falls back to a snapshot, reports staleness.
//! - [`Verifier`] ([`verifier`]): verifies a token locally (JWKS, RFC 8725
//!   checks, certificate binding, revocations from the cache).
//! - [`TokenSource`] ([`source`]): the caller's own and exchanged tokens,
//!   cached per audience and scopes, renewed before expiry with jitter.
//! - [`layer`]: tower middleware. [`AuthLayer`] authenticates every request
//!   of a tonic or axum resource server with the [`Verifier`] (claims into
//!   the request's extensions); [`TokenLayer`] attaches the right token per
//!   audience to a caller's outgoing requests.
//! - [`ClientError`]: the one error type of the layer, keeping gRPC codes.
//! - [`connect`] and [`endpoint`]: mutual-TLS channels to one node, shared
//!   with the CLI, the benchmarks and the tests.
//!
//! `docs/CLIENT.md` walks through a resource server and a caller.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod cache;
mod conn;
mod error;
pub mod layer;
pub mod source;
pub mod verifier;

pub use cache::{CacheConfig, CacheStatus, RevocationCache};
pub use conn::{connect, endpoint, DEFAULT_CONNECT_TIMEOUT};
pub use error::ClientError;
pub use layer::{AuthLayer, PeerCertificate, Requirement, Routes, SubjectToken, TokenLayer};
pub use source::{Renewal, TokenSource, TokenSourceConfig};
pub use verifier::{VerifiedToken, Verifier, VerifierConfig, VerifyError};

/// The PEM files of one TLS identity (the server's configuration uses the
/// same type, as `tessera::tls::TlsFiles`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    /// CA certificate(s) trusted to issue peer certificates.
    pub ca: PathBuf,
    /// This party's certificate chain, leaf first.
    pub cert: PathBuf,
    /// This party's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// A CA and client certificates written to a temporary directory, for this
/// crate's unit tests.
#[cfg(test)]
pub(crate) mod testpki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

    use super::TlsFiles;

    pub struct TestPki {
        dir: tempfile::TempDir,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestPki {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut params = CertificateParams::default();
            params
                .distinguished_name
                .push(DnType::CommonName, "Test CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            let key = KeyPair::generate().unwrap();
            let ca = params.self_signed(&key).unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            Self {
                dir,
                issuer: Issuer::new(params, key),
            }
        }

        /// A client leaf with SPIFFE ID `spiffe://tessera.test/svc/{name}`.
        pub fn client(&self, name: &str) -> TlsFiles {
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, name);
            params.subject_alt_names.push(SanType::URI(
                format!("spiffe://tessera.test/svc/{name}")
                    .try_into()
                    .unwrap(),
            ));
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            let p = self.dir.path();
            let files = TlsFiles {
                ca: p.join("ca.pem"),
                cert: p.join(format!("{name}.pem")),
                key: p.join(format!("{name}.key")),
            };
            std::fs::write(&files.cert, cert.pem()).unwrap();
            std::fs::write(&files.key, key.serialize_pem()).unwrap();
            files
        }
    }
}
