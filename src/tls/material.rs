//! One reading of a node's TLS files ([`LoadedTls`]): the CA, certificate
//! and key read once, checked together, and kept in memory, so that every
//! configuration built from them (API, Raft and HTTPS listeners, the Raft
//! client) sees the same files even while an operator is replacing them.
//!
//! What "checked" means, in order: each file parses; the key matches the
//! certificate; and (for a node's own identity, [`LoadedTls::load`]) the
//! certificate chains to the CA file and is valid now. A renewal that fails
//! any of these is refused as a whole, so the previous material stays.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::RootCertStore;

use super::pem::{parse_certs, parse_key, parse_roots};
use super::{provider, TlsError, TlsFiles};

/// What the node's own certificate says, for logs and health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject distinguished name (e.g. `CN=tessera node1`).
    pub subject: String,
    /// The serial number, hex with colons.
    pub serial: String,
    /// Start of validity, Unix seconds.
    pub not_before: u64,
    /// End of validity, Unix seconds.
    pub not_after: u64,
}

/// The CA, certificate and key of one party, parsed and checked.
pub struct LoadedTls {
    files: TlsFiles,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    digest: [u8; 32],
    info: CertInfo,
}

impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("LoadedTls")
            .field("files", &self.files)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A digest of the three files' contents: what the periodic check compares
/// to notice a renewal (contents, not modification times, which some
/// deployment tools preserve).
fn digest_of(ca: &[u8], cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [ca, cert, key] {
        // Length-prefixed, so moving bytes between files changes the digest.
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The digest of the files as they are now (see [`LoadedTls::digest`]).
pub fn files_digest(files: &TlsFiles) -> Result<[u8; 32], TlsError> {
    Ok(digest_of(
        &read(&files.ca)?,
        &read(&files.cert)?,
        &read(&files.key)?,
    ))
}

/// Subject, serial and validity of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::MalformedCertificate(e.to_string()))?;
    let secs = |t: x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0);
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: secs(cert.validity().not_before),
        not_after: secs(cert.validity().not_after),
    })
}

impl LoadedTls {
    /// Reads and parses the files, and checks that the key matches the
    /// certificate. Does not check the certificate against the CA: a
    /// client's own certificate may come from another CA than the servers'
    /// (see [`LoadedTls::load`] for a node's identity).
    pub fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let ca_pem = read(&files.ca)?;
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        let roots = parse_roots(&files.ca, &ca_pem)?;
        let chain = parse_certs(&files.cert, &cert_pem)?;
        let key = parse_key(&files.key, &key_pem)?;
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(
            |source| TlsError::InvalidIdentity {
                cert: files.cert.clone(),
                key: files.key.clone(),
                source,
            },
        )?;
        let info = cert_info(&chain[0])?;
        Ok(Self {
            files: files.clone(),
            roots: Arc::new(roots),
            chain,
            key,
            digest: digest_of(&ca_pem, &cert_pem, &key_pem),
            cert_pem,
            key_pem,
            info,
        })
    }

    /// [`LoadedTls::read`], then [`LoadedTls::verify_chain`]: a node's own
    /// identity, which its peers verify against the same CA.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let loaded = Self::read(files)?;
        loaded.verify_chain()?;
        Ok(loaded)
    }

    /// Checks that the certificate chains to the CA file and is valid now,
    /// as a peer trusting that CA would.
    pub fn verify_chain(&self) -> Result<(), TlsError> {
        let provider = provider();
        let leaf = rustls::server::ParsedCertificate::try_from(&self.chain[0]).map_err(|e| {
            TlsError::Untrusted {
                cert: self.files.cert.clone(),
                ca: self.files.ca.clone(),
                source: e,
            }
        })?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &self.roots,
            &self.chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|source| TlsError::Untrusted {
            cert: self.files.cert.clone(),
            ca: self.files.ca.clone(),
            source,
        })
    }

    /// The files this was read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The trust anchors of the CA file.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    /// The private key (a copy, for one configuration).
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// The certificate file's PEM text.
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// The key file's PEM text (for tonic's client identity). Never log it.
    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }

    /// The digest of the three files' contents as read.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Subject, serial and validity of the leaf certificate.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }
}

/// When the node's own certificate expires, shared between the reloader
/// (which updates it) and health (which reads it on every check).
#[derive(Debug, Default)]
pub struct CertExpiry {
    /// Unix seconds; 0 while unknown.
    not_after: AtomicU64,
}

impl CertExpiry {
    /// Records the current certificate's end of validity.
    pub fn set(&self, not_after: u64) {
        self.not_after.store(not_after, Ordering::Relaxed);
    }

    /// The current certificate's end of validity, if known.
    pub fn not_after(&self) -> Option<u64> {
        match self.not_after.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Time left until the certificate expires, measured by the system
    /// clock (the one TLS peers judge it by); zero once expired, `None` if
    /// unknown.
    pub fn remaining(&self) -> Option<Duration> {
        let not_after = self.not_after()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Some(Duration::from_secs(not_after.saturating_sub(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testpki::TestPki;

    #[test]
    fn load_checks_key_and_chain() {
        let pki = TestPki::new();
        let files = pki.server("s");
        let loaded = LoadedTls::load(&files).unwrap();
        assert!(loaded.info().subject.contains("s"));
        assert!(loaded.info().not_after > loaded.info().not_before);
        assert_eq!(loaded.digest(), files_digest(&files).unwrap());
        assert!(!format!("{loaded:?}").contains("PRIVATE"));

        // A certificate from another CA: readable, but not ours.
        let other = TestPki::with_ca_name("Other CA");
        let foreign = TlsFiles {
            ca: files.ca.clone(),
            ..other.server("f")
        };
        LoadedTls::read(&foreign).unwrap();
        assert!(matches!(
            LoadedTls::load(&foreign),
            Err(TlsError::Untrusted { .. })
        ));

        // The key of another certificate.
        let b = pki.server("b");
        let mixed = TlsFiles {
            key: b.key.clone(),
            ..files.clone()
        };
        assert!(matches!(
            LoadedTls::read(&mixed),
            Err(TlsError::InvalidIdentity { .. })
        ));
    }

    #[test]
    fn expiry_counts_down_to_zero() {
        let e = CertExpiry::default();
        assert_eq!(e.remaining(), None);
        e.set(1);
        assert_eq!(e.remaining(), Some(Duration::ZERO));
        let in_an_hour = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        e.set(in_an_hour);
        let left = e.remaining().unwrap();
        assert!(left <= Duration::from_secs(3600) && left > Duration::from_secs(3000));
    }
}
