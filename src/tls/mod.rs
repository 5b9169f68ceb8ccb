//! Mutual TLS for every port: rustls configurations built from PEM files,
//! an accept loop that runs handshakes off the serving path, and the
//! caller identity taken from the peer certificate.
//!
//! # Design
//!
//! - One crypto backend: every configuration is built with
//!   `builder_with_provider(aws_lc_rs::default_provider())`, never with the
//!   process-default provider, so nothing depends on start-up order.
//! - Servers always require a client certificate issued by the configured CA
//!   ([`server_config`]). *Who* may do *what* is decided above this layer:
//!   [`caller_identity`] turns the verified leaf into a [`PeerIdentity`]
//!   (SPIFFE URI SAN, else DNS SAN, plus the RFC 8705 `x5t#S256`
//!   thumbprint) for policy and token binding; the Raft service checks
//!   [`PeerIdentity::node_id`] against the membership.
//! - Reload without restart: [`ServerTls`] holds the current
//!   `ServerConfig` behind a lock and [`ServerTls::reload`] swaps in a new
//!   one built from the same files (CA, certificate and key together).
//!   [`LoadedTls`] is one reading of the files, parsed and checked (key
//!   matches certificate, certificate chains to the CA): the node builds
//!   every listener's and the Raft client's configuration from one reading
//!   and installs them only if all were built (`node::tls_reload`).
//!   [`tls_incoming`] takes the current configuration for each new
//!   connection, so a reload applies to the next handshake while
//!   established connections keep the session they negotiated.
//! - [`tls_incoming`] yields [`TlsConn`]: a TLS stream whose client has sent
//!   the HTTP/2 preface in time, within the per-peer and total connection
//!   caps. Its `Connected` info is the TLS stream's, with the peer
//!   certificates: that is what makes `Request::peer_certs()` (and so
//!   [`caller_identity`]) work with `Server::serve_with_incoming_shutdown`.
//! - Errors name files, never key material.

mod config;
mod conn;
mod identity;
mod identity_cache;
mod incoming;
mod material;
mod pem;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

pub use config::{
    client_config, client_config_from, https_server_config, mtls_server_config, server_config,
    tonic_client_tls, ServerKind, ServerTls,
};
pub use conn::TlsConn;
pub use identity::{caller_identity, identity_from_cert, request_caller, thumbprint, PeerIdentity};
pub use incoming::{
    tls_incoming, tls_incoming_joined, tls_incoming_joined_with, tls_incoming_with, AcceptOptions,
    TlsIncoming,
};
pub use material::{cert_info, files_digest, CertExpiry, CertInfo, LoadedTls};

/// The ALPN protocol every Tessera port speaks (gRPC over HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";
/// The ALPN protocol of HTTP/1.1, offered by the HTTPS listener only.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The PEM files of one TLS identity: the client library's type, so that
/// configurations pass straight to it.
pub use tessera_client::TlsFiles;

/// Errors of the TLS layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file is not valid PEM. The reason never quotes the file's content.
    #[error("{}: invalid PEM: {reason}", .path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong, without content from the file.
        reason: &'static str,
    },
    /// A certificate file holds no certificate.
    #[error("{}: no certificate found", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{}: no private key found", .path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A CA file holds a certificate that cannot be a trust anchor.
    #[error("{}: unusable CA certificate: {source}", .path.display())]
    InvalidCa {
        /// The CA file.
        path: PathBuf,
        /// Why rustls refused it.
        #[source]
        source: rustls::Error,
    },
    /// A certificate and key do not form a usable identity (e.g. the key
    /// does not match the certificate, or its type is unsupported).
    #[error("{} and {}: unusable certificate and key: {source}", .cert.display(), .key.display())]
    InvalidIdentity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why rustls refused them.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// rustls refused the configuration (protocol versions, provider).
    #[error("TLS configuration error: {0}")]
    Config(#[source] rustls::Error),
    /// A peer certificate is not valid X.509.
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    /// A peer certificate carries a `spiffe://` URI SAN that is not a valid
    /// SPIFFE ID.
    #[error("invalid SPIFFE ID {0:?}")]
    InvalidSpiffeId(String),
    /// A peer certificate has neither a SPIFFE URI SAN nor a DNS SAN.
    #[error("certificate carries no SPIFFE URI or DNS name")]
    NoIdentity,
    /// A certificate does not chain to the CA file, or is not valid now
    /// (expired, not yet valid).
    #[error("{} does not chain to a CA in {} or is not valid now: {source}", .cert.display(), .ca.display())]
    Untrusted {
        /// The certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// Why the chain was refused.
        #[source]
        source: rustls::Error,
    },
    /// [`ServerTls::reload`] on a configuration that was not loaded from
    /// files.
    #[error("this TLS configuration was not loaded from files and cannot be reloaded")]
    NotReloadable,
}

/// The one crypto provider used everywhere.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Certificates made in memory and written to a temporary directory, shared
/// by this module's tests.
#[cfg(test)]
pub(crate) mod testpki {
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    use super::TlsFiles;
    use crate::certs::{issue_leaf, self_signed_ca, LeafSpec};

    /// A CA and a directory to write leaves into.
    pub struct TestPki {
        pub dir: tempfile::TempDir,
        pub ca_pem: String,
        pub ca_key: String,
    }

    impl TestPki {
        pub fn new() -> Self {
            Self::with_ca_name("Test CA")
        }

        pub fn with_ca_name(name: &str) -> Self {
            let (ca_pem, ca_key) = self_signed_ca(name).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
            Self {
                dir,
                ca_pem,
                ca_key,
            }
        }

        pub fn path(&self) -> &Path {
            self.dir.path()
        }

        /// Issues a leaf from `spec`, writes `{name}.pem/.key` and returns
        /// files that trust this CA.
        pub fn leaf(&self, name: &str, spec: &LeafSpec) -> TlsFiles {
            let (cert, key) = issue_leaf(&self.ca_pem, &self.ca_key, spec).unwrap();
            let files = TlsFiles {
                ca: self.path().join("ca.pem"),
                cert: self.path().join(format!("{name}.pem")),
                key: self.path().join(format!("{name}.key")),
            };
            std::fs::write(&files.cert, cert).unwrap();
            std::fs::write(&files.key, key).unwrap();
            files
        }

        /// A server leaf for `localhost` and `127.0.0.1` with a node
        /// SPIFFE ID.
        pub fn server(&self, name: &str) -> TlsFiles {
            let mut spec = LeafSpec::new(name);
            spec.uris.push(format!("spiffe://tessera.test/node/{name}"));
            spec.dns_names.push("localhost".into());
            spec.ip_addresses.push(std::net::Ipv4Addr::LOCALHOST.into());
            self.leaf(name, &spec)
        }

        /// A client leaf with SPIFFE ID `spiffe://tessera.test/svc/{name}`.
        pub fn client(&self, name: &str) -> TlsFiles {
            let mut spec = LeafSpec::new(name);
            spec.uris.push(format!("spiffe://tessera.test/svc/{name}"));
            self.leaf(name, &spec)
        }

        /// A client leaf whose validity ended yesterday.
        pub fn expired_client(&self, name: &str) -> TlsFiles {
            let now = SystemTime::now();
            let mut spec = LeafSpec::new(name).valid_between(
                now - Duration::from_secs(2 * 86_400),
                now - Duration::from_secs(86_400),
            );
            spec.uris.push(format!("spiffe://tessera.test/svc/{name}"));
            self.leaf(name, &spec)
        }
    }
}
