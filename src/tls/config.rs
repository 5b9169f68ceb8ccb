//! rustls server and client configurations for mutual TLS, and the
//! reloadable holder servers accept connections with.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use super::material::LoadedTls;
use super::{provider, TlsError, TlsFiles, ALPN_H2, ALPN_HTTP1};

/// A server configuration that requires a client certificate issued by
/// `files.ca` (no certificate, another CA or an expired certificate fail the
/// handshake) and presents `files.cert`/`files.key`, which must chain to
/// `files.ca`. ALPN: `h2`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    mtls_server_config(&LoadedTls::load(files)?)
}

/// [`server_config`] from files already read.
pub fn mtls_server_config(m: &LoadedTls) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(m.roots(), provider.clone()).build()?;
    build_server(m, provider, verifier, vec![ALPN_H2.to_vec()])
}

/// The HTTPS listener's configuration: the same server identity, but a
/// client certificate is optional. One that is presented must be issued by
/// the CA (else the handshake fails), so a handler that sees a peer
/// certificate may trust it. ALPN: `h2`, then `http/1.1`.
pub fn https_server_config(m: &LoadedTls) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(m.roots(), provider.clone())
        .allow_unauthenticated()
        .build()?;
    build_server(
        m,
        provider,
        verifier,
        vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()],
    )
}

fn build_server(
    m: &LoadedTls,
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain(), m.key())
        .map_err(|source| TlsError::InvalidIdentity {
            cert: m.files().cert.clone(),
            key: m.files().key.clone(),
            source,
        })?;
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// A client configuration that trusts `files.ca` for the server and
/// authenticates with `files.cert`/`files.key`. ALPN: `h2`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_from(&LoadedTls::read(files)?)
}

/// [`client_config`] from files already read.
pub fn client_config_from(m: &LoadedTls) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(m.roots())
        .with_client_auth_cert(m.chain(), m.key())
        .map_err(|source| TlsError::InvalidIdentity {
            cert: m.files().cert.clone(),
            key: m.files().key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// tonic's client TLS settings from the same files, for
/// `Endpoint::tls_config`. The files are parsed here first so that a bad
/// file is reported by name now rather than as an opaque connect error.
///
/// The server name checked is the endpoint's host unless the caller sets
/// `.domain_name(..)`; development node certificates carry `localhost`,
/// `node{i}` and `127.0.0.1`. tonic builds its rustls configuration with
/// the process-default provider if one is installed, else aws-lc-rs.
pub fn tonic_client_tls(files: &TlsFiles) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    // Validate: the same checks as `client_config`.
    client_config(files)?;
    let ca = read(&files.ca)?;
    let cert = read(&files.cert)?;
    let key = read(&files.key)?;
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .identity(tonic::transport::Identity::from_pem(cert, key)))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The server configuration currently in force, replaceable at run time.
///
/// A cheap, clonable handle: the node keeps one clone to call
/// [`ServerTls::reload`] (on `SIGHUP` or a timer) and gives another to
/// [`super::tls_incoming`], which reads [`ServerTls::config`] once per new
/// connection. `reload` re-reads the CA, certificate and key and swaps them
/// in only if all of them load, so a half-written renewal never takes a
/// listener down. A fixed `Arc<ServerConfig>` converts into a `ServerTls`
/// that cannot reload.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

/// Which configuration a [`ServerTls`] builds from the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// Client certificate required ([`mtls_server_config`]): API and Raft.
    Mtls,
    /// Client certificate optional ([`https_server_config`]): HTTPS.
    Https,
}

struct Inner {
    files: Option<TlsFiles>,
    kind: ServerKind,
    // A std lock: it is held only to clone or replace an `Arc`, never across
    // an await, and readers vastly outnumber writers.
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the configuration from `files` (see [`server_config`]).
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        Self::from_loaded(&LoadedTls::load(&files)?, ServerKind::Mtls)
    }

    /// A reloadable configuration of `kind` built from files already read.
    pub fn from_loaded(m: &LoadedTls, kind: ServerKind) -> Result<Self, TlsError> {
        let config = build(m, kind)?;
        Ok(Self {
            inner: Arc::new(Inner {
                files: Some(m.files().clone()),
                kind,
                current: RwLock::new(config),
            }),
        })
    }

    /// Wraps a fixed configuration (e.g. one with a custom verifier);
    /// [`ServerTls::reload`] then fails with [`TlsError::NotReloadable`].
    pub fn from_config(config: Arc<ServerConfig>) -> Self {
        Self {
            inner: Arc::new(Inner {
                files: None,
                kind: ServerKind::Mtls,
                current: RwLock::new(config),
            }),
        }
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        // A poisoned lock still holds a complete `Arc`: replacing it is a
        // single assignment, so there is no torn state to fear.
        self.inner
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The files this configuration was loaded from, if any.
    pub fn files(&self) -> Option<&TlsFiles> {
        self.inner.files.as_ref()
    }

    /// Re-reads the files and makes the result current for every clone of
    /// this handle. On error the previous configuration stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let files = self.inner.files.as_ref().ok_or(TlsError::NotReloadable)?;
        let config = self.build(&LoadedTls::load(files)?)?;
        self.install(config);
        Ok(())
    }

    /// Builds this listener's configuration from `m` without installing it:
    /// the first half of a reload that must succeed for every listener
    /// before any of them changes.
    pub fn build(&self, m: &LoadedTls) -> Result<Arc<ServerConfig>, TlsError> {
        if self.inner.files.is_none() {
            return Err(TlsError::NotReloadable);
        }
        build(m, self.inner.kind)
    }

    /// Makes `config` current for the next handshake.
    pub fn install(&self, config: Arc<ServerConfig>) {
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
    }
}

fn build(m: &LoadedTls, kind: ServerKind) -> Result<Arc<ServerConfig>, TlsError> {
    match kind {
        ServerKind::Mtls => mtls_server_config(m),
        ServerKind::Https => https_server_config(m),
    }
}

impl From<Arc<ServerConfig>> for ServerTls {
    fn from(config: Arc<ServerConfig>) -> Self {
        Self::from_config(config)
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the paths: the configuration holds the private key.
        f.debug_struct("ServerTls")
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testpki::TestPki;

    #[test]
    fn configs_load_and_speak_h2() {
        let pki = TestPki::new();
        let server = server_config(&pki.server("s")).unwrap();
        assert_eq!(server.alpn_protocols, vec![b"h2".to_vec()]);
        let client = client_config(&pki.client("c")).unwrap();
        assert_eq!(client.alpn_protocols, vec![b"h2".to_vec()]);
        tonic_client_tls(&pki.client("c")).unwrap();
    }

    #[test]
    fn mismatched_key_is_refused_by_name() {
        let pki = TestPki::new();
        let a = pki.server("a");
        let b = pki.server("b");
        let mixed = TlsFiles {
            key: b.key.clone(),
            ..a.clone()
        };
        match server_config(&mixed) {
            Err(TlsError::InvalidIdentity { cert, key, .. }) => {
                assert_eq!(cert, a.cert);
                assert_eq!(key, b.key);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            client_config(&mixed),
            Err(TlsError::InvalidIdentity { .. })
        ));
        assert!(matches!(
            tonic_client_tls(&mixed),
            Err(TlsError::InvalidIdentity { .. })
        ));
    }

    #[test]
    fn reload_swaps_only_on_success() {
        let pki = TestPki::new();
        let files = pki.server("s");
        let tls = ServerTls::load(files.clone()).unwrap();
        let first = tls.config();

        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&first, &tls.config()));

        let good = tls.config();
        std::fs::write(&files.key, "not a key").unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::NoPrivateKey { .. })));
        assert!(Arc::ptr_eq(&good, &tls.config()));

        let clone = tls.clone();
        pki.server("s");
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&good, &tls.config()));
        assert!(Arc::ptr_eq(&clone.config(), &tls.config()));

        let fixed = ServerTls::from(good);
        assert!(matches!(fixed.reload(), Err(TlsError::NotReloadable)));
        assert!(fixed.files().is_none());
        assert!(!format!("{tls:?}").contains("PRIVATE"));
    }
}
