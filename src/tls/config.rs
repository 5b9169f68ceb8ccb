//! rustls server and client configurations for mutual TLS, and the
//! reloadable holder servers accept connections with.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use super::pem::{load_certs, load_key, load_roots};
use super::{provider, TlsError, TlsFiles, ALPN_H2};

/// A server configuration that requires a client certificate issued by
/// `files.ca` (no certificate, another CA or an expired certificate fail the
/// handshake) and presents `files.cert`/`files.key`. ALPN: `h2`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(load_roots(&files.ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::InvalidIdentity {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that trusts `files.ca` for the server and
/// authenticates with `files.cert`/`files.key`. ALPN: `h2`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(&files.ca)?;
    let chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|source| TlsError::InvalidIdentity {
            cert: files.cert.clone(),
            key: files.key.clone(),
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

struct Inner {
    files: Option<TlsFiles>,
    // A std lock: it is held only to clone or replace an `Arc`, never across
    // an await, and readers vastly outnumber writers.
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the configuration from `files` (see [`server_config`]).
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(Self {
            inner: Arc::new(Inner {
                files: Some(files),
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
        let config = server_config(files)?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
        Ok(())
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
